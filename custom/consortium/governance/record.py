"""The run record's governance meta (`meta.governance`, rendered by report/governance.py): the purpose and agreement
the job declared, the charter it ran under, its job hash, and which sites approved or refused it and why.

In a consortium the approvals and refusals are FLARE's own deployment record of the job (`job_deploy_detail`:
one line per site, `OK` or the site's error text, e.g. its charter gate's refusal), which the server's job
process reads from the job store; a site's train results add what it approved the job by (purpose, or
purpose and job hash). In the simulator, which deploys nothing, `consortium simulate` applies the same decisions
to the site configs and records them (simulated_decisions)."""

from __future__ import annotations

import json
from pathlib import Path

from consortium.governance import props as P

PURPOSE, AGREEMENT, CHARTER_SHA, JOB_SHA = P.PURPOSE, P.AGREEMENT, P.CHARTER_SHA, P.JOB_SHA
APPROVALS, REFUSALS = "approvals", "refusals"
SITE, BY, REASON = "site", "by", "reason"
DEPLOYED = "deployment"  # what a site approved by, before it says more (its kit deployed the job)
ERROR_PREFIX = "NVFLARE_ERROR: "
DEPLOY_DETAIL = "job_deploy_detail"  # nvflare JobMetaKey.JOB_DEPLOY_DETAIL


def deploy_outcome(detail) -> tuple[list[dict], list[dict]]:
    """(approvals, refusals) from FLARE's job_deploy_detail lines ("site: OK" / "site: <error text>")."""
    approvals, refusals = [], []
    for line in detail or []:
        site, sep, text = str(line).partition(": ")
        if not sep or site == "server" or " " in site:  # "num_ok_sites 1 < required_min_sites 2", the server
            continue
        if text == "OK":
            approvals.append({SITE: site, BY: DEPLOYED})
        else:
            refusals.append({SITE: site, REASON: text.removeprefix(ERROR_PREFIX)})
    by_site = lambda entry: entry[SITE]  # noqa: E731
    return sorted(approvals, key=by_site), sorted(refusals, key=by_site)


def governance_meta(props: dict, *, detail=None, charter_sha256: str | None = None) -> dict:
    """The governance meta of a job that declared `props`, deployed as `detail` says."""
    approvals, refusals = deploy_outcome(detail)
    return {
        PURPOSE: props.get(P.PURPOSE),
        AGREEMENT: props.get(P.AGREEMENT),
        CHARTER_SHA: charter_sha256 or props.get(P.CHARTER_SHA),
        JOB_SHA: props.get(P.JOB_SHA),
        APPROVALS: approvals,
        REFUSALS: refusals,
    }


def approved_by(meta: dict, site: str, by: str) -> None:
    """Record what `site` says it approved the job by (from its results), in the governance meta `meta`."""
    if not meta or not by:
        return
    approvals = meta.setdefault(APPROVALS, [])
    entry = next((a for a in approvals if a.get(SITE) == site), None)
    if entry is None:
        approvals.append({SITE: site, BY: by})
        approvals.sort(key=lambda a: a[SITE])
    else:
        entry[BY] = by


def from_server(fl_ctx) -> dict:
    """In the server's job process: the governance meta of the running job (its meta, the deployment record the
    server kit kept in the job's run folder, the charter of the server's kit)."""
    from nvflare.apis.fl_constant import FLContextKey

    from consortium.governance.charter import read_kit_charter
    from consortium.governance.gate import DEPLOYMENT_FILE, kit_folder

    meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
    workspace = fl_ctx.get_engine().get_workspace()
    detail = meta.get(DEPLOY_DETAIL)
    if detail is None:  # nothing there in the simulator, which deploys nothing
        try:
            path = Path(workspace.get_run_dir(fl_ctx.get_job_id())) / DEPLOYMENT_FILE
            detail = json.loads(path.read_text()).get(DEPLOY_DETAIL)
        except (OSError, ValueError):
            detail = None
    try:
        charter_sha = read_kit_charter(kit_folder(workspace)).sha256
    except Exception:  # a server without a kit charter (simulator): the charter the job declares
        charter_sha = None
    return governance_meta(P.declared(meta), detail=detail, charter_sha256=charter_sha)


def simulated(props: dict, decisions) -> dict:
    """The governance meta of a simulated job: `decisions` are those `consortium simulate` applied."""
    meta = governance_meta(props)
    meta[APPROVALS] = [{SITE: d.site, BY: d.by} for d in decisions if d.approved]
    meta[REFUSALS] = [{SITE: d.site, REASON: d.reason} for d in decisions if not d.approved]
    return meta
