"""Each hospital decides: its kit refuses a job outside its approvals before the job exists at the site.

CharterGate is the FLARE app deployer of a hospital's kit (component `app_deployer` of its signed
`local/resources.json`; FLARE's client engine deploys every job app with it, nvflare 2.9.0
private/fed/client/client_engine.py `deploy_app`). It runs in the site's parent process when the server deploys
a job there, sees the job's meta and the very app bytes it received, and decides before FLARE's own deployer
(privacy scope, signature, authorization policy) unpacks anything: no job folder, no job process, no data read.
A refusal is the deployment's error text: FLARE records it in the job's `job_deploy_detail` (admin console
`list_jobs -d`, `consortium submit` / `status`), runs the job on with the other sites if at least its
min_clients remain, and ends it FAILED_TO_RUN with every site's reason otherwise. Each decision is appended to
the site's own hash-chained `<workspace>/consortium_governance/decisions.jsonl` (`consortium audit verify`).

The server kit's SubmitCheck refuses at submission a job the charter itself refuses (no purpose, a purpose
outside the charter, another agreement version or charter), so the admin learns it before any site is asked."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.private.fed.utils.app_deployer import AppDeployer

from consortium import constants as C
from consortium.governance import props as P

DECISIONS_FOLDER = "consortium_governance"  # <site workspace>/consortium_governance/: every decision of the site
DECISIONS_FILE = "decisions.jsonl"
GATE_COMPONENT = {"id": "app_deployer", "path": "consortium.governance.gate.CharterGate", "args": {}}
SUBMIT_CHECK_COMPONENT = {"id": "consortium_charter_check", "path": "consortium.governance.gate.SubmitCheck",
                          "args": {}}  # fmt: skip
BY_PURPOSE, BY_JOB = "purpose", "purpose and job hash"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    site: str
    approved: bool
    reason: str  # why it refused, or what it approved
    by: str = ""  # approvals: BY_PURPOSE or BY_JOB
    job_sha256: str = ""  # as this site computed it from what it received (with its own package version)


def charter_problem(charter, props: dict) -> str | None:
    """Why the charter refuses a job that declares `props` (None if it does not)."""
    purpose = props.get(P.PURPOSE)
    if not isinstance(purpose, str) or not purpose.strip():
        return (
            "the job declares no purpose (its meta's custom_props.purpose): every job states one of the charter's "
            f"purposes in its job.yaml (`purpose:`); the charter's purposes: {', '.join(map(repr, charter.purposes))}"
        )
    problem = charter.purpose_problem(purpose)
    if problem:
        return f"the job's purpose: {problem}"
    problem = charter.agreement_problem(P.agreement_version(props))
    if problem:
        return f"the job's agreement: {problem}"
    declared = props.get(P.CHARTER_SHA)
    if declared and declared != charter.sha256:
        return (
            f"the job was built under charter {declared[:12]}, this kit carries charter {charter.sha256[:12]} "
            f"({charter.where}): provision the kits again from the current consortium definition, or submit "
            "with the one the kits were made from (--consortium)"
        )
    return None


def decide(site: str, cfg, charter, props: dict, files) -> Decision:
    """The site's decision on a job declaring `props` whose app is `files()` ({path: bytes}), by the charter
    its kit carries and its own config's approved_purposes / approved_jobs."""
    from consortium.governance.jobhash import job_sha256, package_version

    problem = charter_problem(charter, props)
    if problem:
        return Decision(site, False, problem)
    purpose, version = props[P.PURPOSE], str(P.agreement_version(props))
    where = f"its site config {cfg.source.name}"
    if purpose not in cfg.approved_purposes:
        approved = ", ".join(map(repr, cfg.approved_purposes)) or "none"
        return Decision(site, False, f"{site} has not approved the purpose {purpose!r} ({where}: approved_purposes: "
                                     f"{approved})")  # fmt: skip
    declared = props.get(P.JOB_SHA)
    if not cfg.approved_jobs:  # approved by purpose: what the job runs is the other policies' (privacy, BYOC)
        sha = job_sha256(files(), purpose=purpose, agreement=version) if declared else ""  # for the record
        return Decision(site, True, f"{site} approved purpose {purpose!r} ({where})", by=BY_PURPOSE, job_sha256=sha)
    app = files()
    mine = package_version()
    sha = job_sha256(app, purpose=purpose, agreement=version, package=mine)
    if sha not in cfg.approved_jobs:
        text = f"job {sha} is not one of {site}'s approved jobs ({where}: approved_jobs; `consortium job hash NAME` "
        text += "prints a job's hash)"
        declared_package = props.get(P.PACKAGE) or mine
        received = sha if declared_package == mine else job_sha256(app, purpose=purpose, agreement=version,
                                                                   package=declared_package)  # fmt: skip
        if declared and declared != received:
            text += f"; nor is it the job its meta declares ({declared[:12]}): it was changed after export"
        elif declared_package != mine:
            text += f"; the job was hashed with {declared_package}, this site runs {mine}"
        return Decision(site, False, text, job_sha256=sha)
    return Decision(site, True, f"{site} approved purpose {purpose!r} and job {sha[:12]} ({where})", by=BY_JOB,
                    job_sha256=sha)


