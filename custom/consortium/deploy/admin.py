"""The consortium admin's side: FLARE admin API sessions to submit, follow, inspect and download jobs."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from consortium import constants as C

DONE_PREFIX = "FINISHED"


class AdminError(RuntimeError):
    """The admin API cannot do what was asked; the message says what to do."""


@contextmanager
def session(admin: str, kit: Path, timeout: float = 30.0):
    """An authenticated admin API session from an admin startup kit (mTLS client certificate)."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    if not (kit / "startup").is_dir():
        raise AdminError(
            f"admin kit {kit} not found (no startup/ folder in it): pass --admin-kit with the folder of an admin "
            "startup kit, or bring the local consortium up with `consortium poc up`"
        )
    from nvflare.fuel.flare_api.api_spec import AuthorizationError

    try:
        sess = new_secure_session(admin, str(kit), timeout=timeout)
    except Exception as exc:
        raise AdminError(f"cannot reach the FLARE server with {kit} ({exc}); is the consortium up?") from None
    try:
        yield sess
    except AuthorizationError as exc:  # a command the person's role may not run: say which right, and who may
        from consortium.deploy.roles import refusal

        name, org, role = kit_identity(kit)
        raise AdminError(refusal(name or admin, org, role, str(exc))) from None
    finally:
        sess.close()


def kit_identity(kit: Path) -> tuple[str, str, str]:
    """(name, org, role) of an admin kit, from its certificate (FLARE puts the role in the subject's
    unstructuredName); empty strings for what it does not say."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        subject = x509.load_pem_x509_certificate((kit / "startup" / "client.crt").read_bytes()).subject
    except (OSError, ValueError):
        return "", "", ""

    def attr(oid) -> str:
        found = subject.get_attributes_for_oid(oid)
        return str(found[0].value) if found else ""

    return attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATION_NAME), attr(NameOID.UNSTRUCTURED_NAME)


def running_jobs(info) -> list[str]:
    """Ids of the jobs the server is running now (processes, not the job store's status)."""
    return [str(j.job_id) for j in (getattr(info, "job_info", None) or [])]


def clients(sess) -> list[str]:
    return sorted(c.name for c in sess.get_system_info().client_info)


def _lines(logs: dict, marker: str) -> list[str]:
    out = []
    for text in (logs.get("logs") or {}).values():
        if isinstance(text, str):
            out += [marker + ln.split(marker, 1)[1] for ln in text.splitlines() if marker in ln]
    return out


def site_errors(sess, job_id: str) -> list[str]:
    """The error text every failing site sent back with its task result (recorded in the server's job log)."""
    return _lines(sess.get_job_logs(job_id, target="server"), C.SITE_ERROR_MARKER)


def refusal_lines(meta: dict) -> list[str]:
    """The sites that refused (or failed) the job's deployment and why, from FLARE's job_deploy_detail: e.g. a
    hospital's charter gate (governance/gate.py) or authorization policy."""
    from consortium.governance.record import DEPLOY_DETAIL, deploy_outcome

    _, refusals = deploy_outcome(meta.get(DEPLOY_DETAIL))
    return [f"{r['site']} refused the job at deployment: {r['reason']}" for r in refusals]


def follow(sess, job_id: str, *, timeout: float, log=print, poll: float = 1.0, log_poll: float = 3.0,
           shown_refusals=None) -> str:  # fmt: skip
    """Print the sites' refusals at deployment and the server's per-round progress lines while the job runs;
    return its final status. `shown_refusals` (a set) collects the refusal lines printed.

    The status is looked at every `poll` s (about 15 ms a call), so the end is noticed within a second (it was
    every 3 s); the server's job log, which grows to a few hundred KB, is fetched every `log_poll` s and once
    more at the end, so no progress line is missed."""
    shown, deadline, fetched = 0, time.time() + timeout, 0.0
    refused = set() if shown_refusals is None else shown_refusals
    while True:
        meta = sess.get_job_meta(job_id)
        status = meta.get("status", "")
        for line in refusal_lines(meta):
            if line not in refused:
                refused.add(line)
                log("  " + line)
        done = status.startswith(DONE_PREFIX)
        if done or time.time() - fetched >= log_poll:
            fetched = time.time()
            try:
                lines = _lines(sess.get_job_logs(job_id, target="server"), "[progress]")
            except Exception:  # the log store may not have the job yet
                lines = []
            for line in lines[shown:]:
                log("  " + line.strip())
            shown = max(shown, len(lines))
        if done:
            return status
        if time.time() > deadline:
            raise AdminError(
                f"job {job_id} still {status} after {timeout:.0f} s; abort it with `consortium abort {job_id}`"
            )
        time.sleep(poll)


def download(sess, job_id: str, dest: Path) -> Path:
    """Download the job's results and copy the global model and metrics to `dest`."""
    folder = Path(sess.download_job_result(job_id))
    dest.mkdir(parents=True, exist_ok=True)
    for name in (C.GLOBAL_MODEL_FILE, C.METRICS_FILE, C.CROSS_SITE_FILE):
        found = list(folder.rglob(name))
        if found:
            shutil.copy2(found[0], dest / name)
    shutil.copytree(folder, dest / "download", dirs_exist_ok=True)
    return dest
