"""The floor of bench/round_overhead.py: the same site rounds as the demo job without FLARE, one process per
site (as on a POC consortium), the parent averaging the weights."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path


def _site_worker(site: str, site_configs: Path, spec: dict, conn) -> None:
    """One site's rounds as the executor runs them (evaluate received, train, evaluate), without FLARE."""
    import torch

    # A session of its own, as every FLARE site process has (simulator workers, POC kits): with the kernel's
    # autogroup scheduling each session gets an equal share of a busy machine, so the floor is not starved.
    os.setsid()

    from consortium.config import load_site_config
    from consortium.tasks import get_task, load_numpy_state, round_lr, state_to_numpy

    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    cfg = load_site_config(site, site_configs)
    task = get_task(spec["task"])
    model = task.build_model()
    train, val, _ = task.make_loaders(cfg, batch_size=spec["batch_size"], seed=spec["seed"])
    conn.send("ready")
    while (msg := conn.recv()) is not None:
        number, params = msg
        start = time.perf_counter()
        load_numpy_state(model, params)
        task.evaluate(model, val)
        lr = round_lr(spec["lr"], number, spec["rounds"], spec["lr_schedule"])
        task.train(model, train, epochs=spec["local_epochs"], lr=lr)
        task.evaluate(model, val)
        conn.send((state_to_numpy(model), time.perf_counter() - start))


def floor(job: str, jobs: Path, rounds: int, site_configs: Path) -> dict:
    """Seconds per round (rounds 1..) and the slowest site's task, with a process per site and no FLARE."""
    import numpy as np
    import torch

    from consortium.config import load_site_configs
    from consortium.jobs import load_job_spec
    from consortium.tasks import get_task, state_to_numpy

    spec = load_job_spec(job, jobs)
    settings = {k: getattr(spec, k) for k in ("task", "seed", "batch_size", "lr", "lr_schedule", "local_epochs")}
    settings["rounds"] = rounds
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for site in load_site_configs(site_configs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_site_worker, args=(site, site_configs, settings, child), daemon=True)
        proc.start()
        pipes.append(parent), procs.append(proc)
    try:
        for pipe in pipes:
            assert pipe.recv() == "ready"
        torch.manual_seed(spec.seed)
        params = state_to_numpy(get_task(spec.task).build_model())
        periods, tasks = [], []
        for number in range(rounds):
            start = time.perf_counter()
            for pipe in pipes:
                pipe.send((number, params))
            results = [pipe.recv() for pipe in pipes]
            params = {k: np.mean([r[0][k] for r in results], axis=0).astype(v.dtype) for k, v in params.items()}
            periods.append(time.perf_counter() - start)
            tasks.append(max(r[1] for r in results))
        for pipe in pipes:
            pipe.send(None)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
    return {"round": periods[1:], "task": tasks[1:], "segments": {}}
