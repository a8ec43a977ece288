"""Benchmark: the demo job with DP-SGD at epsilon 1, 3, 8 and without DP (delta 1e-5), and the cost of a DP-SGD step.

Usage: python bench/dp.py [--epsilons 1 3 8] [--rounds N] [--batch-size B] [--max-grad-norm C] [--lr LR]
                          [--public-start runs/public_start/seg2d.pt [--public-epsilons 1 8] [--public-lr 1e-3]]
                          [--no-clip-only] [--no-train] [--no-timing]
Prints validation Dice of the final global model per hospital and setting (FLARE simulator, job `fedavg_dp`
with only the target epsilon changed; "no DP" is the same job without dp_sgd; "clip only" keeps DP-SGD's
per-patient clipping and Poisson sampling with noise multiplier 0.001, i.e. no meaningful privacy, to separate
the cost of the noise from that of the mechanics), and the time of one training step on the demo UNet:
plain, DP-SGD as the sites run it, and Opacus's stock per-sample gradients.
With --public-start (a checkpoint from `consortium pretrain`, trained on public_cohort/, which no hospital
owns) it adds: the public start fine-tuned without DP, and with DP-SGD at each of --public-epsilons, training
all weights and only the decoder (dp_sgd.trainable: decoder), at --public-lr (fine-tuning).
Generates the demo data first if it is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

from consortium.config import load_site_configs
from consortium.jobs import load_job_spec

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5


def _variants(args, jobs: Path) -> dict[str, str]:
    """Job variants in a temporary jobs folder: the repository's jobs plus one per setting."""
    shutil.copytree(ROOT / "jobs", jobs)
    dp = load_job_spec("fedavg_dp", ROOT / "jobs").dp_sgd.to_dict()
    extra = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    names = {}
    for eps in args.epsilons:
        dp_sgd = {**dp, "target_epsilon": eps, "delta": DELTA}
        if args.max_grad_norm:
            dp_sgd["max_grad_norm"] = args.max_grad_norm
        names[f"epsilon {eps:g}"] = _write(jobs, f"bench_dp_{eps:g}", {"dp_sgd": dp_sgd, **extra})
    if not args.no_clip_only:  # DP-SGD's clipping, sampling and per-patient loss without (meaningful) noise
        clip_only = {**dp, "noise_multiplier": 1e-3, "target_epsilon": None, "delta": DELTA}
        if args.max_grad_norm:
            clip_only["max_grad_norm"] = args.max_grad_norm
        names["clip only"] = _write(jobs, "bench_clip_only", {"dp_sgd": clip_only, **extra})
    names["no DP"] = _write(jobs, "bench_no_dp", {"dp_sgd": None, **extra})
    if args.public_start:
        public = {**extra, "pretrained": str(Path(args.public_start).resolve()), "lr": args.public_lr}
        names["public, no DP"] = _write(jobs, "bench_public_no_dp", {"dp_sgd": None, **public})
        for eps in args.public_epsilons:
            for trainable in ("all", "decoder"):
                dp_sgd = {**dp, "target_epsilon": eps, "delta": DELTA, "trainable": trainable}
                if args.max_grad_norm:
                    dp_sgd["max_grad_norm"] = args.max_grad_norm
                label = f"public, eps {eps:g}" + (", dec." if trainable == "decoder" else "")
                names[label] = _write(jobs, f"bench_public_{eps:g}_{trainable}", {"dp_sgd": dp_sgd, **public})
    return names


def _write(jobs: Path, name: str, settings: dict) -> str:
    (jobs / name).mkdir()
    (jobs / name / "job.yaml").write_text(yaml.safe_dump({"base": "fedavg_dp", **settings}))
    return name


def train_settings(args) -> list[tuple]:
    with tempfile.TemporaryDirectory(prefix="consortium-bench-dp-") as jobs:  # the job variants
        return _train(args, Path(jobs) / "jobs", Path(args.runs))


