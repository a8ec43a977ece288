"""Benchmark: is the shared model better for each hospital than training alone? FedAvg, FedProx and SCAFFOLD
in the FLARE simulator against each site alone and pooled data, with the same task functions and settings.

Usage: python bench/evaluation.py [--jobs fedavg fedprox scaffold] [--rounds N] [--runs runs/bench]
Prints the score of every model on every site's validation split, the cross-site matrix of each job, and the
issue's two targets: (1) the global model's mean within 0.02 of pooled training; (2) the global model beats
every site's local-only model on the average of the *other* sites' data.
Generates the demo data first if it is missing. The baselines use the first job's settings.
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
from consortium.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["fedavg", "fedprox", "scaffold"], help="federated jobs")
    parser.add_argument("--rounds", type=int, help="override every job's rounds (and the baselines')")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--site-configs", default=str(ROOT / "site_configs"))
    args = parser.parse_args()

    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", args.site_configs, "--jobs", str(ROOT / "jobs")]
    subprocess.run(cli + ["data", "synth"], check=True, stdout=subprocess.DEVNULL)
    spec = load_job_spec(args.jobs[0], ROOT / "jobs")
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    sites = load_site_configs(Path(args.site_configs))
    names = list(sites)
    metric = get_task(spec.task).METRIC_NAME

    rows, matrices, personal = [], {}, {}
    for job in args.jobs:
        job_spec = load_job_spec(job, ROOT / "jobs")
        start = time.perf_counter()
        sim = cli + ["--runs", args.runs, "simulate", job, "--rounds", str(spec.rounds)]
        print(f"running {job} in the FLARE simulator ({spec.rounds} rounds) ...", flush=True)
        subprocess.run(sim, check=True, stdout=subprocess.DEVNULL)
        history = json.loads((Path(args.runs) / job / "metrics.json").read_text())
        fed = {s: m["val_score"] for s, m in history["final"].items()}
        he = "HE" if job_spec.he else "plain"
        label = f"{job_spec.algorithm} global ({job}, {he})"
        rows.append((label, fed, time.perf_counter() - start))
        if "cross_site" in history:
            matrices[job] = history["cross_site"]
        tuned = {s: m.get("personalized_score") for s, m in history["final"].items()}
        if all(v is not None for v in tuned.values()):
            personal[job] = tuned
            rows.append((f"  + {job_spec.finetune_epochs} fine-tuning epochs at each site", tuned, 0.0))

    quiet = lambda *_: None  # noqa: E731
    print("training the baselines (each site alone, pooled) ...", flush=True)
    local = run_baselines(spec, sites, kind="local", log=quiet)
    pooled = run_baselines(spec, sites, kind="pooled", log=quiet)
    for trained_on, res in local["results"].items():
        rows.append((f"local only: {trained_on}", res["scores"], res["seconds"]))
    pooled_scores = pooled["results"]["pooled"]["scores"]
    rows.append(("pooled data (reference)", pooled_scores, pooled["results"]["pooled"]["seconds"]))

    print(
        f"\n{metric} on each site's validation split. Settings of {spec.name}: {spec.rounds} rounds x "
        f"{spec.local_epochs} local epochs, lr {spec.lr} ({spec.lr_schedule}), batch {spec.batch_size}, "
        f"weighting {spec.weighting}"
    )
    print(f"{'model':48s} " + " ".join(f"{n:>11s}" for n in names) + f" {'mean':>7s} {'seconds':>8s}")
    for label, scores, seconds in rows:
        shown = f"{seconds:8.1f}" if seconds else f"{'':8s}"
        line = " ".join(f"{scores[n]:11.3f}" for n in names)
        print(f"{label:48s} {line} {mean(scores[n] for n in names):7.3f} {shown}")

    for job, matrix in matrices.items():
        print(f"\ncross-site evaluation of {job} (row: model, column: site whose validation data)")
        print(f"{'model':14s} " + " ".join(f"{n:>11s}" for n in matrix["sites"]))
        for model in matrix["models"]:
            print(f"{model:14s} " + " ".join(f"{matrix['scores'][model][n]:11.3f}" for n in matrix["sites"]))

    print("\ntargets")
    pooled_mean = mean(pooled_scores[n] for n in names)
    for label, scores, _ in rows:
        if " global (" not in label:
            continue
        gap = pooled_mean - mean(scores[n] for n in names)
        verdict = "met" if gap <= 0.02 else "NOT met"
        print(f"  (1) {label}: mean {pooled_mean - gap:.3f} vs pooled {pooled_mean:.3f}: gap {gap:+.3f} ({verdict})")
        for site, res in local["results"].items():
            others = [n for n in names if n != site]
            alone = mean(res["scores"][n] for n in others)
            shared = mean(scores[n] for n in others)
            verdict = "met" if shared > alone else "NOT met"
            print(
                f"  (2)   on the data of {', '.join(others)}: global {shared:.3f} vs local-only {site} "
                f"{alone:.3f} ({verdict})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
