"""A site's DP-SGD ledger on its own disk: the mechanisms it ran in a job, so a resumed job keeps counting."""

from __future__ import annotations

import json
import os

from consortium import constants as C


def site_root(fl_ctx) -> str:
    """The site's workspace root, where its ledgers live (outside every job folder)."""
    from nvflare.apis.fl_constant import FLContextKey

    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    if workspace is None:
        raise ValueError("no site workspace in the FLARE context for the privacy ledger")
    return workspace.get_root_dir()


def _path(root: str, job_id: str) -> str:
    return os.path.join(root, C.PRIVACY_LEDGER_FOLDER, f"{job_id}.json")


def save(root: str, job_id: str, history: list) -> None:
    """Write this job's accountant history [(noise multiplier, sample rate, steps), ...] atomically."""
    path = _path(root, job_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"job": job_id, "history": [list(h) for h in history]}, f)
    os.replace(path + ".tmp", path)


def load_prior(root: str, chain: list[str]) -> tuple[str, list] | None:
    """(job id, history) of the latest job of this run that this site trained in, else None: the current job
    itself if an earlier process of this site trained in it (the site was restarted and rejoined), else the
    latest of the jobs it continues. Each ledger already holds what the jobs before it spent."""
    for job_id in reversed(chain):
        path = _path(root, job_id)
        if os.path.isfile(path):
            with open(path) as f:
                raw = json.load(f)
            return job_id, [(float(s), float(q), int(n)) for s, q, n in raw["history"]]
    return None
