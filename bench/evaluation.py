"""Benchmark: is the shared model better for each hospital than training alone? FedAvg, FedProx and SCAFFOLD
in the FLARE simulator against each site alone and pooled data, with the same task functions and settings.

Usage: python bench/evaluation.py [--jobs fedavg fedprox scaffold] [--rounds N] [--seeds 0 1 ...]
                                  [--test-patients 100] [--local first|all|none] [--runs runs/bench] [--summary]
Prints the score of every model on every site's validation split and on a held-out test cohort, the
cross-site matrix of each job, and the issue's two targets: (1) the global model's mean within 0.02 of
pooled training; (2) the global model beats every site's local-only model on the average of the *other*
sites' data.

Why a test cohort: the demo's validation splits are small (hospital-c has 16 slices, 7 of them without
lesion, and an empty slice scores 0 or 1), so one flipped slice moves the three-site mean by 0.02, the
size of target (1). The test cohort is --test-patients new patients per hospital, generated from the same
hospital profile with a seed no training data uses; no model ever trains on it. Training itself varies with
the seed too, so --seeds repeats everything (jobs, baselines) per seed. Every seed's results are kept in
RUNS/seed<N>/evaluation_<jobs>.json, and the end of a run prints the mean over all seeds recorded there with the
same settings (so two processes with different --seeds and the same --runs add up).
Generates the demo data first if it is missing. The baselines use the first job's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from evaluation_tables import POOLED, average, print_table, print_targets

from consortium.baselines import run_baselines
from consortium.config import load_site_configs
from consortium.constants import GLOBAL_MODEL_FILE
from consortium.data.synth import generate_site
from consortium.jobs import load_job_spec
from consortium.tasks import get_task, seg2d

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 7919  # generator seed of the held-out test cohorts; `data synth` uses --seed (default 0)
# what the baselines depend on (JobSpec fields): same values, same baseline models
BASELINE_SETTINGS = ("task", "rounds", "local_epochs", "local_steps", "lr", "lr_schedule", "batch_size", "seed")


def consortium_cli(args) -> list[str]:
    """The `consortium` command with this bench's site configs and jobs."""
    return [sys.executable, "-m", "consortium.cli", "--site-configs", args.site_configs, "--jobs", str(ROOT / "jobs")]


def test_cohorts(sites: dict, patients: int, out: Path) -> dict:
    """{site: loader} over `patients` new patients per hospital (its generated profile, seed TEST_SEED)."""
    loaders = {}
    for name, cfg in sites.items():
        if cfg.synthetic is None:
            raise SystemExit(f"{name} has no 'synthetic' profile in {cfg.source}: no test cohort can be generated")
        test_cfg = replace(cfg, data=replace(cfg.data, dir=out / f"{patients}_patients" / name))
        generate_cohort(test_cfg, patients)
        loaders[name] = seg2d.make_test_loader(test_cfg)
        usable, expected = len(loaders[name].dataset), patients * cfg.synthetic.slices_per_patient
        if usable != expected:
            raise SystemExit(
                f"test cohort {test_cfg.data.dir}: {usable} usable slices, expected {expected}; "
                "delete that folder and run the bench again to regenerate it"
            )
    return loaders


def generate_cohort(cfg, patients: int) -> None:
    """Generate a test cohort into cfg.data.dir unless it is there. Bench processes for different seeds share
    it, so each generates into a staging folder of its own and renames it into place: a process never reads
    files that another one is still writing (that race once left the cohort's files half-written)."""
    final = cfg.data.dir
    if final.exists():  # renamed into place whole: without manifest it is a leftover of something else
        if cfg.manifest_path.exists():
            return
        raise SystemExit(f"{final} holds an incomplete test cohort (no {cfg.data.manifest}): delete it")
    print(f"generating the test cohort of {cfg.name}: {patients} patients ...", flush=True)
    staging = final.parent / f".{final.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    generate_site(replace(cfg, data=replace(cfg.data, dir=staging)), seed=TEST_SEED, patients=patients)
    try:
        staging.rename(final)
    except OSError:  # the folder exists: another process finished first (same seed, identical files)
        shutil.rmtree(staging)


