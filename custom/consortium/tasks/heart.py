"""Heart-disease classification on the four UCI hospitals (FLamby Fed-Heart-Disease): the same task interface
as seg2d, so the executor, the simulator, the baselines and the report run it unchanged.

Model and training follow FLamby's benchmark: logistic regression on 13 features, binary cross-entropy,
Adam (lr 0.001 there), batch size 4; the metric is accuracy on each hospital's test split.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from consortium.data.heart import FEATURES, load_center
from consortium.tasks.common import TrainResult, train_loop

METRIC_NAME = "accuracy"


def build_model() -> torch.nn.Module:
    """Logistic regression: one linear layer (13 -> 1); the sigmoid lives in the loss and in evaluate."""
    return torch.nn.Linear(len(FEATURES), 1)


def train(
    model: torch.nn.Module, loader, *, device: str = "cpu", per_sample_loss: bool = False, **options
) -> TrainResult:
    """`options` (epochs or max_steps, lr, optimizer, algorithm, should_stop): see tasks.common.train_loop.

    The loss is a mean of per-sample terms either way, so `per_sample_loss` (DP-SGD) changes nothing here."""
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def batch_loss(net, batch):
        x, y = batch
        return loss_fn(net(x.to(device)).squeeze(-1), y.to(device))

    return train_loop(model, loader, batch_loss, device=device, **options)


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
