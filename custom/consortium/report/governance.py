"""The report's governance sections: the job's purpose, agreement, approvals and refusals, and what crossed the
wire per site according to the server's audit trail (consortium.audit_trail), with the privacy each site spent."""

from __future__ import annotations

import json

from consortium import runrecord as R
from consortium.report.page import Section, _section

GOVERNANCE = "Governance"
EXCHANGES = "Exchanges per site"
NOT_RECORDED = "not recorded"
# the run record meta's governance entry (written by the charter's gate): its key and its fields' names
META_GOVERNANCE = getattr(R.Meta, "GOVERNANCE", "governance")
FIELDS = ("purpose", "agreement", "charter_sha256", "job_sha256", "approvals", "refusals")


def _text(value) -> str:
    if value in (None, "", [], {}):
        return NOT_RECORDED
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) <= {"id", "version"}:  # the agreement
        return " version ".join(str(value[k]) for k in ("id", "version") if k in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(_text(v) for v in value)
    return json.dumps(value)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _trail_line(exchanges: dict, run) -> str:
    problem = exchanges.get(R.Exchanges.PROBLEM)
    state = f"did NOT verify when the job ended: {problem}" if problem else "verified when the job ended"
    return (
        f"the server's trail {exchanges.get(R.Exchanges.TRAIL)}: {exchanges.get(R.Exchanges.RECORDS)} records, "
        f"head {exchanges.get(R.Exchanges.HEAD)}, {state}; check it again with `consortium audit verify {run.folder}`"
    )


def governance_section(run) -> Section:
    gov = run.meta.get(META_GOVERNANCE) or {}
    rows = [[name.replace("_", " "), _text(gov.get(name))] for name in FIELDS]
    exchanges = run.history.get(R.EXCHANGES)
    rows.append(["audit trail", _trail_line(exchanges, run) if exchanges else NOT_RECORDED])
    text = "What the job ran under and who approved or refused it" + (
        "." if gov else ": not recorded in the run record (no charter gate ran for this job)."
    )
    return _section(GOVERNANCE, text, ["item", "value"], rows)


def _side(entry: dict, way: str) -> list[str]:
    side = entry.get(way) or {}
    if not side:
        return ["0", "–", "–"]
    first = (side.get(R.Exchanges.FIRST) or {}).get("sha256") or ""
    last = (side.get(R.Exchanges.LAST) or {}).get("sha256") or ""
    return [str(side.get(R.Exchanges.COUNT, 0)), _mb(side.get(R.Exchanges.BYTES, 0)), f"{first[:12]} / {last[:12]}"]


def exchanges_section(run) -> Section:
    exchanges = run.history.get(R.EXCHANGES)
    if not exchanges:
        return _section(EXCHANGES, "Not recorded: this run's server kept no audit trail (a run from before it).")
    header = ["site", "sent to site", "size", "first / last hash", "received from site", "size",
              "first / last hash", "privacy spent (epsilon)"]  # fmt: skip
    rows = []
    for site, entry in sorted((exchanges.get(R.Exchanges.SITES) or {}).items()):
        spent = entry.get(R.Exchanges.DP_SPENT) or {}
        dp = ", ".join(f"{k} {v:.2f}" for k, v in spent.items()) or "no DP"
        rows.append([site, *_side(entry, R.Exchanges.TO_SITE), *_side(entry, R.Exchanges.FROM_SITE), dp])
    text = (
        "Every task payload the server sent to or received from each site in this job, from the server's "
        "hash-chained trail: counts, sizes, SHA-256 of the first and last payload each way (each site's own trail "
        "holds the same hashes), and the epsilon each site's last result reported (per job and DP mechanism)."
    )
    return _section(EXCHANGES, text, header, rows)


def governance_sections(run) -> list[Section]:
    return [governance_section(run), exchanges_section(run)]
