"""Benchmark: Fed-Heart-Disease (UCI heart disease, 4 real hospitals) next to FLamby's published numbers.

Usage: python bench/heart.py [--seeds 5] [--jobs heart_fedavg heart_fedprox heart_scaffold]
Runs, for every seed, each site alone, pooled data, and the federated jobs in the FLARE simulator (the
same machinery as the imaging jobs, HE included), then prints mean +- sd over the seeds of the accuracy
averaged over the 4 hospitals' test splits (FLamby's split), next to FLamby's published results.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from consortium.baselines import run_baselines
from consortium.config import load_site_configs
from consortium.jobs import load_job_spec

ROOT = Path(__file__).resolve().parents[1]
SITE_CONFIGS = ROOT / "site_configs" / "heart"
# FLamby (Ogier du Terrail et al. 2022), Fed-Heart-Disease, accuracy averaged over the 4 test sets
FLAMBY = {"pooled": "0.735", "local only": "0.567-0.722", "FedAvg": "0.685", "FedProx": "0.685", "SCAFFOLD": "0.684"}
FLAMBY_BEST_FEDERATED = 0.731
LABELS = {"fedavg": "FedAvg", "fedprox": "FedProx", "scaffold": "SCAFFOLD"}


def mean_over_sites(scores: dict) -> float:
    return sum(scores.values()) / len(scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", nargs="+", default=["heart_fedavg", "heart_fedprox", "heart_scaffold"])
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_heart"))
    parser.add_argument("--lr", type=float, help="override every job's learning rate (FLamby used 0.001)")
    args = parser.parse_args()

    sites = load_site_configs(SITE_CONFIGS)
    base = load_job_spec(args.jobs[0], ROOT / "jobs")
    if args.lr:
        base = replace(base, lr=args.lr)
    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(SITE_CONFIGS), "--jobs", str(ROOT / "jobs")]
    results: dict[str, list[float]] = {}
    quiet = lambda *_: None  # noqa: E731
    for seed in range(args.seeds):
        spec = replace(base, seed=seed)
        start = time.perf_counter()
        local = run_baselines(spec, sites, kind="local", log=quiet)
        for trained_on, res in local["results"].items():
            results.setdefault(f"local only: {trained_on}", []).append(mean_over_sites(res["scores"]))
        pooled = run_baselines(spec, sites, kind="pooled", log=quiet)
        results.setdefault("pooled", []).append(mean_over_sites(pooled["results"]["pooled"]["scores"]))
        print(f"seed {seed}: baselines in {time.perf_counter() - start:.0f} s", flush=True)
        for job in args.jobs:
            start = time.perf_counter()
            runs = Path(args.runs) / f"seed{seed}"
            cmd = cli + ["--runs", str(runs), "simulate", job, "--seed", str(seed)]
            cmd += ["--lr", str(args.lr)] if args.lr else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-2000:] + proc.stderr[-2000:], file=sys.stderr)
                return 1
            history = json.loads((runs / job / "metrics.json").read_text())
            acc = mean_over_sites({s: m["val_score"] for s, m in history["final"].items()})
            algorithm = load_job_spec(job, ROOT / "jobs").algorithm
            results.setdefault(LABELS[algorithm], []).append(acc)
            print(f"seed {seed}: {job} accuracy {acc:.3f} in {time.perf_counter() - start:.0f} s", flush=True)

    print(
        f"\nFed-Heart-Disease: accuracy averaged over the 4 hospitals' test splits, mean +- sd over {args.seeds} "
        f"seeds.\nSettings ({base.name}): {base.rounds} rounds x {base.local_steps} local steps, batch "
        f"{base.batch_size}, Adam lr {base.lr}, weighting {base.weighting}; HE {'on' if base.he else 'off'}"
    )
    print(f"{'method':28s} {'ours':>15s} {'FLamby':>12s}")
    for name, values in results.items():
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        flamby = FLAMBY.get(name, FLAMBY["local only"] if name.startswith("local only") else "")
        print(f"{name:28s} {statistics.mean(values):8.3f} +- {sd:.3f} {flamby:>12s}")
    best = max(statistics.mean(results[k]) for k in LABELS.values() if k in results)
    verdict = "met" if best >= FLAMBY_BEST_FEDERATED else "NOT met"
    print(f"\nbest federated {best:.3f} vs FLamby's best federated {FLAMBY_BEST_FEDERATED} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
