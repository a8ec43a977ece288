"""Benchmark: what the audit trail (consortium.audit_trail) adds to a federated round.

Usage: python bench/audit_cost.py [--job fedavg] [--rounds 4] [--repeats 3] [--site-configs site_configs]
                                  [--sites hospital-a,hospital-b,hospital-c] [--out /tmp/audit_cost]
Runs the job (the demo's: HE fedavg on the generated hospitals) in the FLARE simulator with and without the
trail, alternating, `--repeats` times each; only the training rounds run (no cross-site evaluation, training
alone, fine-tuning or membership audit). Seconds per round are the run record's round times, without round 0
(process start-up). It prints the median with and without and the overhead in %. Because whole rounds on a
shared machine vary by more than 1 %, it also prints the recorder's own work per round: the time to digest a
payload of each recorded size and append its record (fsync'd), summed over the server's and every site's
records of one round (an upper bound of what it adds: part of it runs in parallel at the sites).
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
import time
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


def recorder_work(workspace: Path, repeats: int = 3) -> tuple[float, int]:
    """(seconds of digest + append per round, records per round), from the trails of a run with the trail."""
    from nvflare.apis.dxo import DXO, DataKind

    from consortium import constants as C
    from consortium.audit_trail import chain
    from consortium.audit_trail.digest import payload_digest

    trails = [p / C.TRAIL_FOLDER / C.TRAIL_FILE for p in workspace.iterdir()]
    records = [r for t in trails if t.is_file() for r in chain.read(t) if (r.get("round") or 0) > 0]
    rounds = len({r["round"] for r in records}) or 1
    scratch = Path(tempfile.mkdtemp()) / "trail.jsonl"
    total = 0.0
    for record in records:
        payload = DXO(DataKind.WEIGHTS, data={"blob": os.urandom(record["bytes"])}).to_shareable()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            digest = payload_digest(payload)
            chain.append(scratch, {**{k: record[k] for k in ("job", "round", "task", "peer")}, "sha256": digest.sha256})
            best = min(best, time.perf_counter() - start)
        total += best
    shutil.rmtree(scratch.parent, ignore_errors=True)
    return total / rounds, len(records) // rounds


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
    for i in range(args.repeats):
        for trail in (False, True) if i % 2 == 0 else (True, False):  # alternate, so drift hits both alike
            rounds = run_once(args, trail, out / f"ws_{'on' if trail else 'off'}")
            seconds[trail] += rounds
            per_run[trail].append(statistics.median(rounds))
            print(f"repeat {i + 1}, trail {'on ' if trail else 'off'}: {statistics.median(rounds):.2f} s per round "
                  f"(rounds {', '.join(f'{s:.2f}' for s in rounds)})", flush=True)  # fmt: skip
    work, n_records = recorder_work(out / "ws_on")
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"\njob {args.job}, {len(args.sites.split(','))} sites, rounds 1..{args.rounds - 1} of {args.rounds}, "
          f"{args.repeats} runs each (simulator, {os.cpu_count()} cores)\n")  # fmt: skip
    print("| | seconds per round (median) | runs' medians |")
    print("|---|---|---|")
    for trail in (False, True):
        runs = ", ".join(f"{s:.2f}" for s in per_run[trail])
        print(f"| trail {'on' if trail else 'off'} | {on if trail else off:.3f} | {runs} |")
    print(f"| overhead | {100 * (on - off) / off:+.1f} % | |")
    print(f"| recorder's own work | {work:.3f} s per round ({n_records} records) = {100 * work / off:.2f} % | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
