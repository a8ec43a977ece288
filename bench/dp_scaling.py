"""Benchmark: how many patients a hospital needs before DP-SGD at a given epsilon costs little Dice.

Usage: python bench/dp_scaling.py [--patients 48 400] [--epsilons 8] [--epochs 15] [--batch-size 256]
                                  [--lr 0.03] [--channels 16,32,64,128] [--site hospital-a]
One hospital trains alone (its generated profile, with N patients), without FLARE, through the same task
functions and the same DP-SGD path (SiteDPSGD: per-patient clipping, Poisson sampling of patients,
accountant) as a site in a federated job. For every N it prints validation Dice without DP (the demo job's
settings: batch 8, Adam lr 3e-3, cosine) and with DP-SGD at each epsilon (delta 1e-5, whole training),
the noise multiplier the accountant needs, and the number of DP steps. DP-SGD wants large batches, so the
DP runs use --batch-size slices per step (about batch/4 patients) and their own learning rate.
Data are generated once per N under --out.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from consortium.config import load_site_configs
from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD
from consortium.tasks import round_lr, seg2d

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5


def site_config(site: str, patients: int, out: Path):
    """`site`'s config with its generated data (N patients) in out/N/; generated on first use."""
    folder = out / f"{patients}_patients"
    configs = folder / "site_configs"
    if not (folder / "data" / site / "manifest.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        configs.mkdir(parents=True)
        for name in ("_defaults.yaml", f"{site}.yaml"):
            shutil.copy2(ROOT / "site_configs" / name, configs / name)
        cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(configs), "data", "synth"]
        subprocess.run(cli + ["--patients", str(patients), "--sites", site], check=True, stdout=subprocess.DEVNULL)
    return load_site_configs(configs)[site]


def train_once(cfg, *, epsilon: float | None, args) -> dict:
    torch.manual_seed(0)
    model = seg2d.build_model(channels=tuple(int(c) for c in args.channels.split(",")))
    batch_size = 8 if epsilon is None else args.batch_size
    train, val, _ = seg2d.make_loaders(cfg, batch_size=batch_size, seed=0)
    start, steps, sigma = time.perf_counter(), 0, None
    if epsilon is None:
        for epoch in range(args.epochs):
            steps += seg2d.train(model, train, epochs=1, lr=round_lr(3e-3, epoch, args.epochs, "cosine")).steps
    else:
        settings = DPSGDSettings(delta=DELTA, max_grad_norm=args.max_grad_norm, target_epsilon=epsilon)
        dp = SiteDPSGD(settings, model=model, train_loader=train, batch_size=batch_size)
        sigma = dp.plan(rounds=args.epochs, local_epochs=1)
        for epoch in range(args.epochs):
            lr = round_lr(args.lr, epoch, args.epochs, "cosine")
            steps += dp.train(seg2d, epochs=1, lr=lr).steps
        spent = dp.epsilon()  # the Poisson loader counts every step it draws
        if spent > epsilon + 1e-6:
            raise RuntimeError(f"accountant: spent epsilon {spent:.3f} > target {epsilon}")
    return {
        "patients": len({r["patient_id"] for r in train.dataset.data}),
        "dice": seg2d.evaluate(model, val),
        "sigma": sigma,
        "steps": steps,
        "seconds": time.perf_counter() - start,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[48, 400], help="patients at the site")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256, help="DP-SGD: expected slices per step")
    parser.add_argument("--lr", type=float, default=0.03, help="DP-SGD: Adam learning rate (cosine decay)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="DP-SGD: per-patient clipping bound")
    parser.add_argument("--channels", default="16,32,64,128", help="UNet channels (the demo model by default)")
    parser.add_argument("--site", default="hospital-a", help="whose generated profile to use")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_dp_scaling"), help="generated data go here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)  # as the demo sites train

    rows = []
    for n in args.patients:
        cfg = site_config(args.site, n, Path(args.out))
        base = train_once(cfg, epsilon=None, args=args)
        rows.append((n, "no DP", base, 0.0))
        print(f"  {n} patients, no DP: Dice {base['dice']:.3f} ({base['seconds']:.0f} s)", flush=True)
        for eps in args.epsilons:
            res = train_once(cfg, epsilon=eps, args=args)
            rows.append((n, f"epsilon {eps:g}", res, res["dice"] - base["dice"]))
            print(f"  {n} patients, epsilon {eps:g}: Dice {res['dice']:.3f} ({res['seconds']:.0f} s)", flush=True)

    print(
        f"\n{args.site} alone, {args.epochs} epochs, UNet channels {args.channels}; DP-SGD: batch "
        f"{args.batch_size} slices, lr {args.lr:g}, clip {args.max_grad_norm:g}, delta {DELTA:g}"
    )
    head = ("patients", "train", "setting", "noise mult.", "steps", "Dice", "vs no DP", "s")
    print(" ".join(f"{h:>{w}s}" for h, w in zip(head, (8, 6, 11, 11, 6, 6, 8, 5), strict=True)))
    for n, label, res, gap in rows:
        sigma = "-" if res["sigma"] is None else f"{res['sigma']:.2f}"
        print(
            f"{n:8d} {res['patients']:6d} {label:>11s} {sigma:>11s} {res['steps']:6d} {res['dice']:6.3f} "
            f"{gap:+8.3f} {res['seconds']:5.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
