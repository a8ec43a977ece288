"""Non-federated references with the same task functions and job settings: each site alone, and pooled data."""

from __future__ import annotations

import time

import torch
from torch.utils.data import ConcatDataset, DataLoader

from consortium.config import SiteConfig
from consortium.jobs import JobSpec
from consortium.tasks import get_task, round_lr


def _epochs(spec: JobSpec) -> int:
    return spec.rounds * spec.local_epochs  # same number of passes over local data as the federated job


def _budget(spec: JobSpec, loader, sites: int) -> dict:
    """One round's training: local_epochs passes, or with local_steps the steps one site takes per round
    (pooled: all sites' steps together, the same total compute as the federated round)."""
    if spec.local_steps is None:
        return {"epochs": spec.local_epochs}
    steps = spec.local_steps * sites
    return {"epochs": -(-steps // max(len(loader), 1)), "max_steps": steps}


def run_baselines(
    spec: JobSpec, sites: dict[str, SiteConfig], *, kind: str, log=print, test_loaders: dict | None = None
) -> dict:
    """Train `local` (one model per site) or `pooled` (one model on all sites' data); Dice on every site's
    validation split, and on `test_loaders` ({name: loader} of held-out data) if given."""
    task = get_task(spec.task)
    torch.set_num_threads(1)
    # tabular tasks: the job's feature standardisation (federated: all sites' training rows, which baselines hold)
    standardise = task.baseline_standardise(spec.standardise, sites) if spec.standardise not in (None, "none") else {}
    loaders = {}
    for name, cfg in sites.items():
        options = {"standardise": standardise[name]} if standardise else {}
        loaders[name] = task.make_loaders(cfg, batch_size=spec.batch_size, seed=spec.seed, **options)
    if kind == "local":
        trainsets = {name: loaders[name][0] for name in sites}
    elif kind == "pooled":
        pooled = ConcatDataset([loaders[name][0].dataset for name in sites])
        generator = torch.Generator().manual_seed(spec.seed)
        trainsets = {"pooled": DataLoader(pooled, batch_size=spec.batch_size, shuffle=True, generator=generator)}
    else:
        raise ValueError(f"unknown baseline {kind!r}; use 'local' or 'pooled'")
    results = {}
    for trained_on, loader in trainsets.items():
        torch.manual_seed(spec.seed)
        model = task.build_model()
        start, steps = time.perf_counter(), 0
        for r in range(spec.rounds):  # same schedule as the job: optimizer reset every "round"
            lr = round_lr(spec.lr, r, spec.rounds, spec.lr_schedule)
            steps += task.train(
                model, loader, lr=lr, **_budget(spec, loader, len(sites) if kind == "pooled" else 1)
            ).steps
        scores = {name: task.evaluate(model, loaders[name][1]) for name in sites}
        results[trained_on] = {"scores": scores, "steps": steps, "seconds": time.perf_counter() - start}
        if test_loaders:
            results[trained_on]["test_scores"] = {n: task.evaluate(model, ld) for n, ld in test_loaders.items()}
        log(f"[baseline] trained on {trained_on}: " + ", ".join(f"{s} {d:.3f}" for s, d in scores.items()))
    return {"kind": kind, "job": spec.name, "epochs": _epochs(spec), "results": results}
