"""Where a round's time goes, for bench/round_overhead.py: the round's slowest site followed through FLARE's own
log lines (server and site logs, FLARE 2.9's messages) and the run record's task seconds."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SEGMENTS = ("dispatch", "decrypt", "site task", "after task", "upload", "accept", "close", "save model",
            "checkpoint")  # fmt: skip


def _events(path: Path, patterns: dict[str, str]) -> dict[str, list[float]]:
    """{event: [seconds since the epoch of each line matching its regex, in order]}."""
    found = {name: [] for name in patterns}
    compiled = {name: re.compile(p) for name, p in patterns.items()}
    for line in path.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if not stamp:
            continue
        for name, regex in compiled.items():
            if regex.search(line):
                found[name].append(datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return found


def from_logs(server_log: Path, site_logs: dict[str, Path], metrics: Path) -> dict:
    """Seconds per round (rounds 1..), the slowest site's task and the breakdown of each round's period."""
    server = _events(server_log, {
        "send": r"Sending task train to", "next": r"Sending task \w+ to", "exit": r"task train exit with status",
        "progress": r"\[progress\] round \d+/", "saved": r"Model saved to",
    })  # fmt: skip
    got = {s: _events(server_log, {"got": rf"got result from client {s} for task: name=train",
                                   "done": rf"peer={s},.*task_name=train.*finished processing client result"})
           for s in site_logs}  # fmt: skip
    site = {s: _events(path, {"got": r"got task assignment: name=train,", "invoke": r"task_name=train,.*invoking task",
                              "line": rf"{s} round \d+: ", "send": r"task_name=train,.*start to send task result"})
            for s, path in site_logs.items()}  # fmt: skip
    records = {r["round"]: r for r in json.loads(metrics.read_text())["rounds"]}
    starts = server["send"]
    periods, tasks, segments = [], [], {k: [] for k in SEGMENTS}

    def first(times, after, before):
        return next((t for t in times if after <= t < before), None)

    for r in range(1, len(starts)):  # by time window: a site dropped from a round (timeout) has no entry in it
        start, nxt = starts[r], first(server["next"], starts[r] + 1e-3, float("inf"))
        if nxt is None:
            break
        arrived = {s: first(got[s]["got"], start, nxt) for s in site_logs}
        arrived = {s: t for s, t in arrived.items() if t is not None}
        if not arrived or r not in records:
            continue
        last = max(arrived, key=arrived.get)  # the round's slowest site: its result came last
        s, g = site[last], got[last]
        taken = first(s["got"], start, nxt)
        invoked = first(s["invoke"], taken or start, nxt)
        line = first(s["line"], invoked or start, nxt)
        sent = first(s["send"], line or start, nxt)
        done = first(g["done"], arrived[last], nxt)
        progress = first(server["progress"], done or start, nxt)
        if None in (taken, invoked, line, sent, done, progress):
            continue
        saved = first(server["saved"], progress, nxt) or progress  # none once the file is written at the end only
        points = [start, taken, invoked, line, sent, arrived[last], done, progress, saved, nxt]
        for name, a, b in zip(SEGMENTS, points[:-1], points[1:], strict=True):
            segments[name].append(b - a)
        periods.append(nxt - start)
        tasks.append(max(m["task_seconds"] for m in records[r]["sites"].values()))
    return {"round": periods, "task": tasks, "segments": segments}