def _train(args, jobs: Path, runs: Path) -> list[tuple]:
    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(ROOT / "site_configs")]
    subprocess.run(cli + ["data", "synth"], check=True, stdout=subprocess.DEVNULL)
    cli += ["--jobs", str(jobs), "--runs", str(runs)]
    rows = []
    for label, job in _variants(args, jobs).items():
        sim = cli + ["simulate", job] + (["--rounds", str(args.rounds)] if args.rounds else [])
        start = time.perf_counter()
        subprocess.run(sim, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        history = json.loads((runs / job / "metrics.json").read_text())
        dice = {s: m["val_score"] for s, m in history["final"].items()}
        last = history["rounds"][-1]["sites"]
        eps = {s: m.get("dp_epsilon") for s, m in last.items()}
        noise = {s: m.get("dp_noise_multiplier") for s, m in last.items()}
        rows.append((label, dice, eps, noise, seconds))
        print(f"  {label}: mean Dice {sum(dice.values()) / len(dice):.3f} in {seconds:.0f} s", flush=True)
    return rows


def _step_timer(kind: str, batch: dict, batch_size: int):
    """One training step (forward, backward, optimizer step) of the demo UNet on a fixed batch."""
    from monai.losses import DiceCELoss
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from consortium.privacy.dpsgd import PatientDPOptimizer
    from consortium.privacy.persample import ConvGradSampleModule
    from consortium.tasks.seg2d import build_model

    model = build_model()
    if kind == "plain":
        module, loss_fn = model, DiceCELoss(sigmoid=True, batch=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    elif kind == "dp":  # as SiteDPSGD runs it: fast conv sampler, clipping per patient (4 slices each here)
        module, loss_fn = ConvGradSampleModule(model), DiceCELoss(sigmoid=True, batch=False)
        adam = torch.optim.Adam(module.parameters(), lr=1e-3)
        optimizer = PatientDPOptimizer(adam, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=2)
        optimizer.groups = torch.arange(len(batch["image"])) // 4
    else:  # stock Opacus: its own samplers (unfold for Conv2d, functorch for ConvTranspose2d), per-slice clipping
        module, loss_fn = GradSampleModule(model), DiceCELoss(sigmoid=True, batch=False)
        adam = torch.optim.Adam(module.parameters(), lr=1e-3)
        optimizer = DPOptimizer(adam, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch_size)
    image, label = batch["image"], batch["label"]

    def step() -> float:
        start = time.thread_time()  # CPU time of this thread: robust to other processes on a shared machine
        optimizer.zero_grad(set_to_none=True)
        loss_fn(module(image), label).backward()
        optimizer.step()
        return time.thread_time() - start

    return step


def step_times(args) -> dict[str, float]:
    """Median step time per kind, kinds interleaved step by step so that load changes hit all alike."""
    from consortium.tasks import get_task

    torch.set_num_threads(1)  # as the demo sites train (site config resources.num_threads)
    spec = load_job_spec("fedavg_dp", ROOT / "jobs")
    batch_size = args.batch_size or spec.batch_size
    cfg = load_site_configs(ROOT / "site_configs")["hospital-a"]
    loader, _, _ = get_task(spec.task).make_loaders(cfg, batch_size=batch_size, seed=0)
    batch = next(iter(loader))
    kinds = {"plain": "plain training (Adam)", "dp": "DP-SGD as the sites run it", "opacus": "DP-SGD, stock Opacus"}
    steps = {k: _step_timer(k, batch, batch_size) for k in kinds}
    times = {k: [] for k in kinds}
    for i in range(args.steps + 5):
        for kind, step in steps.items():
            seconds = step()
            if i >= 5:  # warm-up
                times[kind].append(seconds)
    return {kinds[k]: sorted(v)[len(v) // 2] for k, v in times.items()}


def _short(value, fmt: str) -> str:
    if value is None:
        return "-"
    return ">1e3" if value > 1e3 else format(value, fmt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--rounds", type=int, help="override the job's rounds")
    parser.add_argument("--batch-size", type=int, help="override the job's batch size (all settings)")
    parser.add_argument("--lr", type=float, help="override the job's learning rate (all settings)")
    parser.add_argument("--max-grad-norm", type=float, help="override the DP-SGD clipping bound")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per kind")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_dp"), help="where each run's results go")
    parser.add_argument("--public-start", help="a pretrained checkpoint (consortium pretrain): adds the public rows")
    parser.add_argument("--public-epsilons", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--public-lr", type=float, default=1e-3, help="learning rate of the public-start runs")
    parser.add_argument("--no-clip-only", action="store_true", help="skip the run with clipping but ~no noise")
    parser.add_argument("--no-train", action="store_true", help="only time the steps")
    parser.add_argument("--no-timing", action="store_true", help="only train")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    if not args.no_timing:
        times = step_times(args)
        plain = next(iter(times.values()))
        print(f"\none training step, demo UNet, 64 x 64, batch {args.batch_size or 8}, 1 thread (median CPU time):")
        for label, seconds in times.items():
            print(f"  {label:32s} {1000 * seconds:7.1f} ms  {seconds / plain:5.2f}x")
    if not args.no_train:
        print("\ntraining the demo job in the FLARE simulator, one run per setting ...")
        rows = train_settings(args)
        sites = sorted(rows[0][1])
        none = next(r for r in rows if r[0] == "no DP")
        base = sum(none[1].values()) / len(sites)
        print(f"\nvalidation Dice of the final global model (delta {DELTA:g}; epsilon per site, whole job):")
        print(f"{'setting':20s} " + " ".join(f"{s:>11s}" for s in sites) + f" {'mean':>6s} {'vs no DP':>8s}", end="")
        print(f" {'epsilon spent':>22s} {'noise mult.':>18s} {'seconds':>8s}")
        for label, dice, eps, noise, seconds in rows:
            mean = sum(dice.values()) / len(sites)
            spent = "/".join(_short(eps.get(s), ".2f") for s in sites)
            sigma = "/".join(_short(noise.get(s), ".3g") for s in sites)
            print(f"{label:20s} " + " ".join(f"{dice[s]:11.3f}" for s in sites), end="")
            print(f" {mean:6.3f} {mean - base:+8.3f} {spent:>22s} {sigma:>18s} {seconds:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