def evaluate_file(task, path: Path, loaders: dict) -> dict:
    """Score the plaintext model file `path` (a state dict) on every loader."""
    model = task.build_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return {name: task.evaluate(model, loader) for name, loader in loaders.items()}


def run_seed(seed: int, args, spec, sites: dict, tests: dict | None, with_local: bool) -> dict:
    """Every job and baseline for one seed; returns (and writes) the rows and cross-site matrices."""
    task = get_task(spec.task)
    spec = replace(spec, seed=seed)
    runs = Path(args.runs) / f"seed{seed}"
    cli = consortium_cli(args)
    rows, matrices = [], {}
    for job in args.jobs:
        job_spec = load_job_spec(job, ROOT / "jobs")
        start = time.perf_counter()
        sim = cli + ["--runs", str(runs), "simulate", job, "--rounds", str(spec.rounds), "--seed", str(seed)]
        print(f"seed {seed}: running {job} in the FLARE simulator ({spec.rounds} rounds) ...", flush=True)
        subprocess.run(sim, check=True, stdout=subprocess.DEVNULL)
        history = json.loads((runs / job / "metrics.json").read_text())
        fed = {s: m["val_score"] for s, m in history["final"].items()}
        test = evaluate_file(task, runs / job / GLOBAL_MODEL_FILE, tests) if tests else None
        he = "HE" if job_spec.he else "plain"
        momentum = job_spec.server_momentum
        algorithm = job_spec.algorithm + (f" + momentum {momentum:g}" if momentum else "")
        rows.append({"label": f"{algorithm} global ({job}, {he})", "val": fed, "test": test,
                     "seconds": time.perf_counter() - start, "federated": True})  # fmt: skip
        if "cross_site" in history:
            matrices[job] = history["cross_site"]
        tuned = {s: m.get("personalized_score") for s, m in history["final"].items()}
        if all(v is not None for v in tuned.values()):  # fine-tuned models stay at their sites: val only
            label = f"  + {job_spec.finetune_epochs} fine-tuning epochs at each site ({job})"
            rows.append({"label": label, "val": tuned, "test": None, "seconds": 0.0})

    quiet = lambda *_: None  # noqa: E731
    print(f"seed {seed}: training the baselines ({'each site alone, ' if with_local else ''}pooled) ...", flush=True)
    kinds = ["local", "pooled"] if with_local else ["pooled"]
    for kind in kinds:
        out = cached_baselines(spec, sites, kind, tests, args.test_patients, runs / f"baseline_{kind}.json", quiet)
        for trained_on, res in out["results"].items():
            label = POOLED if kind == "pooled" else f"local only: {trained_on}"
            rows.append({"label": label, "val": res["scores"], "test": res.get("test_scores"),
                         "seconds": res["seconds"], "local": kind == "local"})  # fmt: skip
    record = {
        "seed": seed,
        "settings": settings_key(args, spec),
        "rows": rows,
        "matrices": matrices,
    }
    record_file(runs, args.jobs).write_text(json.dumps(record, indent=1))
    return record


def cached_baselines(spec, sites: dict, kind: str, tests: dict | None, test_patients: int, path: Path, log) -> dict:
    """run_baselines, or its earlier result for the same job settings and test cohort (baselines do not
    depend on the federated jobs, so comparing another job with the same seed need not retrain them)."""
    key = {k: getattr(spec, k) for k in BASELINE_SETTINGS} | {"sites": sorted(sites), "test_patients": test_patients}
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            print(f"  {kind} baseline: reusing {path}", flush=True)
            return cached["out"]
    out = run_baselines(spec, sites, kind=kind, log=log, test_loaders=tests)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "out": out}, indent=1))
    return out


