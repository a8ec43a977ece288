"""Benchmark: per-site Dice of the demo job with and without the intensity harmonisation the pre-flight suggests.

Usage: python bench/harmonisation.py [--job fedavg] [--rounds 30] [--seeds 0 1] [--all-sites] [--runs DIR]

1. `consortium simulate preflight` on the demo hospitals (FLARE federated statistics) writes
   runs/.../preflight/harmonisation.json: per site hu_offset / hu_scale and whether it is recommended.
2. The same site configs, once as they are and once with `data.hu_offset` / `data.hu_scale` set at the
   recommended sites (every site with --all-sites), in a temporary folder.
3. `consortium simulate JOB` with each, per seed; the table: final global-model validation Dice per site.
Generates the demo data first if it is missing. Seconds are rough on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def site_configs_with(offsets: dict, out: Path) -> Path:
    """A copy of site_configs/ (demo hospitals) whose data stay in the repository's data/, plus offsets."""
    out.mkdir(parents=True)
    for path in (ROOT / "site_configs").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text()) or {}
        if path.name == "_defaults.yaml":
            raw["data"]["dir"] = str(ROOT / "data" / "{site}")
        elif path.stem in offsets:
            raw.setdefault("data", {}).update(offsets[path.stem])
        (out / path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def simulate(cli: list[str], configs: Path, runs: Path, job: str, rounds: int, seed: int) -> dict:
    cmd = [*cli, "--site-configs", str(configs), "--runs", str(runs), "simulate", job]
    subprocess.run([*cmd, "--rounds", str(rounds), "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
    history = json.loads((runs / job / "metrics.json").read_text())
    return {site: m["val_score"] for site, m in history["final"].items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="fedavg")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--all-sites", action="store_true", help="harmonise every site, not only recommended ones")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_harmonisation"))
    args = parser.parse_args()
    runs = Path(args.runs)
    cli = [sys.executable, "-m", "consortium.cli", "--jobs", str(ROOT / "jobs")]
    subprocess.run([*cli, "--site-configs", str(ROOT / "site_configs"), "data", "synth"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="consortium-harm-"))
    try:
        plain = site_configs_with({}, tmp / "plain")
        start = time.perf_counter()
        subprocess.run([*cli, "--site-configs", str(plain), "--runs", str(runs), "simulate", "preflight"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        suggested = json.loads((runs / "preflight" / "harmonisation.json").read_text())
        chosen = {s: {"hu_offset": round(h["hu_offset"], 2), "hu_scale": round(h["hu_scale"], 4)}
                  for s, h in suggested.items() if args.all_sites or h.get("recommended")}  # fmt: skip
        print(f"pre-flight [{time.perf_counter() - start:.0f} s]: harmonise {chosen or 'no site'}")
        harmonised = site_configs_with(chosen, tmp / "harmonised")
        rows = []
        for seed in args.seeds:
            for name, configs in (("without", plain), ("with", harmonised)):
                start = time.perf_counter()
                scores = simulate(cli, configs, runs / f"{name}_{seed}", args.job, args.rounds, seed)
                rows.append((seed, name, scores, time.perf_counter() - start))
                print(f"  seed {seed} {name:8s} " + ", ".join(f"{s} {v:.3f}" for s, v in sorted(scores.items())),
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sites = sorted(rows[0][2])
    load = os.getloadavg()[0]
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load {load:.1f}: job {args.job}, {args.rounds} "
          f"rounds, seeds {args.seeds}; harmonised: {chosen or 'none'}; final global model, validation Dice")
    print("| seed | harmonisation | " + " | ".join(sites) + " | mean | s |")
    print("|---|---|" + "---|" * (len(sites) + 2))
    for seed, name, scores, seconds in rows:
        cells = [f"{scores[s]:.3f}" for s in sites] + [f"{sum(scores.values()) / len(scores):.3f}", f"{seconds:.0f}"]
        print(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    for name in ("without", "with"):
        chosen_rows = [r[2] for r in rows if r[1] == name]
        means = [sum(r[s] for r in chosen_rows) / len(chosen_rows) for s in sites]
        print(f"| mean | {name} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {sum(means) / len(means):.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
