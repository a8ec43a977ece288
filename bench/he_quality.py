"""Benchmark: does the quantised HE packing keep the demo job's final Dice? ckks packing vs quantised, per seed.

Usage: nice -n 5 python bench/he_quality.py [--seeds 3] [--rounds 30] [--bits 8 6] [--test-patients 20]
                                            [--runs runs/bench_he_quality] [--no-run]
Every run is the demo job in the FLARE simulator (3 hospitals, real TenSEAL), one at a time:
  ckks           jobs/fedavg as it is (the current packing: one float per CKKS slot)
  quantised B    jobs/fedavg_quantised with `he.bits` set to B (its other he settings unchanged)
each a job of its own in a temporary copy of jobs/ (`base:` the job, plus the one setting), with the steps that
do not change the final global model left out (cross-site evaluation, the membership audit, training alone,
fine-tuning) and round_timeout 600, so that a slow round on a shared machine does not drop a site and turn
a packing comparison into a fault test (rounds that still went on without a site are counted in the table).
Per run: MB per site and round = the mean size of the train results the server received, from the server's
audit trail (the run's workspace/server/consortium_trail/exchanges.jsonl, bytes of the serialized payload as
FLARE hands it over), and its ratio to the update's float32 bytes (4 x the global model's values); final
validation Dice = the global model on every site's validation split at the end of the job (metrics.json,
mean over the 3 sites); test Dice = the saved global model on a held-out cohort of --test-patients new
patients per hospital (bench/evaluation.py's generator, seed 7919, never trained on), mean over sites.
The table gives mean +- sd over the seeds and every seed's values. Each finished run is appended to
RUNS/results.jsonl with the settings it ran with; a rerun runs only the cells not there yet (delete the file
to start again) and `--no-run` prints the table of what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluation import test_cohorts  # noqa: E402  (the same held-out cohort as bench/evaluation.py)

from consortium import constants as C  # noqa: E402
from consortium.audit_trail import chain  # noqa: E402
from consortium.config import load_site_configs  # noqa: E402
from consortium.jobs import load_job_spec  # noqa: E402
from consortium.tasks import get_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CKKS, QUANTISED = "fedavg", "fedavg_quantised"
# do not change the final global model; round_timeout: see the docstring
FAST = {"cross_site": False, "audit": False, "train_alone": False, "finetune_epochs": 0, "round_timeout": 600}
IGNORED = ("name", "description", "purpose", "agreement")  # spec fields that do not change the trained model


def variants(jobs: Path, bits: list[int]) -> dict[str, str]:
    """label -> job name in a copy of jobs/ at `jobs`: the ckks job and the quantised job at each bit width."""
    shutil.copytree(ROOT / "jobs", jobs)
    he = yaml.safe_load((ROOT / "jobs" / QUANTISED / "job.yaml").read_text()).get("he")
    if not isinstance(he, dict) or he.get("pack") != "quantised":
        raise SystemExit(f"{ROOT / 'jobs' / QUANTISED / 'job.yaml'}: expected `he: {{pack: quantised, ...}}`, "
                         f"found he: {he!r}; point QUANTISED in bench/he_quality.py at the quantised job")  # fmt: skip
    bodies = {"ckks": {"base": CKKS, **FAST}}
    bodies |= {f"quantised {b}": {"base": QUANTISED, "he": {**he, "bits": b}, **FAST} for b in bits}
    names = {}
    for label, body in bodies.items():
        name = "bench_he_" + label.replace(" ", "")
        (jobs / name).mkdir()
        (jobs / name / "job.yaml").write_text(yaml.safe_dump(body))
        names[label] = name
    return names


def settings(jobs: Path, name: str, rounds: int, test_patients: int) -> dict:
    """What a cell's result depends on besides its seed: the variant's resolved job (not its name or
    governance), the rounds and the test cohort's size."""
    spec = {k: v for k, v in load_job_spec(name, jobs).to_dict().items() if k not in IGNORED}
    return {"spec": spec, "rounds": rounds, "test_patients": test_patients}


def upload_bytes(workspace: Path) -> list[int]:
    """Sizes of every train result the server received, from its audit trail in the run's workspace."""
    trail = workspace / "server" / C.TRAIL_FOLDER / C.TRAIL_FILE
    try:
        records = chain.read(trail)  # verified, as `consortium audit verify` reads it
    except chain.TrailError as exc:
        raise SystemExit(f"{exc}: the run's bytes cannot be read") from None
    sizes = [int(r["bytes"]) for r in records
             if r.get("task") == C.TASK_TRAIN and r.get("direction") == "received" and r.get("rc") == "OK"]  # fmt: skip
    if not sizes:
        raise SystemExit(f"{trail}: no train result received from any site")
    return sizes


