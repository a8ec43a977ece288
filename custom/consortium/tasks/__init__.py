"""Interchangeable task modules: each exports the names in REQUIRED (FLamby's convention), so switching the
task is one job setting. `sample_loss` (DP-SGD's per-sample loss) is needed only by jobs with dp_sgd."""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np

TASKS = {
    "seg2d": "consortium.tasks.seg2d",
    "seg2d_5m": "consortium.tasks.seg2d_5m",  # the same task with a 4.9 M-parameter UNet (benchmarks)
    "heart": "consortium.tasks.heart",
}
# METRIC_NAME names what evaluate() returns (Dice, accuracy) in progress lines, reports and the run record
REQUIRED = ("METRIC_NAME", "build_model", "make_loaders", "batch_loss", "train", "evaluate")
# Tabular tasks: values of the job option `standardise` (the first is the default); other tasks have only "none".
STANDARDISE = {"heart": ("federated", "local", "none")}


def get_task(name: str) -> ModuleType:
    """Import the task module registered under `name`, checking it exports the task interface."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    module = importlib.import_module(TASKS[name])
    missing = [fn for fn in REQUIRED if not hasattr(module, fn)]
    if missing:
        raise TypeError(f"task module {module.__name__} (TASKS[{name!r}]) lacks {', '.join(missing)}; a task "
                        f"exports {', '.join(REQUIRED)}")
    return module


LR_SCHEDULES = ("constant", "cosine")


def round_lr(base_lr: float, current_round: int, total_rounds: int, schedule: str = "cosine") -> float:
    """The learning rate for one round: constant, or cosine-decayed over the job's rounds.

    Local optimizers are reset every round, so the schedule lives at round granularity; the
    baselines use the same function with the same rounds.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant" or total_rounds <= 1:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * current_round / total_rounds))


def state_to_numpy(model) -> dict[str, np.ndarray]:
    """A torch module's state as numpy arrays: the form weights travel in."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model, params: dict) -> None:
    import torch

    model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in params.items()}, strict=True)