def write_decision(root: str | Path, decision: Decision, *, job_id: str, props: dict, charter_sha256: str) -> None:
    """Append the decision to the site's own decisions.jsonl, hash-chained like the audit trail (so `consortium
    audit verify` names a record edited by hand), then keep it as <job id>.json. Raises OSError or
    chain.TrailError (a ValueError) if it cannot be recorded."""
    from consortium.audit_trail import chain

    folder = Path(root) / DECISIONS_FOLDER
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "job": job_id, **asdict(decision),
             "purpose": props.get(P.PURPOSE), "agreement": props.get(P.AGREEMENT), "charter_sha256": charter_sha256}
    chain.append(folder / DECISIONS_FILE, entry)
    (folder / f"{os.path.basename(job_id)}.json").write_text(json.dumps(entry, indent=1))


def read_decision(root: str | Path, job_id: str) -> dict | None:
    """The site's decision on `job_id` (its <job id>.json), or None."""
    try:
        return json.loads((Path(root) / DECISIONS_FOLDER / f"{os.path.basename(job_id)}.json").read_text())
    except (OSError, ValueError):
        return None


def approval_meta(fl_ctx) -> dict:
    """In a site's job process: what its kit approved the running job by ({C.META_SITE_APPROVAL: by}), for the
    results it sends; {} where no kit decided (the simulator)."""
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    decision = read_decision(workspace.get_root_dir(), fl_ctx.get_job_id()) if workspace is not None else None
    return {C.META_SITE_APPROVAL: decision["by"]} if decision and decision.get("approved") else {}


def kit_folder(workspace) -> Path:
    return Path(workspace.get_site_config_dir()) / C.KIT_SITE_CONFIG_FOLDER


def site_decision(workspace, job_id: str, job_meta: dict, app_data: bytes) -> Decision:
    """The decision of the site whose kit is `workspace`, from the charter and site config in its kit."""
    from consortium.config import load_site_config
    from consortium.governance.charter import read_kit_charter
    from consortium.governance.jobhash import app_files_from_zip

    site, props = workspace.site_name, P.declared(job_meta)
    try:
        charter = read_kit_charter(kit_folder(workspace))
        cfg = load_site_config(site, kit_folder(workspace))
        decision = decide(site, cfg, charter, props, lambda: app_files_from_zip(app_data))
        sha = charter.sha256
    except Exception as exc:  # fail closed: a site that cannot decide runs nothing
        decision, sha = Decision(site, False, f"its charter gate could not decide ({type(exc).__name__}: {exc})"), ""
    try:
        write_decision(workspace.get_root_dir(), decision, job_id=job_id, props=props, charter_sha256=sha)
    except (OSError, ValueError) as exc:  # fail closed: no job runs here without its decision on record
        logger.error(f"charter gate: could not record the decision on job {job_id}: {exc}")
        if decision.approved:
            decision = Decision(site, False, f"its decision could not be recorded ({exc})")
    return decision


def refusal_text(decision: Decision, job_meta: dict) -> str:
    return f"{decision.site} refuses job {job_meta.get('name', '?')}: {decision.reason}"


class CharterGate(AppDeployer):
    """A hospital's app deployer: its charter gate first, then FLARE's own deployer."""

    def deploy(self, workspace, job_id: str, job_meta: dict, app_name: str, app_data: bytes, fl_ctx) -> str:
        decision = site_decision(workspace, job_id, job_meta, app_data)
        if not decision.approved:
            text = refusal_text(decision, job_meta)
            logger.warning(f"charter gate: {text}")
            return text
        logger.info(f"charter gate: job {job_id}: {decision.reason}")
        return super().deploy(workspace, job_id, job_meta, app_name, app_data, fl_ctx)


DEPLOYMENT_FILE = "consortium_deployment.json"  # <server workspace>/<job id>/: FLARE's deploy detail of the job


def write_deployment(fl_ctx) -> None:
    """At the server, once FLARE deployed a job (JOB_DEPLOYED): its per-site deploy detail into the job's run
    folder, where the job's own process (which sees only the job's meta) records it in the run record."""
    job_id = fl_ctx.get_prop(FLContextKey.CURRENT_JOB_ID)
    detail = fl_ctx.get_prop(FLContextKey.JOB_DEPLOY_DETAIL)
    if not job_id or detail is None:
        return
    run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(job_id))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DEPLOYMENT_FILE).write_text(json.dumps({"job_deploy_detail": list(detail)}, indent=1))


class SubmitCheck(FLComponent):
    """Server kit component (its local/resources.json): a job the charter refuses is refused at submission, with
    the reason (FLARE's SUBMIT_JOB event and block reason, nvflare 2.9.0 private/fed/server/job_cmds.py); once a
    job is deployed, which sites took it and which refused is kept for its run record (write_deployment)."""

    def handle_event(self, event_type: str, fl_ctx) -> None:
        if event_type == EventType.JOB_DEPLOYED:
            try:
                write_deployment(fl_ctx)
            except Exception as exc:  # the run record then says 'not recorded'; the job runs
                self.log_error(fl_ctx, f"governance: could not keep the job's deployment record: {exc}")
            return
        if event_type != EventType.SUBMIT_JOB:
            return
        from consortium.governance.charter import read_kit_charter

        meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        try:
            charter = read_kit_charter(kit_folder(fl_ctx.get_engine().get_workspace()))
            problem = charter_problem(charter, P.declared(meta))
        except Exception as exc:  # fail closed
            problem = f"the server's charter check failed ({type(exc).__name__}: {exc})"
        if problem:
            reason = f"the consortium's charter refuses job {meta.get('name', '?')}: {problem}"
            self.log_warning(fl_ctx, reason)
            fl_ctx.set_prop(FLContextKey.JOB_BLOCK_REASON, reason, private=True, sticky=False)
