"""Interchangeable task modules: each exports build_model, make_loaders, train and evaluate."""

from __future__ import annotations

import importlib
from types import ModuleType

TASKS = {"seg2d": "consortium.tasks.seg2d"}
REQUIRED = ("build_model", "make_loaders", "train", "evaluate")


def get_task(name: str) -> ModuleType:
    """Import the task module registered under `name`, checking it exports the task interface."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    module = importlib.import_module(TASKS[name])
    missing = [fn for fn in REQUIRED if not hasattr(module, fn)]
    if missing:
        raise TypeError(f"task module {module.__name__} lacks {', '.join(missing)}")
    return module
