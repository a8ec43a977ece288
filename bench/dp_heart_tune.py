"""Choose the heart DP job's DP-SGD settings without looking at the test splits.

Usage: python bench/dp_heart_tune.py [--epsilon 1] [--lrs 0.001 0.01] [--batch-sizes 4 32] [--clips 0.1 1]
                                     [--schedules 15x2 5x2] [--repeats 3] [--seeds 2]
As bench/heart_tune.py: each hospital's FLamby training split is split again 75 / 25 (stratified, one split per
repeat); FedAvg trains on the 75 % parts with this project's DP-SGD at every hospital (privacy/dpsgd.py: Poisson
sampling, per-record clipping, Gaussian noise planned for `epsilon` at delta 1e-5 over the whole job, each
hospital for its own sample rate) and is scored by the mean over hospitals of the accuracy on the 25 % parts.
The standardisation statistics come from the 75 % parts only (`federated`: all hospitals' together, as the
federated statistics would; `local`: each hospital's own; `none`: raw features). Runs in this process with
the task's and DP-SGD's own functions, not in the FLARE simulator. A schedule RxE is R rounds of E local
epochs. Prints mean +- sd over repeats x seeds per setting; the test splits are never loaded.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from heart_tune import standardisers, validation_splits  # noqa: E402

from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD  # noqa: E402
from consortium.tasks import heart  # noqa: E402

DELTA = 1e-5


def dp_fedavg(data, scalers, *, epsilon, lr, batch_size, clip, rounds, epochs, seed) -> float:
    """Mean over hospitals of the validation accuracy of DP-SGD FedAvg's final global model (epsilon None: no DP)."""
    scalers = {c: s or heart.Standardiser(np.zeros(len(heart.FEATURES)), np.ones(len(heart.FEATURES)), "none")
               for c, s in scalers.items()}  # fmt: skip
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    sites, weight, val = {}, {}, {}
    total = sum(len(d[0][1]) for d in data.values())
    for c, ((xf, yf), (xv, yv)) in data.items():
        ds = TensorDataset(torch.from_numpy(scalers[c].apply(xf)), torch.from_numpy(yf))
        ds.one_patient_per_sample = True
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)
        model = heart.build_model()
        dp = None
        if epsilon is not None:
            settings = DPSGDSettings(delta=DELTA, max_grad_norm=clip, target_epsilon=epsilon)
            dp = SiteDPSGD(settings, model=model, train_loader=loader, batch_size=batch_size)
            dp.plan(rounds=rounds, local_epochs=epochs)
        sites[c] = (model, loader, dp)
        weight[c] = len(yf) / total
        val[c] = DataLoader(TensorDataset(torch.from_numpy(scalers[c].apply(xv)), torch.from_numpy(yv)), batch_size=64)
    global_model = heart.build_model()
    for _ in range(rounds):
        states = {}
        for c, (model, loader, dp) in sites.items():
            model.load_state_dict(global_model.state_dict())
            if dp is None:
                heart.train(model, loader, epochs=epochs, lr=lr)
            else:
                dp.train(heart, lr=lr, epochs=epochs)
            states[c] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        global_model.load_state_dict({k: sum(weight[c] * states[c][k] for c in sites) for k in states[c]})
    return float(np.mean([heart.evaluate(global_model, val[c]) for c in data]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilon", type=float, default=1.0, help="target epsilon per hospital; 0: no DP")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--clips", type=float, nargs="+", default=[1.0])
    p.add_argument("--schedules", nargs="+", default=["15x2"], help="RxE: R rounds of E local epochs")
    p.add_argument("--standardise", default="federated", choices=["federated", "local", "none"])
    p.add_argument("--repeats", type=int, default=3, help="validation splits")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per split")
    args = p.parse_args()
    torch.set_num_threads(1)
    epsilon = args.epsilon or None
    splits = [validation_splits(r) for r in range(args.repeats)]
    scalers = [standardisers(args.standardise, data) for data in splits]
    print(f"DP-SGD FedAvg, epsilon {epsilon or 'none'} at delta {DELTA:g} per hospital; validation accuracy (mean "
          f"over hospitals), mean +- sd over {args.repeats} splits x {args.seeds} seeds", flush=True)  # fmt: skip
    scores = {}
    for schedule, batch, clip, lr in itertools.product(args.schedules, args.batch_sizes, args.clips, args.lrs):
        rounds, epochs = (int(v) for v in schedule.split("x"))
        runs = [
            dp_fedavg(
                data, sc, epsilon=epsilon, lr=lr, batch_size=batch, clip=clip, rounds=rounds, epochs=epochs, seed=seed
            )  # fmt: skip
            for data, sc in zip(splits, scalers, strict=True)
            for seed in range(args.seeds)
        ]
        key = f"{schedule} batch {batch} clip {clip:g} lr {lr:g}"
        scores[key] = statistics.mean(runs)
        print(f"{key:40s} {scores[key]:.3f} +- {statistics.stdev(runs) if len(runs) > 1 else 0.0:.3f}", flush=True)
    best = max(scores, key=scores.get)
    print(f"best: {best} (validation {scores[best]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