def run(cli: list[str], runs: Path, job: str, seed: int, rounds: int, tests: dict, task) -> dict:
    """One simulator run and its numbers."""
    start = time.perf_counter()
    cmd = [*cli, "--runs", str(runs), "simulate", job, "--rounds", str(rounds), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job} seed {seed} failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    out = runs / job
    history = json.loads((out / C.METRICS_FILE).read_text())
    if len(history["rounds"]) != rounds:
        raise RuntimeError(f"{out / C.METRICS_FILE}: {len(history['rounds'])} rounds recorded, {rounds} asked")
    state = torch.load(out / C.GLOBAL_MODEL_FILE, map_location="cpu", weights_only=True)
    model = task.build_model()
    model.load_state_dict(state)
    test = {name: task.evaluate(model, loader) for name, loader in tests.items()}
    val = {s: m["val_score"] for s, m in history["final"].items()}
    sizes = upload_bytes(out / "workspace")
    short = [r["round"] for r in history["rounds"] if len(r.get("contributed", [])) < len(val)]
    return {"seed": seed, "val": val, "test": test, "val_mean": statistics.mean(val.values()),
            "test_mean": statistics.mean(test.values()), "upload_bytes_mean": statistics.mean(sizes),
            "upload_bytes_range": [min(sizes), max(sizes)], "uploads": len(sizes),
            "fp32_bytes": 4 * sum(t.numel() for t in state.values()), "rounds_short_of_a_site": short,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def cell(values: list[float]) -> str:
    """mean +- sd over the seeds (one seed: its value, no sd)."""
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "not run"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6], help="bit widths of the quantised rows")
    p.add_argument("--test-patients", type=int, default=20, help="held-out patients per hospital")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench_he_quality"))
    p.add_argument("--no-run", dest="run", action="store_false",
                   help="run nothing: print the table of the runs already in RUNS/results.jsonl")  # fmt: skip
    args = p.parse_args()
    if args.seeds < 1 or args.rounds < 1 or args.test_patients < 1:
        p.error("--seeds, --rounds and --test-patients must be >= 1")
    runs_root = Path(args.runs)
    runs_root.mkdir(parents=True, exist_ok=True)
    log = runs_root / "results.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    site_dir = ROOT / "site_configs"
    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_dir)]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="consortium-bench-he-quality-") as tmp:
        jobs = Path(tmp) / "jobs"
        names = variants(jobs, args.bits)
        keys = {label: settings(jobs, name, args.rounds, args.test_patients) for label, name in names.items()}
        done = {(r["label"], r["seed"]): r for r in rows if r.get("settings") == keys.get(r.get("label"))}
        todo = [(seed, label) for seed in range(args.seeds) for label in names]  # seed-major: whole seeds first
        missing = [(seed, label) for seed, label in todo if (label, seed) not in done]
        if args.run and missing:
            subprocess.run([*cli, "data", "synth"], check=True, stdout=subprocess.DEVNULL)
            task = get_task(keys["ckks"]["spec"]["task"])
            tests = test_cohorts(load_site_configs(site_dir), args.test_patients, runs_root / "test_cohort")
            for seed, label in missing:
                row = run([*cli, "--jobs", str(jobs)], runs_root / f"seed{seed}", names[label], seed, args.rounds,
                          tests, task)  # fmt: skip
                row |= {"label": label, "settings": keys[label], "load": os.getloadavg()[0]}
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done[(label, seed)] = row
                print(f"seed {seed} {label}: val {row['val_mean']:.3f}, test {row['test_mean']:.3f}, "
                      f"{row['upload_bytes_mean'] / 1e6:.2f} MB ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
        for seed, label in todo:
            if (label, seed) in done:
                results.setdefault(label, []).append(done[(label, seed)])
    when = "started" if args.run else "table printed"
    print(f"\npython bench/he_quality.py --seeds {args.seeds} --rounds {args.rounds} --bits "
          f"{' '.join(map(str, args.bits))} --test-patients {args.test_patients} ({when} {started}, load "
          f"{os.getloadavg()[0]:.1f}); demo job, 3 hospitals, FLARE simulator; Dice: mean over the sites, "
          "mean +- sd over the seeds")  # fmt: skip
    print(
        "| packing | bits | MB per site and round | x fp32 | val Dice | test Dice | per seed (val / test) "
        "| rounds without a site |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in names:
        got = sorted(results.get(label, []), key=lambda r: r["seed"])
        bits = keys[label]["spec"]["he"].get("bits", "-") if label != "ckks" else "-"
        if not got:
            print(f"| {label.split()[0]} | {bits} | not run | | | | | |")
            continue
        mb = statistics.mean(r["upload_bytes_mean"] for r in got) / 1e6
        ratio = statistics.mean(r["upload_bytes_mean"] / r["fp32_bytes"] for r in got)
        seeds = ", ".join(f"{r['seed']}: {r['val_mean']:.3f} / {r['test_mean']:.3f}" for r in got)
        short = sum(len(r["rounds_short_of_a_site"]) for r in got)
        n = f" ({len(got)} of {args.seeds} seeds)" if len(got) < args.seeds else ""
        print(
            f"| {label.split()[0]} | {bits} | {mb:.2f} | {ratio:.2f} | {cell([r['val_mean'] for r in got])}{n} | "
            f"{cell([r['test_mean'] for r in got])} | {seeds} | {short} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
