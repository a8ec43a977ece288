"""Where a site's own config lives when FLARE runs one of our components at that site.

Kept apart from the trainer so that the pre-flight's statistics generators (stats/imaging.py,
data/heart_stats.py) find the site config without importing the trainer, torch or Opacus."""

from __future__ import annotations

import os

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from consortium import constants as C


def site_config_dir(fl_ctx: FLContext) -> str | None:
    """A kit's `local/consortium/` (written by `consortium provision`), else None for $CONSORTIUM_SITE_CONFIGS."""
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    if workspace is not None and not os.environ.get(C.ENV_SITE_CONFIG_DIR):
        folder = os.path.join(workspace.get_site_config_dir(), C.KIT_SITE_CONFIG_FOLDER)
        if os.path.isdir(folder):
            return folder
    return None
