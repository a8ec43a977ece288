"""Benchmark: what the audit trail (consortium.audit_trail) adds to a federated round.

Usage: python bench/audit_cost.py [--job fedavg] [--rounds 5] [--repeats 3] [--site-configs site_configs]
                                  [--sites hospital-a,hospital-b,hospital-c] [--out /tmp/audit_cost]
Runs the job (the demo's: HE fedavg on the generated hospitals) in the FLARE simulator with and without the
trail, alternating, `--repeats` times each; only the training rounds run (no cross-site evaluation, training
alone, fine-tuning or membership audit). Seconds per round are the run record's round times, without round 0
(process start-up); it prints their median with and without and the difference in %. Whole rounds on a shared
2-core machine vary by more than 1 %, so it also prints the recorder's own time: each participant's recorder
logs the records it wrote and the seconds they took (digest, append, fsync) at the end of the job. Per round:
their sum over the server and every site (the CPU the trail takes: what it costs when, as here, the sites
share two cores) and the busiest participant's (about what it adds where every hospital has its own machine:
the sites record in parallel), both against the quickest run's round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONLY_ROUNDS = {"cross_site": False, "train_alone": False, "finetune_epochs": 0, "audit": None}


def worker(args) -> int:
    from consortium.jobs import load_job_spec, simulate

    spec = load_job_spec(args.job, ROOT / "jobs").with_overrides(ROOT / "jobs" / args.job, rounds=args.rounds)
    known = {f.name for f in fields(spec)}
    spec = replace(spec, **{k: v for k, v in ONLY_ROUNDS.items() if k in known})
    result = simulate(spec, sites=args.sites.split(","), site_config_dir=Path(args.site_configs).resolve(),
                      workspace=Path(args.workspace), audit_trail=args.worker == "on")  # fmt: skip
    return 0 if result in (None, 0) else 1


def run_once(args, trail: bool, workspace: Path) -> list[float]:
    shutil.rmtree(workspace, ignore_errors=True)
    cmd = [sys.executable, __file__, "--worker", "on" if trail else "off", "--workspace", str(workspace),
           "--job", args.job, "--rounds", str(args.rounds), "--sites", args.sites,
           "--site-configs", args.site_configs]  # fmt: skip
    env = {**os.environ, "HOME": str(workspace.parent / "home")}
    with open(workspace.parent / f"{'on' if trail else 'off'}.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=3600).returncode
    record = workspace / "server" / "simulate_job" / "metrics.json"
    if code != 0 or not record.is_file():
        raise SystemExit(f"simulation failed (exit {code}); see {log.name} in {workspace.parent}")
    rounds = json.loads(record.read_text())["rounds"]
    return [r["seconds"] for r in rounds if r["round"] > 0]


def recorder_seconds(workspace: Path) -> dict[str, tuple[float, int]]:
    """participant -> (seconds, records) its recorder logged for the run in `workspace`."""
    from consortium.audit_trail.recorder import TIMING_MARK

    found = {}
    for log in workspace.glob("*/log.txt"):
        for line in log.read_text(errors="replace").splitlines():
            if TIMING_MARK in line:
                words = line.split(TIMING_MARK)[1].split()  # "<n> records in <seconds> s"
                found[log.parent.name] = (float(words[3]), int(words[0]))
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", default="fedavg")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--site-configs", default=str(ROOT / "site_configs"))
    p.add_argument("--sites", default="hospital-a,hospital-b,hospital-c")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "audit_cost"))
    p.add_argument("--worker", choices=("on", "off"), help=argparse.SUPPRESS)
    p.add_argument("--workspace", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    per_run: dict[bool, list[float]] = {False: [], True: []}
    recorded: list[tuple[float, float, int]] = []  # runs with the trail: (s per round: all, busiest; records)
    for i in range(args.repeats):
        for trail in (False, True) if i % 2 == 0 else (True, False):  # alternate, so drift hits both alike
            workspace = out / f"ws_{'on' if trail else 'off'}"
            rounds = run_once(args, trail, workspace)
            seconds[trail] += rounds
            per_run[trail].append(statistics.median(rounds))
            note = ""
            if trail:
                found = recorder_seconds(workspace)
                secs, n = sum(t for t, _ in found.values()), sum(k for _, k in found.values())
                recorded.append((secs / args.rounds, max(t for t, _ in found.values()) / args.rounds, n))
                note = f"; recorders: {n} records in {secs:.3f} s (" + ", ".join(
                    f"{p} {t:.3f} s" for p, (t, _) in sorted(found.items())) + ")"  # fmt: skip
            print(f"repeat {i + 1}, trail {'on ' if trail else 'off'}: {statistics.median(rounds):.2f} s per round "
                  f"(rounds {', '.join(f'{s:.2f}' for s in rounds)}){note}", flush=True)  # fmt: skip
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    work = statistics.median(w for w, _, _ in recorded)
    largest = statistics.median(w for _, w, _ in recorded)
    print(f"\njob {args.job}, {len(args.sites.split(','))} sites, rounds 1..{args.rounds - 1} of {args.rounds}, "
          f"{args.repeats} runs each (simulator, {os.cpu_count()} cores)\n")  # fmt: skip
    print("| | seconds per round (median) | medians of the runs |")
    print("|---|---|---|")
    for trail in (False, True):
        runs = ", ".join(f"{s:.2f}" for s in per_run[trail])
        print(f"| trail {'on' if trail else 'off'} | {on if trail else off:.3f} | {runs} |")
    print(f"| difference | {100 * (on - off) / off:+.1f} % | |")
    quiet = min(min(per_run[False]), min(per_run[True]))  # the least loaded run's round
    print(f"| recorders' own time, all participants | {work:.4f} s per round = {100 * work / quiet:.2f} % of the "
          f"quickest run's round ({quiet:.2f} s) | {recorded[0][2] // args.rounds} records per round |")  # fmt: skip
    print(f"| the busiest participant's recorder | {largest:.4f} s per round = {100 * largest / quiet:.2f} % | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
