"""Choose the heart jobs' learning rate without looking at the test splits.

Usage: python bench/heart_tune.py [--lrs 0.0003 0.001 0.003 0.01] [--modes federated none] [--repeats 5]
Each hospital's FLamby training split is split again, 75 / 25 stratified (one split per repeat); FedAvg
trains on the 75 % parts and is scored by the mean over hospitals of the accuracy on the 25 % parts. The
standardisation statistics come from the 75 % parts only (federated: all hospitals' together, as the
federated statistics would; local: each hospital's own). FedAvg runs in this process with the task's own
functions, not in the FLARE simulator (the grid would take hours there): 15 rounds x 100 local steps, Adam,
batch 4, sites weighted by their number of training rows, as the heart jobs. Prints mean +- sd over
repeats x seeds per learning rate; the test splits are never loaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from consortium.data.heart import CENTERS, load_center
from consortium.tasks import heart


def validation_splits(repeat: int) -> dict:
    """{center: ((x_fit, y_fit), (x_val, y_val))} carved from the FLamby training split only."""
    out = {}
    for center in CENTERS:
        (x, y), _, _ = load_center(center)
        fit, val = train_test_split(np.arange(len(y)), test_size=0.25, random_state=repeat, stratify=y)
        out[center] = ((x[fit], y[fit]), (x[val], y[val]))
    return out


def standardisers(mode: str, data: dict) -> dict:
    if mode == "none":
        return {c: None for c in data}
    if mode == "local":
        return {c: heart.Standardiser.from_rows(data[c][0][0]) for c in data}
    pooled = heart.Standardiser.from_rows(np.concatenate([data[c][0][0] for c in data]), source="all sites")
    return {c: pooled for c in data}


def fedavg(data: dict, scalers: dict, *, lr: float, seed: int, rounds: int, steps: int, batch_size: int = 4) -> float:
    """Mean over hospitals of the validation accuracy of FedAvg's final global model."""
    generator = torch.Generator().manual_seed(seed)
    fit, val, weight = {}, {}, {}
    for c, ((xf, yf), (xv, yv)) in data.items():
        scale = scalers[c].apply if scalers[c] is not None else (lambda x: x)
        fit[c] = DataLoader(
            TensorDataset(torch.from_numpy(scale(xf)), torch.from_numpy(yf)),
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
        )
        val[c] = DataLoader(TensorDataset(torch.from_numpy(scale(xv)), torch.from_numpy(yv)), batch_size=64)
        weight[c] = len(yf) / sum(len(d[0][1]) for d in data.values())
    torch.manual_seed(seed)
    global_model = heart.build_model()
    for _ in range(rounds):
        states = {}
        for c in data:
            model = heart.build_model()
            model.load_state_dict(global_model.state_dict())
            heart.train(model, fit[c], epochs=-(-steps // len(fit[c])), max_steps=steps, lr=lr)
            states[c] = model.state_dict()
        global_model.load_state_dict({k: sum(weight[c] * states[c][k] for c in data) for k in states[c]})
    return float(np.mean([heart.evaluate(global_model, val[c]) for c in data]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.0003, 0.001, 0.003, 0.01])
    parser.add_argument("--modes", nargs="+", default=["federated", "none"], choices=["federated", "local", "none"])
    parser.add_argument("--repeats", type=int, default=5, help="validation splits")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds per split")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--local-steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = [validation_splits(r) for r in range(args.repeats)]
    print(f"FedAvg, {args.rounds} rounds x {args.local_steps} steps; validation accuracy (mean over hospitals), "
          f"mean +- sd over {args.repeats} splits x {args.seeds} seeds")  # fmt: skip
    for mode in args.modes:
        scores = {}
        for lr in args.lrs:
            runs = [
                fedavg(data, standardisers(mode, data), lr=lr, seed=seed, rounds=args.rounds, steps=args.local_steps)
                for data in splits
                for seed in range(args.seeds)
            ]
            scores[lr] = statistics.mean(runs)
            print(f"standardise {mode:9s} lr {lr:<8g} {scores[lr]:.3f} +- {statistics.stdev(runs):.3f}", flush=True)
        best = max(scores, key=scores.get)
        print(f"standardise {mode:9s} best lr {best:g} (validation {scores[best]:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
