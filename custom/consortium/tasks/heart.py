"""Heart-disease classification on the four UCI hospitals (FLamby Fed-Heart-Disease): the same task interface
as seg2d, so the executor, the simulator, the baselines and the report run it unchanged.

Model and training follow FLamby's benchmark: logistic regression on 13 features, binary cross-entropy,
Adam (lr 0.001 there), batch size 4; the metric is accuracy on each hospital's test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from consortium.data.heart import FEATURES, load_center

METRIC_NAME = "accuracy"


def build_model() -> torch.nn.Module:
    """Logistic regression: one linear layer (13 -> 1); the sigmoid lives in the loss and in evaluate."""
    return torch.nn.Linear(len(FEATURES), 1)


@dataclass
class TrainResult:
    steps: int
    loss: float
    seconds: float


def train(
    model: torch.nn.Module,
    loader,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    max_steps: int | None = None,
    device: str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    optimizer: torch.optim.Optimizer | None = None,
    algorithm=None,
    per_sample_loss: bool = False,
) -> TrainResult:
    """`epochs` passes (or `max_steps` batches, cycling the data); `algorithm`: see consortium.algorithms.

    The loss is a mean of per-sample terms either way, so `per_sample_loss` (DP-SGD) changes nothing here."""
    model.to(device).train()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps, total, start = 0, 0.0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            if should_stop() or (max_steps is not None and steps >= max_steps):
                break
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x).squeeze(-1), y)
            extra = algorithm.loss_term(model) if algorithm is not None else None
            (loss if extra is None else loss + extra).backward()
            optimizer.step()
            if algorithm is not None:
                algorithm.after_step(model, lr)
            steps += 1
            total += float(loss.detach())
    return TrainResult(steps=steps, loss=total / max(steps, 1), seconds=time.perf_counter() - start)


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


def make_loaders(cfg, *, batch_size: int = 4, seed: int = 0, num_workers: int = 0):
    """(train_loader, test_loader, report) of the hospital named by the site config's `data.center`."""
    if not cfg.data.center:
        raise ValueError(
            f"{cfg.source}: field 'data.center': missing; the heart task needs one of cleveland, hungary, "
            "switzerland, va (see site_configs/heart/)"
        )
    (x_train, y_train), (x_test, y_test), report = load_center(cfg.data.center, cfg.data.csv)
    generator = torch.Generator().manual_seed(seed)
    train_ds = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    test_ds = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=generator)
    return train_loader, DataLoader(test_ds, batch_size=64, shuffle=False), report
