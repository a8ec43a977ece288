"""What a job declares about itself, in its FLARE meta's `custom_props` (meta.json; FLARE keeps it through
submission and hands it to every site with the deployment): its purpose, the agreement it runs under, the
charter it was built under, its job hash and the package version that hash was computed with."""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.apis.job_def import JobMetaKey

PURPOSE = "purpose"
AGREEMENT = "agreement"  # {"id": ..., "version": ...}
CHARTER_SHA = "charter_sha256"
JOB_SHA = "job_sha256"
PACKAGE = "package"
CUSTOM_PROPS = JobMetaKey.CUSTOM_PROPS.value


def job_props(purpose: str, agreement: str, charter=None) -> dict:
    """The governance props of a job: its purpose and agreement version, and with the consortium's `charter`
    also the agreement's id and the charter's hash."""
    props = {PURPOSE: purpose, AGREEMENT: {"version": str(agreement)}}
    if charter is not None:
        props[AGREEMENT] = {"id": charter.agreement.id, "version": str(agreement)}
        props[CHARTER_SHA] = charter.sha256
    return props


def meta_props(purpose: str, agreement: str) -> dict:
    """FedJob's `meta_props` carrying a job's governance props."""
    return {CUSTOM_PROPS: job_props(purpose, agreement)}


def declared(meta: dict | None) -> dict:
    """The governance props a job's meta declares ({} if none)."""
    props = (meta or {}).get(CUSTOM_PROPS)
    return props if isinstance(props, dict) else {}


def agreement_version(props: dict):
    agreement = props.get(AGREEMENT)
    return agreement.get("version") if isinstance(agreement, dict) else agreement


def seal(job_folder: str | Path, props: dict) -> str:
    """Write `props` and the job hash of the exported `job_folder` into its meta.json; return the hash."""
    from consortium.governance.jobhash import exported_job_sha256, package_version

    job_folder = Path(job_folder)
    sha = exported_job_sha256(job_folder, purpose=props[PURPOSE], agreement=agreement_version(props))
    meta_file = job_folder / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta[CUSTOM_PROPS] = {**declared(meta), **props, JOB_SHA: sha, PACKAGE: package_version()}
    meta_file.write_text(json.dumps(meta, indent=4))
    return sha
