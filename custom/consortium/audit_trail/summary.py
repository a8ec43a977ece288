"""A job's exchanges per site, from the server's trail: written into the job's run record when the job ends."""

from __future__ import annotations

from pathlib import Path

from consortium import runrecord as R
from consortium.audit_trail import chain

SENT, RECEIVED = "sent", "received"


def summarise(records: list[dict], job: str) -> dict[str, dict]:
    """site -> counts, bytes, first and last payload hash each way, and the DP spent it last reported, for the
    records of `job` in the server's trail ("to_site": the server sent, "from_site": the server received)."""
    sites: dict[str, dict] = {}
    for record in records:
        if record.get("job") != job or not record.get("peer"):
            continue
        way = R.Exchanges.TO_SITE if record.get("direction") == SENT else R.Exchanges.FROM_SITE
        entry = sites.setdefault(record["peer"], {})
        side = entry.setdefault(way, {R.Exchanges.COUNT: 0, R.Exchanges.BYTES: 0})
        side[R.Exchanges.COUNT] += 1
        side[R.Exchanges.BYTES] += int(record.get("bytes") or 0)
        side.setdefault(R.Exchanges.FIRST, {"seq": record[chain.SEQ], "sha256": record.get("sha256")})
        side[R.Exchanges.LAST] = {"seq": record[chain.SEQ], "sha256": record.get("sha256")}
        if record.get("dp_epsilon"):
            entry[R.Exchanges.DP_SPENT] = record["dp_epsilon"]
    return sites


def job_exchanges(trail: Path, job: str) -> R.ExchangesEntry:
    """The run record's `exchanges` entry for `job`: the trail's head (to compare with the file later), whether
    the trail verified, and the job's exchanges per site."""
    verdict = chain.verify(trail)
    return {
        R.Exchanges.TRAIL: str(trail),
        R.Exchanges.HEAD: verdict.head,
        R.Exchanges.RECORDS: len(verdict.records),
        R.Exchanges.PROBLEM: verdict.problem,
        R.Exchanges.SITES: summarise(verdict.records, job),
    }


def record_job_exchanges(fl_ctx, trail: Path, component) -> None:
    """At the server's END_RUN: add the job's exchanges to its run record, if the job keeps one."""
    job = fl_ctx.get_job_id()
    run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(job)
    try:
        record = R.read(run_dir, missing_ok=True)
        if not record or not trail.is_file():
            return  # a job without a run record (federated statistics), or no exchange at all
        record[R.EXCHANGES] = job_exchanges(trail, job)
        R.write(run_dir, record)
        problem = record[R.EXCHANGES][R.Exchanges.PROBLEM]
        if problem:
            component.log_error(fl_ctx, f"audit trail {trail} does not verify: {problem}")
    except (OSError, ValueError) as exc:
        component.log_error(fl_ctx, f"audit trail: could not add the job's exchanges to its run record: {exc}")
