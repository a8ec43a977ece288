"""Benchmark: FedAvg in the FLARE simulator against each site alone and pooled data, same task and settings.

Usage: python bench/fedavg_vs_baselines.py [--job fedavg] [--rounds N]
Prints a table of validation Dice per evaluation site and the wall time of each run.
Generates the demo data first if it is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from consortium.baselines import run_baselines
from consortium.config import load_site_configs
from consortium.jobs import load_job_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", nargs="+", default=["fedavg", "fedavg_plain"], help="federated jobs to run")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    args = parser.parse_args()

    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(ROOT / "site_configs")]
    cli += ["--jobs", str(ROOT / "jobs")]
    subprocess.run(cli + ["data", "synth"], check=True)
    spec = load_job_spec(args.job[0], ROOT / "jobs")  # the baselines copy the first job's settings
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    sites = load_site_configs(ROOT / "site_configs")

    rows = []
    for job in args.job:
        start = time.perf_counter()
        sim = cli + ["--runs", args.runs, "simulate", job, "--rounds", str(spec.rounds)]
        subprocess.run(sim, check=True, stdout=subprocess.DEVNULL)
        history = json.loads((Path(args.runs) / job / "metrics.json").read_text())
        fed = {s: m["val_score"] for s, m in history["final"].items()}
        he = "encrypted" if load_job_spec(job, ROOT / "jobs").he else "plaintext"
        rows.append((f"FedAvg {he} ({job}, simulator)", fed, time.perf_counter() - start))

    quiet = lambda *_: None  # noqa: E731
    local = run_baselines(spec, sites, kind="local", log=quiet)
    pooled = run_baselines(spec, sites, kind="pooled", log=quiet)

    names = list(sites)
    for trained_on, res in local["results"].items():
        rows.append((f"local only: {trained_on}", res["scores"], res["seconds"]))
    pooled_res = pooled["results"]["pooled"]
    rows.append(("pooled data (reference)", pooled_res["scores"], pooled_res["seconds"]))

    print(f"\njob {spec.name}: {spec.rounds} rounds x {spec.round_budget}, lr {spec.lr}")
    print(f"{'model':38s} " + " ".join(f"{n:>11s}" for n in names) + f" {'mean':>7s} {'seconds':>8s}")
    for label, dice, seconds in rows:
        mean = sum(dice[n] for n in names) / len(names)
        print(f"{label:38s} " + " ".join(f"{dice[n]:11.3f}" for n in names) + f" {mean:7.3f} {seconds:8.1f}")
    print("\nDice on each site's validation split; local-only rows show how one site's model transfers to the others.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
