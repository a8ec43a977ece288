"""A site's privacy spending across jobs: an append-only JSON-lines ledger in its own workspace.

`<site workspace>/consortium_privacy/spending.jsonl`, outside every job folder, so it outlives jobs and restarts.
Each line is one record, written with one write() under an exclusive lock and fsynced before the round's update
leaves the site, so a killed process has counted what it sent:

* `plan`: the site accepted the job: its planned epsilon and delta (what it reserves of the site's budget);
* `round`: a round's update is about to be sent: the epsilon and delta spent so far in the run by one mechanism
  (`dp_sgd`, `dp_update`, or `none` for a job without DP), the accountant, noise, sample rate and steps;
* `refused`: the site refused the job (its reason); nothing spent.

Composition (docs/privacy.md, Budgets across jobs): a *run* is a job and the jobs that resume it (its run chain);
its accounting continues across them (privacy.ledger), so a run counts once, by its first job's id. A run counts
the larger of its plan and what it spent (the sum over its mechanisms of each one's latest epsilon and delta:
sequential composition within the run); different runs add up (basic composition of epsilons and of deltas).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from consortium import constants as C

FILE = "spending.jsonl"
PLAN, ROUND, REFUSED = "plan", "round", "refused"
NO_DP = "none"  # the mechanism of a job without DP: no epsilon bounds it


def path(root: str | Path) -> Path:
    return Path(root) / C.PRIVACY_LEDGER_FOLDER / FILE


def append(root: str | Path, record: dict, *, check=None) -> dict:
    """Append one record (with the time) and fsync it; `check(ledger)`, if given, runs on the ledger as read under
    the same lock and may raise (then nothing is written): a site's jobs (separate processes) cannot both take
    the last of its budget. A line a killed process left incomplete is closed first, so it stays one unreadable
    line (reported by `read`) and never swallows this record."""
    file = path(root)
    created = not file.exists()
    file.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if check is not None:
            check(read(file))
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:  # the new file's directory entry must reach the disk too
        dir_fd = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return record


@dataclass
class Run:
    """One run (a job and the jobs resuming it) at this site: what it planned and spent."""

    run: str
    jobs: list = field(default_factory=list)
    planned: tuple | None = None  # (epsilon, delta) reserved when the site accepted it
    spent: dict = field(default_factory=dict)  # mechanism -> its latest round record
    rounds: set = field(default_factory=set)
    refused: str = ""
    time: str = ""

    @property
    def private(self) -> bool:
        """False if the run trained without DP (no epsilon bounds what it sent)."""
        return NO_DP not in self.spent and (self.planned is None or self.planned[0] is not None)

    @property
    def accountants(self) -> str:
        return ", ".join(f"{m}: {r.get('accountant') or '-'}" for m, r in sorted(self.spent.items()) if m != NO_DP)

    def counted(self) -> tuple[float, float]:
        """(epsilon, delta) this run takes from the site's budget: the larger of its plan and its spending."""
        eps = sum(float(r["epsilon"]) for m, r in self.spent.items() if m != NO_DP)
        delta = sum(float(r["delta"]) for m, r in self.spent.items() if m != NO_DP)
        plan_eps, plan_delta = self.planned if self.planned and self.planned[0] is not None else (0.0, 0.0)
        return max(eps, plan_eps), max(delta, plan_delta)


@dataclass
class Ledger:
    """A site's ledger as read: its runs in order of first appearance, and the lines that could not be read."""

    file: Path
    runs: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    records: int = 0

    def counted(self, *, exclude: str | None = None) -> tuple[float, float]:
        """(epsilon, delta) of all runs but `exclude`, summed: basic composition across runs."""
        totals = [r.counted() for key, r in self.runs.items() if key != exclude]
        return sum(t[0] for t in totals), sum(t[1] for t in totals)


def run_key(job: str, chain: list | None) -> str:
    """A run is named by the first job of its chain (a job without a chain is its own run)."""
    return str(chain[0]) if chain else str(job)


def read(file: str | Path) -> Ledger:
    """Read a ledger file (missing: empty); unreadable lines are listed in `problems` with their number, never
    silently dropped. A line is complete on disk before its round's update is sent, so an incomplete last line
    (a process killed while writing it) belongs to an update that never left: it counts nothing."""
    file = Path(file)
    ledger = Ledger(file)
    if not file.exists():
        return ledger
    data = file.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines) and not data.endswith(b"\n")
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or record.get("kind") not in (PLAN, ROUND, REFUSED) or "job" not in record:
                raise ValueError("not a ledger record")
        except ValueError:
            what = "incomplete (a process was killed while writing it; that round was not sent)" if last else (
                "unreadable (edited by hand, or a line a killed process left incomplete)")  # fmt: skip
            ledger.problems.append(f"{file}: line {number} is {what}; it counts nothing: {raw[:80]!r}")
            continue
        ledger.records += 1
        _add(ledger, record)
    return ledger


def _add(ledger: Ledger, record: dict) -> None:
    key = run_key(record["job"], record.get("chain"))
    run = ledger.runs.setdefault(key, Run(key))
    if record["job"] not in run.jobs:
        run.jobs.append(record["job"])
    run.time = record.get("time", run.time)
    if record["kind"] == PLAN:
        eps, delta = record.get("epsilon"), record.get("delta")
        if eps is None:
            run.planned = run.planned or (None, None)
        else:
            old = run.planned if run.planned and run.planned[0] is not None else (0.0, 0.0)
            run.planned = (max(old[0], float(eps)), max(old[1], float(delta)))
    elif record["kind"] == ROUND:
        mechanism = record.get("mechanism", NO_DP)
        old = run.spent.get(mechanism)
        if old is None or mechanism == NO_DP or float(record["epsilon"]) >= float(old["epsilon"]):
            run.spent[mechanism] = record
        if record.get("round") is not None:
            run.rounds.add(int(record["round"]))
    else:
        run.refused = str(record.get("reason", ""))
