"""Heart-disease classification on the four UCI hospitals (FLamby Fed-Heart-Disease): the same task interface
as seg2d, so the executor, the simulator, the baselines and the report run it unchanged.

Model and training follow FLamby's benchmark: logistic regression on 13 features, binary cross-entropy,
Adam (lr 0.001 there), batch size 4; the metric is accuracy on each hospital's test split.

Features are standardised (z-scores) before training and evaluation, by the job option `standardise`:
- `federated` (default): with the global mean and standard deviation of every site's training rows, which
  FLARE's federated statistics compute from each site's count, sum and sum of squared deviations
  (data/heart_stats.py); no row leaves a site, and every site applies the same transform;
- `local`: with the site's own training rows (FLamby's per-center normalisation);
- `none`: raw features.
The statistics cover training rows only (as FLamby); test rows get the same transform. Rows with a missing
value were dropped before the split (data/heart.py), so they count nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from consortium.data.heart import FEATURES, load_center
from consortium.tasks.common import TrainResult, train_loop

METRIC_NAME = "accuracy"


@dataclass(frozen=True)
class Standardiser:
    """z = (x - mean) / std per feature; a feature constant in the training rows (std 0) is only centred."""

    mean: np.ndarray
    std: np.ndarray
    source: str  # whose rows: "the federated statistics of 4 sites (486 training rows)", "local (199 training rows)"

    @classmethod
    def from_rows(cls, x: np.ndarray, source: str = "local") -> "Standardiser":
        x = np.asarray(x, dtype=np.float64)
        return cls(x.mean(axis=0), x.std(axis=0, ddof=1), f"{source} ({len(x)} training rows)")

    @classmethod
    def from_meta(cls, meta: Mapping) -> "Standardiser":
        """From the global statistics the server sends with the model (`to_meta`); refuses other features."""
        if list(meta.get("features") or []) != FEATURES:
            raise ValueError(f"feature statistics are for {meta.get('features')}, this task has {FEATURES}")
        mean, std = (np.asarray(meta[k], dtype=np.float64) for k in ("mean", "std"))
        if mean.shape != (len(FEATURES),) or std.shape != mean.shape or not np.isfinite([mean, std]).all():
            raise ValueError(f"feature statistics need a finite mean and std per feature; got {dict(meta)}")
        return cls(mean, std, str(meta.get("source", "federated")))

    def to_meta(self) -> dict:
        return {"features": FEATURES, "mean": self.mean.tolist(), "std": self.std.tolist(), "source": self.source}

    def apply(self, x: np.ndarray) -> np.ndarray:
        scale = np.where(self.std > 0, self.std, 1.0)
        return ((np.asarray(x, dtype=np.float64) - self.mean) / scale).astype(np.float32)


def build_model() -> torch.nn.Module:
    """Logistic regression: one linear layer (13 -> 1); the sigmoid lives in the loss and in evaluate."""
    return torch.nn.Linear(len(FEATURES), 1)


_LOSS = torch.nn.BCEWithLogitsLoss()


def batch_loss(model: torch.nn.Module, batch, device: str = "cpu") -> torch.Tensor:
    """Binary cross-entropy of one batch of (features, label) rows."""
    x, y = batch
    return _LOSS(model(x.to(device)).squeeze(-1), y.to(device))


sample_loss = batch_loss  # DP-SGD's loss: the batch's BCE is already the mean of each row's own term


def train(model: torch.nn.Module, loader, *, device: str = "cpu", **options) -> TrainResult:
    """`options` (epochs or max_steps, lr, algorithm, should_stop): see tasks.common.train_loop."""
    return train_loop(model, loader, lambda net, batch: batch_loss(net, batch, device), device=device, **options)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, device: str = "cpu") -> float:
    """Accuracy: the share of patients whose predicted probability of disease is on the right side of 0.5."""
    model.to(device).eval()
    correct, count = 0, 0
    for x, y in loader:
        pred = (torch.sigmoid(model(x.to(device)).squeeze(-1)) > 0.5).float()
        correct += int((pred == y.to(device)).sum())
        count += len(y)
    return correct / max(count, 1)


def load_site(cfg):
    """((X_train, y_train), (X_test, y_test), report) of the hospital named by the site config's `data.center`."""
    if not cfg.data.center:
        raise ValueError(
            f"{cfg.source}: field 'data.center': missing; the heart task needs one of cleveland, hungary, "
            "switzerland, va (see site_configs/heart/)"
        )
    return load_center(cfg.data.center, cfg.data.csv)


def make_loaders(cfg, *, batch_size: int = 4, seed: int = 0, num_workers: int = 0, standardise="none"):
    """(train_loader, test_loader, report) of the site's hospital.

    `standardise`: "none", "local" (this site's training rows), or the global statistics (a Standardiser, or
    the mapping the server sends with the model: `Standardiser.to_meta`)."""
    (x_train, y_train), (x_test, y_test), report = load_site(cfg)
    if isinstance(standardise, Mapping):
        standardise = Standardiser.from_meta(standardise)
    elif standardise == "local":
        standardise = Standardiser.from_rows(x_train)
    elif standardise != "none" and not isinstance(standardise, Standardiser):
        raise ValueError(f"standardise must be 'none', 'local' or the global statistics; got {standardise!r}")
    if isinstance(standardise, Standardiser):
        x_train, x_test = standardise.apply(x_train), standardise.apply(x_test)
        report.notes.append(f"features standardised with the mean and std of {standardise.source}")
    generator = torch.Generator().manual_seed(seed)
    train_ds = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    train_ds.one_patient_per_sample = True  # a row is a patient: DP-SGD's unit of privacy is the row
    test_ds = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=generator)
    return train_loader, DataLoader(test_ds, batch_size=64, shuffle=False), report


def baseline_standardise(mode: str, sites: Mapping) -> dict:
    """make_loaders' `standardise` per site for the baselines, which hold every site's data: `federated` is the
    mean/std of all sites' training rows (what the federated statistics compute), `local` and `none` as named."""
    if mode != "federated":
        return {name: mode for name in sites}
    rows = np.concatenate([load_site(cfg)[0][0] for cfg in sites.values()])
    pooled = Standardiser.from_rows(rows, source=f"all {len(sites)} sites")
    return {name: pooled for name in sites}
