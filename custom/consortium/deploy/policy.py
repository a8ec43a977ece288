"""Site policies written into a FLARE site's `local/` folder (simulator workspace or startup kit)."""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE_PREFIX = "consortium."  # FLARE wants a trailing dot for package prefixes


def class_allow_list() -> list[str]:
    """FLARE's default component allow-list plus the site-installed `consortium` package."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    return sorted(set(DEFAULT_CLASS_ALLOW_LIST) | {PACKAGE_PREFIX})


def with_allow_list(resources: dict) -> dict:
    """`resources` with the allow-list admitting `consortium.`, enforced."""
    resources["class_allow_list"] = class_allow_list()
    resources["class_list_enforcement_mode"] = "enforce"
    return resources


def write_resources_policy(local_dir: Path) -> Path:
    """Merge the allow-list into `local_dir/resources.json`, keeping any other settings in it."""
    local_dir.mkdir(parents=True, exist_ok=True)
    path = local_dir / "resources.json"
    resources = with_allow_list(json.loads(path.read_text()) if path.exists() else {})
    path.write_text(json.dumps(resources, indent=2))
    return path


def write_trail_policy(local_dir: Path) -> Path:
    """Add the audit trail (consortium.audit_trail) to `local_dir/privacy.json`, keeping any scopes in it; the
    simulator copies local/ to the server and every site, so each keeps its own trail in its workspace."""
    from consortium.audit_trail.install import with_trail
    from consortium.deploy.kit_builder import PRIVACY_SCOPE

    local_dir.mkdir(parents=True, exist_ok=True)
    path = local_dir / "privacy.json"
    privacy = with_trail(json.loads(path.read_text()) if path.exists() else {}, default_scope=PRIVACY_SCOPE)
    path.write_text(json.dumps(privacy, indent=2))
    return path
