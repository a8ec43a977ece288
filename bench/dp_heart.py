"""Benchmark: Fed-Heart-Disease with DP-SGD at every hospital, per epsilon, against the same job without DP.

Usage: python bench/dp_heart.py [--epsilons 0.5 1 2 4 8] [--seeds 5] [--algorithms fedavg scaffold]
                                [--parallel 2] [--runs runs/bench_dp_heart] [--no-reference] [--no-run]
Every run is the job `heart_fedavg_dp` in the FLARE simulator (4 real hospitals, HE on, federated
standardisation), record-level DP-SGD (one row is one patient), each hospital spending at most epsilon over the
whole job at delta 1e-5 (its own privacy floor, below 1 / n of every hospital) with its own noise for its own
sample rate; "no DP" is the same job with dp_sgd removed (same rounds, epochs, batch size, learning rate). The
reference rows are the heart jobs with FLamby's settings and no DP (heart_fedavg, heart_scaffold: 15 rounds x 100
steps, batch 4, lr 0.001), the best non-DP setting of bench/heart.py. The runs skip what does not change the
final global model (cross-site evaluation, the membership audit, training alone). Prints mean +- sd over the
seeds of the accuracy averaged over the 4 hospitals' test splits, the gap of each epsilon to no DP, and whether
the target (epsilon 1 within 0.03 of no DP) is met, against the same job without DP and against the
reference (the verdict uses the better of the two: the same job keeps the DP job's batch size and learning
rate, chosen for DP on validation data, which are not the best without DP). FedProx cannot run with DP-SGD
(the proximal term would escape the clipping), so the federated algorithms here are FedAvg and SCAFFOLD, the
best of the others.

FLamby's published DP results for Fed-Heart-Disease (its repository, flamby/dp_example/results_fed_heart_disease.csv,
2022-10-04; FedAvg with Opacus, SGD lr 0.001, clipping 1.1, 5 seeds) are shown beside ours at delta 1e-4, the
smallest delta it ran and the only one below 1 / n of every hospital besides 1e-3. Its epsilons are nominal:
its noise is planned for 15 epochs per hospital (`epochs=nrounds`) but each round takes 100 steps, 2 (Cleveland)
to 12.5 (Switzerland) epochs, so it spends more than the epsilon it is labelled with.
Every finished run is appended to RUNS/results.jsonl; a rerun with the same settings takes the runs already
there (delete the file to start again), so a grid cut short can be completed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# FLamby's DP example on Fed-Heart-Disease (mean +- sd over its 5 seeds, delta 1e-4; no DP: the same script's run)
FLAMBY_DP = {0.1: (0.606, 0.121), 1.0: (0.685, 0.055), 5.0: (0.704, 0.049), 10.0: (0.700, 0.055),
             50.0: (0.702, 0.052)}  # fmt: skip
FLAMBY_NO_DP = (0.712, 0.024)
FLAMBY_FEDAVG = 0.685  # FLamby's benchmark FedAvg (Adam), no DP
TARGET_GAP = 0.03  # issue 17: epsilon 1 within 0.03 of no DP
NO_DP, REFERENCE = "no DP (same job)", "no DP, FLamby settings"
REFERENCE_JOBS = {"fedavg": "heart_fedavg", "scaffold": "heart_scaffold"}
IGNORED = ("description", "purpose", "agreement")  # job keys that do not change the trained model
FAST = {"cross_site": False, "audit": False, "train_alone": False}  # do not change the final global model


def _variants(jobs: Path, epsilons: list[float], algorithms: list[str], reference: bool) -> dict:
    shutil.copytree(ROOT / "jobs", jobs)
    base = yaml.safe_load((ROOT / "jobs" / "heart_fedavg_dp" / "job.yaml").read_text())["dp_sgd"]
    names = {}
    for algorithm in algorithms:
        for eps in [*epsilons, None]:
            label = NO_DP if eps is None else f"epsilon {eps:g}"
            name = f"bench_heart_{algorithm}_{'nodp' if eps is None else f'{eps:g}'}"
            dp_sgd = None if eps is None else {**base, "target_epsilon": eps}
            (jobs / name).mkdir()
            body = {"base": "heart_fedavg_dp", "algorithm": algorithm, "dp_sgd": dp_sgd, **FAST}
            (jobs / name / "job.yaml").write_text(yaml.safe_dump(body))
            names[(algorithm, label)] = name
        if reference:
            name = f"bench_heart_{algorithm}_flamby"
            (jobs / name).mkdir()
            (jobs / name / "job.yaml").write_text(yaml.safe_dump({"base": REFERENCE_JOBS[algorithm], **FAST}))
            names[(algorithm, REFERENCE)] = name
    return names


def _settings() -> dict:
    """What the results depend on besides the variant: the DP job's own file (and its base's), without the keys
    that do not change training (description, governance's purpose and agreement)."""
    return {name: {k: v for k, v in yaml.safe_load((ROOT / "jobs" / name / "job.yaml").read_text()).items()
                   if k not in IGNORED}
            for name in ("heart_fedavg_dp", "heart_fedavg", "heart_scaffold")}  # fmt: skip


def _run(cli: list[str], runs_root: Path, job: str, seed: int) -> dict:
    runs = runs_root / f"seed{seed}"
    start = time.perf_counter()
    proc = subprocess.run([*cli, "--runs", str(runs), "simulate", job, "--seed", str(seed)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{job} seed {seed} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    history = json.loads((runs / job / "metrics.json").read_text())
    scores = {s: m["val_score"] for s, m in history["final"].items()}
    eps = [m.get("dp_epsilon") for m in history["rounds"][-1]["sites"].values()]
    return {"job": job, "seed": seed, "accuracy": sum(scores.values()) / len(scores), "per_site": scores,
            "max_epsilon": max(eps) if all(e is not None for e in eps) else None,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def _cell(values: list[float], seeds: int) -> str:
    """mean +- sd, and how many seeds when fewer than asked (a grid cut short)."""
    if not values:
        return "not run"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}" + ("" if len(values) >= seeds else f" ({len(values)} seeds)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--algorithms", nargs="+", default=["fedavg", "scaffold"], choices=["fedavg", "scaffold"])
    p.add_argument("--parallel", type=int, default=2, help="simulator jobs at a time (2 cores: 2)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="skip the rows of the non-DP heart jobs with FLamby's settings")  # fmt: skip
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench_dp_heart"))
    p.add_argument("--no-run", dest="run", action="store_false",
                   help="run nothing: print the table of the runs already in RUNS/results.jsonl")  # fmt: skip
    args = p.parse_args()
    if args.parallel < 1:
        p.error("--parallel must be >= 1")
    runs_root = Path(args.runs)
    runs_root.mkdir(parents=True, exist_ok=True)
    log = runs_root / "results.jsonl"
    settings = _settings()
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            row = json.loads(line)
            if row.get("settings") == settings:
                done[(row["job"], row["seed"])] = row
    results: dict[tuple[str, str], list[dict]] = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="consortium-bench-dp-heart-") as tmp:
        jobs = Path(tmp) / "jobs"
        variants = _variants(jobs, args.epsilons, args.algorithms, args.reference)
        cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(ROOT / "site_configs" / "heart"),
               "--jobs", str(jobs)]  # fmt: skip
        # seed-major order: a grid cut short still has every setting at the first seeds
        todo = [(key, job, seed) for seed in range(args.seeds) for key, job in variants.items()]
        for key, job, seed in todo:
            if (job, seed) in done:
                results.setdefault(key, []).append(done[(job, seed)])

        def one(item):
            key, job, seed = item
            row = {**_run(cli, runs_root, job, seed), "settings": settings}
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"seed {seed} {key[0]} {key[1]}: accuracy {row['accuracy']:.3f} ({row['seconds']:.0f} s)", flush=True)
            return key, row

        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for key, row in pool.map(one, [t for t in todo if (t[1], t[2]) not in done] if args.run else []):
                results.setdefault(key, []).append(row)
    dp, when = settings["heart_fedavg_dp"], "started" if args.run else "table printed"
    print(f"\npython bench/dp_heart.py --seeds {args.seeds} --epsilons {' '.join(f'{e:g}' for e in args.epsilons)}"
          f" --algorithms {' '.join(args.algorithms)} ({when} {started}); job heart_fedavg_dp: "
          f"{dp.get('rounds', 15)} rounds x {dp['local_epochs']} local epochs, batch {dp.get('batch_size', 4)}, "
          f"lr {dp.get('lr', 0.001)}, clipping {dp['dp_sgd']['max_grad_norm']}, delta {dp['dp_sgd']['delta']} per "
          f"hospital and job. Mean accuracy over the 4 hospitals' test splits, mean +- sd over the seeds")  # fmt: skip

    def accuracies(algorithm, label):
        return [r["accuracy"] for r in results.get((algorithm, label), [])]

    head = " | ".join(f"{a} | {a} vs no DP (same job)" for a in args.algorithms)
    print(f"| setting | {head} | largest epsilon spent | FLamby FedAvg + DP (delta 1e-4, nominal epsilon) |")
    print("|---|" + "---|---|" * len(args.algorithms) + "---|---|")
    labels = [f"epsilon {e:g}" for e in args.epsilons] + [NO_DP] + ([REFERENCE] if args.reference else [])
    for label in labels:
        cells = []
        for algorithm in args.algorithms:
            values, none = accuracies(algorithm, label), accuracies(algorithm, NO_DP)
            gap = (f"{statistics.mean(values) - statistics.mean(none):+.3f}"
                   if values and none and label != NO_DP else "")  # fmt: skip
            cells += [_cell(values, args.seeds), gap]
        spent = [r["max_epsilon"] for a in args.algorithms for r in results.get((a, label), [])
                 if r["max_epsilon"] is not None]  # fmt: skip
        eps = float(label.split()[1]) if label.startswith("epsilon") else None
        flamby = FLAMBY_DP.get(eps) if eps is not None else FLAMBY_NO_DP if label == NO_DP else None
        flamby_cell = f"{flamby[0]:.3f} +- {flamby[1]:.3f}" if flamby else "-"
        print(f"| {label} | " + " | ".join(cells) + f" | {max(spent):.2f} | " if spent else
              f"| {label} | " + " | ".join(cells) + " | - | ", end="")  # fmt: skip
        print(flamby_cell + " |")
    others = ", ".join(f"epsilon {e:g}: {m:.3f} +- {s:.3f}" for e, (m, s) in FLAMBY_DP.items()
                       if e not in args.epsilons)  # fmt: skip
    print(f"FLamby's other epsilons (delta 1e-4): {others}; FLamby's benchmark FedAvg without DP (Adam): "
          f"{FLAMBY_FEDAVG}")  # fmt: skip
    # The verdict is against the better of the two non-DP runs: the same job without DP keeps the DP job's
    # batch size and learning rate, chosen for DP, and is not the best the consortium could do without DP.
    for algorithm in args.algorithms:
        one_ = accuracies(algorithm, "epsilon 1")
        for label in (NO_DP, REFERENCE):
            none = accuracies(algorithm, label)
            if one_ and none:
                gap = statistics.mean(none) - statistics.mean(one_)
                verdict = "met" if gap <= TARGET_GAP else f"missed by {gap - TARGET_GAP:.3f}"
                print(
                    f"{algorithm}: epsilon 1 {statistics.mean(one_):.3f} vs {label} {statistics.mean(none):.3f}: "
                    f"gap {gap:.3f}, target (within {TARGET_GAP}) {verdict} ({len(one_)} / {len(none)} seeds)"
                )
        best = max((accuracies(algorithm, label) for label in (NO_DP, REFERENCE)), key=lambda v: statistics.mean(v)
                   if v else -1.0)  # fmt: skip
        if one_ and best:
            gap = statistics.mean(best) - statistics.mean(one_)
            print(
                f"target ({algorithm}, against the better non-DP run): "
                + ("met" if gap <= TARGET_GAP else f"missed by {gap - TARGET_GAP:.3f}")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
