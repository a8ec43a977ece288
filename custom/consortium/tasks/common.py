"""The local training loop every task shares; a task supplies only the loss of one batch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class TrainResult:
    steps: int
    loss: float
    seconds: float


def train_loop(
    model: torch.nn.Module,
    loader,
    batch_loss: Callable[[torch.nn.Module, object], torch.Tensor],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    max_steps: int | None = None,
    device: str = "cpu",
    should_stop: Callable[[], bool] = lambda: False,
    optimizer: torch.optim.Optimizer | None = None,
    algorithm=None,
) -> TrainResult:
    """`epochs` passes (or `max_steps` batches) of Adam (or the given optimizer, e.g. DP-SGD's).

    `algorithm` (FedProx, SCAFFOLD; see consortium.algorithms) adds `loss_term(model)` to the loss and
    runs `after_step(model, lr)` after every optimizer step; None is plain local training (FedAvg).
    The reported loss is the task's own loss, without the algorithm's term."""
    model.to(device).train()
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    steps, total, start = 0, 0.0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            if should_stop() or (max_steps is not None and steps >= max_steps):
                break
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, batch)
            extra = algorithm.loss_term(model) if algorithm is not None else None
            (loss if extra is None else loss + extra).backward()
            optimizer.step()
            if algorithm is not None:
                algorithm.after_step(model, lr)
            steps += 1
            total += float(loss.detach())
    return TrainResult(steps=steps, loss=total / max(steps, 1), seconds=time.perf_counter() - start)
