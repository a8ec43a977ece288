"""The full-round section of bench/he.py: the demo job in the FLARE simulator, plaintext and encrypted, and
the mean round time of rounds 1.. (round 0 includes data loading)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from consortium.jobs import load_job_spec

ROOT = Path(__file__).resolve().parents[1]


def simulate(job: str, runs: Path, home: Path, rounds: int) -> list[dict]:
    """Run `job` in the FLARE simulator; the per-round records of its metrics.json."""
    cmd = [sys.executable, "-m", "consortium.cli", "--jobs", str(ROOT / "jobs"), "--site-configs"]
    cmd += [str(ROOT / "site_configs"), "--runs", str(runs), "simulate", job, "--rounds", str(rounds)]
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads((runs / job / "metrics.json").read_text())["rounds"]


def round_stats(records: list[dict]) -> dict:
    """Means over rounds 1.. (round 0 includes data loading): round, slowest site's task and training."""
    later = records[1:]
    task = [max(s["task_seconds"] for s in r["sites"].values()) for r in later]
    train = [max(s["train_seconds"] for s in r["sites"].values()) for r in later]
    return {
        "all": [r["seconds"] for r in records],
        "round": float(np.mean([r["seconds"] for r in later])),
        "task": float(np.mean(task)),
        "train": float(np.mean(train)),
    }


def full_rounds(plain_job: str, he_job: str, rounds: int, tmp: Path) -> float:
    """Print the mean round time (rounds 1..) of the plaintext and the encrypted job; return HE / plain."""
    for job, he in ((plain_job, False), (he_job, True)):
        if load_job_spec(job, ROOT / "jobs").he != he:
            raise SystemExit(f"job {job} has he: {not he}; pass --plain-job / --he-job")
    print(f"\nfull round (simulator, {rounds} rounds, 3 sites, demo UNet; means of rounds 1..{rounds - 1})")
    print(f"  {'job':14s} {'round s':>8s} {'slowest task':>12s} {'its training':>12s} {'outside tasks':>13s}  rounds")
    stats = {}
    for job in (plain_job, he_job):
        st = stats[job] = round_stats(simulate(job, tmp / "runs", tmp / "home", rounds))
        print(
            f"  {job:14s} {st['round']:8.2f} {st['task']:12.2f} {st['train']:12.2f} {st['round'] - st['task']:13.2f}  "
            + ", ".join(f"{s:.2f}" for s in st["all"])
        )
    ratio = stats[he_job]["round"] / stats[plain_job]["round"]
    print(f"  encrypted / plaintext round time = {ratio:.2f}x  (outside tasks: filters, transfer, aggregation)")
    return ratio
