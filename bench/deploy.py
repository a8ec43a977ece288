"""Benchmark: the real local consortium. Times provisioning, `poc up` until every site is registered,
the FedAvg job through the admin API, `poc down`, and FLARE's overhead per round.

Usage: python bench/deploy.py [--job fedavg] [--rounds N]
Runs in a temporary workspace (own HOME, free ports) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="fedavg")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="consortium-bench-"))
    (tmp / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp / "home")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(ROOT / "site_configs")]
    cli += ["--jobs", str(ROOT / "jobs"), "--consortium", str(ROOT / "provisioning/consortium.yaml")]
    cli += ["--workspace", str(tmp / "ws"), "--runs", str(tmp / "runs")]

    def timed(*cmd) -> float:
        start = time.perf_counter()
        subprocess.run(cli + list(cmd), env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start

    rows = [("generate data (if missing)", timed("data", "synth")), ("consortium provision", timed("provision"))]
    rows.append(("poc up (until all sites registered)", timed("poc", "up")))
    try:
        submit = ["submit", args.job] + (["--rounds", str(args.rounds)] if args.rounds else [])
        rows.append((f"submit {args.job} + follow + download", timed(*submit)))
    finally:
        rows.append(("poc down (no process left)", timed("poc", "down")))
    total = sum(seconds for _, seconds in rows[2:]) + rows[0][1]

    history = json.loads((tmp / "runs" / args.job / "metrics.json").read_text())
    print(f"\n{'step':42s} {'seconds':>8s}")
    for label, seconds in rows:
        print(f"{label:42s} {seconds:8.1f}")
    print(f"{'demo total (data + up + job + down)':42s} {total:8.1f}")

    print(f"\n{'round':>5s} {'round s':>8s} {'slowest train s':>16s} {'slowest task s':>15s} {'FLARE overhead s':>17s}")
    overheads = []
    for r in history["rounds"][1:]:  # round 0 includes each site's one-time data loading
        train = max(m["train_seconds"] for m in r["sites"].values())
        task = max(m.get("task_seconds", train) for m in r["sites"].values())
        overheads.append((r["seconds"] - train, r["seconds"] - task))
        print(f"{r['round']:5d} {r['seconds']:8.2f} {train:16.2f} {task:15.2f} {r['seconds'] - task:17.2f}")
    mean_train = sum(o[0] for o in overheads) / len(overheads)
    mean_task = sum(o[1] for o in overheads) / len(overheads)
    print(
        f"mean per round: round - slowest training = {mean_train:.2f} s; round - slowest site task = {mean_task:.2f} s"
    )
    print(f"(site task = load weights, evaluate received model, train, evaluate; workspace {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