def record_file(folder: Path, jobs: list[str]) -> Path:
    """Where a seed's results go: one file per set of jobs, so runs of other jobs in the same seed folder
    (which share the cached baselines) do not overwrite each other."""
    return folder / f"evaluation_{'+'.join(jobs)}.json"


def settings_key(args, spec) -> dict:
    return {"jobs": list(args.jobs), "rounds": spec.rounds, "test_patients": args.test_patients}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["fedavg", "fedprox", "scaffold"], help="federated jobs")
    parser.add_argument("--rounds", type=int, help="override every job's rounds (and the baselines')")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--test-patients", type=int, default=100, help="held-out test patients per site (0: none)")
    parser.add_argument(
        "--local", choices=["first", "all", "none"], default="first",
        help="train the local-only baselines for the first seed (default), every seed, or none",
    )  # fmt: skip
    parser.add_argument(
        "--summary", action="store_true",
        help="train nothing: print the mean over the seeds already recorded in --runs for these jobs and settings",
    )  # fmt: skip
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("--site-configs", default=str(ROOT / "site_configs"))
    args = parser.parse_args()

    if not args.summary:
        subprocess.run(consortium_cli(args) + ["data", "synth"], check=True, stdout=subprocess.DEVNULL)
    spec = load_job_spec(args.jobs[0], ROOT / "jobs")
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    sites = load_site_configs(Path(args.site_configs))
    names = list(sites)
    metric = get_task(spec.task).METRIC_NAME
    run_tests = args.test_patients and not args.summary
    tests = test_cohorts(sites, args.test_patients, Path(args.runs) / "test_cohort") if run_tests else None
    settings = (
        f"Settings of {spec.name}: {spec.rounds} rounds x {spec.round_budget}, lr {spec.lr} "
        f"({spec.lr_schedule}), batch {spec.batch_size}, weighting {spec.weighting}"
    )

    for i, seed in enumerate([] if args.summary else args.seeds):
        with_local = args.local == "all" or (args.local == "first" and i == 0)
        record = run_seed(seed, args, spec, sites, tests, with_local)
        print(f"\n=== seed {seed}. {settings}")
        print_table(f"{metric} on each site's validation split", record["rows"], "val", names)
        print_table(
            f"{metric} on the held-out test cohort ({args.test_patients} patients per site)", record["rows"], "test",
            names,
        )  # fmt: skip
        for job, matrix in record["matrices"].items():
            print(f"\ncross-site evaluation of {job} (row: model, column: site whose validation data)")
            print(f"{'model':14s} " + " ".join(f"{n:>11s}" for n in matrix["sites"]))
            for model in matrix["models"]:
                print(f"{model:14s} " + " ".join(f"{matrix['scores'][model][n]:11.3f}" for n in matrix["sites"]))
        print()
        print_targets(record["rows"], "test", names, "the test cohort")
        print_targets(record["rows"], "val", names, "the validation splits")

    key = settings_key(args, spec)
    records = []
    for path in sorted(Path(args.runs).glob(f"seed*/{record_file(Path(), args.jobs).name}")):
        record = json.loads(path.read_text())
        if record.get("settings") == key:
            records.append(record)
    if args.summary and not records:
        print(f"no results recorded in {args.runs} for jobs {' '.join(args.jobs)} with these settings")
        return 1
    if len(records) > 1 or args.summary:
        seeds = ", ".join(str(r["seed"]) for r in records)
        print(f"\n=== mean over seeds {seeds} (all recorded in {args.runs} with these settings). {settings}")
        rows = average(records, names)
        print_table(f"{metric} on each site's validation split", rows, "val", names)
        test_title = f"{metric} on the held-out test cohort ({args.test_patients} patients per site)"
        print_table(test_title, rows, "test", names)
        print()
        print_targets(rows, "test", names, "the test cohort, mean over seeds")
        print_targets(rows, "val", names, "the validation splits, mean over seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
