"""Table: seconds per round of the same training without FLARE (the floor), in the simulator and on a POC
consortium, plaintext and HE, for the demo UNet (0.40 M) and a 4.9 M-parameter UNet (task seg2d_5m).

    python bench/round_overhead.py [--rounds 6] [--rounds-5m 4] [--models demo,5m] [--modes floor,simulator,poc]
                                   [--repeat 1] [--keep DIR] [--jobs jobs] [--site-configs site_configs]
                                   [--consortium provisioning/consortium.yaml]

The three demo hospitals (site_configs/, data from `consortium data synth`), the demo job's settings (2 local
epochs, lr 3e-3 cosine, batch 8, uniform weights), one torch thread per site, 3 sites on the machine's cores.
Jobs: jobs/fedavg (HE) and jobs/fedavg_plain with `cross_site`, `train_alone`, `finetune_epochs` and `audit`
off, so each run is rounds and one final validation.

  floor      the same site rounds without FLARE: one process per site (as POC), each evaluates the model it
             received, trains, evaluates again, returns its weights through a pipe; the parent averages
  simulator  `consortium simulate` of the job (FLARE simulator, one thread per site)
  poc        `consortium submit` of the job to a local POC consortium (server + 3 hospital kits, mTLS on
             loopback, own ports and workspace)

Seconds per round: from the server's "Sending task train" of a round to its next task (rounds 1..: round 0
loads the data), median over rounds and over --repeat runs. The breakdown follows the round's slowest site
(its result came last) through FLARE's own log lines: dispatch (server schedules the task -> the site has it:
polling, task-data transfer), task-data filters (HE decryption), the site's task (evaluate, train, evaluate),
after the task (result filters: HE encryption, audit trail, the result's task check), upload, the server's
accept (aggregation), closing the round, saving the global model, and checkpoint + run record until the next
task. Record `uptime` beside the table: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from round_floor import floor
from round_logs import SEGMENTS, from_logs

ROOT = Path(__file__).resolve().parents[1]

MODELS = {"demo": ("demo UNet", "seg2d"), "5m": ("UNet 56..448", "seg2d_5m")}
# round_timeout: a deadline only; on a busy machine a round can take minutes, and a dropped site is not a timing
EXTRAS = "cross_site: false\ntrain_alone: false\nfinetune_epochs: 0\naudit: false\nround_timeout: 3600\n"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_jobs(folder: Path, source: Path) -> None:
    """bench jobs `<model>_<plain|he>`: the demo job (jobs/fedavg, jobs/fedavg_plain) with only rounds left."""
    for name in ("fedavg", "fedavg_plain"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "job.yaml").write_text((source / name / "job.yaml").read_text())
    for model, (_, task) in MODELS.items():
        for kind, base in (("plain", "fedavg_plain"), ("he", "fedavg")):
            (folder / f"{model}_{kind}").mkdir(exist_ok=True)
            (folder / f"{model}_{kind}" / "job.yaml").write_text(f"base: {base}\ntask: {task}\n{EXTRAS}")


# -- FLARE: the simulator and a POC consortium ----------------------------------------------------------


def own_ports(source: Path, out: Path) -> Path:
    """The consortium definition `source` on free loopback ports (so no other consortium on this machine clashes)."""
    from consortium.deploy.poc import free_port

    text = source.read_text()
    for key in ("fed_learn_port", "admin_port"):
        text, found = re.subn(rf"({key}:\s*)\d+", rf"\g<1>{free_port()}", text)
        if not found:
            raise SystemExit(f"{source}: no {key} to replace")
    out.write_text(text)
    return out


class Cli:
    """`consortium ...` with the bench's jobs, its own workspace, runs folder, HOME and consortium ports."""

    def __init__(self, tmp: Path, jobs: Path, site_configs: Path, consortium: Path):
        (tmp / "home").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(tmp / "home"),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
        definition = own_ports(consortium, tmp / "consortium.yaml")
        self.base = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--jobs", str(jobs),
                     "--consortium", str(definition), "--workspace", str(tmp / "ws"),
                     "--runs", str(tmp / "runs")]  # fmt: skip
        self.tmp = tmp

    def __call__(self, *args, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + list(args), env=self.env, capture_output=True, text=True, timeout=3600)
        if check and proc.returncode != 0:
            raise RuntimeError(f"consortium {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc


def simulator(cli: Cli, job: str, rounds: int) -> dict:
    cli("simulate", job, "--rounds", str(rounds))
    workspace = cli.tmp / "runs" / job / "workspace"
    sites = {p.name: p / "log.txt" for p in workspace.iterdir() if p.name.startswith("hospital-")}
    return from_logs(workspace / "server" / "log.txt", sites, cli.tmp / "runs" / job / "metrics.json")


def poc(cli: Cli, job: str, rounds: int) -> dict:
    out = cli("submit", job, "--rounds", str(rounds)).stdout
    job_id = out.split(" as ")[1].split()[0].rstrip(",")
    sites = {p.parent.parent.name: p for p in (cli.tmp / "ws").rglob(f"{job_id}/log.txt")}  # each kit's job log
    sites = {name: path for name, path in sites.items() if name.startswith("hospital-")}
    server = next((cli.tmp / "runs" / job / "download").rglob("log.txt"))  # the server's, in the job's download
    return from_logs(server, sites, cli.tmp / "runs" / job / "metrics.json")


# -- the table ---------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_all(args, tmp: Path) -> dict:
    jobs = tmp / "jobs"
    write_jobs(jobs, args.jobs)
    results: dict = {}

    def record(key, value):
        results.setdefault(key, []).append(value)
        print(f"  {key}: {median(value['round']):.2f} s/round (slowest task {median(value['task']):.2f} s); "
              f"{uptime()}", flush=True)  # fmt: skip

    for _ in range(args.repeat):
        for model in args.models:
            rounds = args.rounds if model == "demo" else args.rounds_5m
            if "floor" in args.modes:
                record((model, "floor", "plain"), floor(f"{model}_plain", jobs, rounds, args.site_configs))
            if "simulator" in args.modes:
                cli = Cli(tmp / "sim", jobs, args.site_configs, args.consortium)
                for kind in ("plain", "he"):
                    record((model, "simulator", kind), simulator(cli, f"{model}_{kind}", rounds))
        if "poc" in args.modes:
            cli = Cli(tmp / "poc", jobs, args.site_configs, args.consortium)
            cli("poc", "up")
            try:
                for model in args.models:
                    rounds = args.rounds if model == "demo" else args.rounds_5m
                    for kind in ("plain", "he"):
                        record((model, "poc", kind), poc(cli, f"{model}_{kind}", rounds))
            finally:
                cli("poc", "down", check=False)
    return results


def merged(runs: list[dict]) -> dict:
    """Medians over the rounds of every repeat."""
    out = {"round": median([x for r in runs for x in r["round"]]), "task": median([x for r in runs for x in r["task"]])}
    out["segments"] = {k: median([x for r in runs for x in r["segments"].get(k, [])]) for k in SEGMENTS}
    out["n"] = sum(len(r["round"]) for r in runs)
    return out


def _sec(cell: dict | None) -> str:
    return f"{cell['round']:.2f}" if cell else "-"


def _ratio(a: dict | None, b: dict | None) -> str:
    return f"{a['round'] / b['round']:.2f}x" if a and b else "-"


def print_tables(results: dict, args) -> None:
    table = {key: merged(runs) for key, runs in results.items()}
    print(f"\nseconds per round (median over rounds 1.. of {args.repeat} run(s); {uptime()})")
    print("| model | floor (no FLARE) | simulator plain | simulator HE | POC plain | POC HE | POC plain / floor "
          "| HE / plain simulator | HE / plain POC |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        cell = {f"{mode} {kind}": table.get((model, mode, kind)) for mode in ("floor", "simulator", "poc")
                for kind in ("plain", "he")}  # fmt: skip
        secs = [_sec(cell[k]) for k in ("floor plain", "simulator plain", "simulator he", "poc plain", "poc he")]
        ratios = [_ratio(cell[a], cell[b]) for a, b in (("poc plain", "floor plain"),
                  ("simulator he", "simulator plain"), ("poc he", "poc plain"))]  # fmt: skip
        print(f"| {MODELS[model][0]} | " + " | ".join(secs + ratios) + " |")
    print("\nwhere a round goes (the slowest site's path, median seconds)")
    print("| run | rounds | period | slowest task | " + " | ".join(SEGMENTS) + " |")
    print("|---|---|---|---|" + "---|" * len(SEGMENTS))
    for (model, mode, kind), row in table.items():
        if mode == "floor":
            continue
        cells = " | ".join(f"{row['segments'][k]:.2f}" for k in SEGMENTS)
        print(f"| {MODELS[model][0]} {mode} {kind} | {row['n']} | {row['round']:.2f} | {row['task']:.2f} | {cells} |")
    print("\ntargets")
    for model in args.models:
        checks = [("POC plain <= 1.10x floor", ("poc", "plain"), ("floor", "plain"), 1.10),
                  ("simulator HE <= 1.15x plain", ("simulator", "he"), ("simulator", "plain"), 1.15),
                  ("POC HE <= 1.15x plain", ("poc", "he"), ("poc", "plain"), 1.15)]  # fmt: skip
        for label, a, b, limit in checks:
            ta, tb = table.get((model, *a)), table.get((model, *b))
            if ta and tb:
                value = ta["round"] / tb["round"]
                print(f"  {MODELS[model][0]:14s} {label:30s} {value:6.2f}x   {'met' if value <= limit else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6, help="rounds of the demo UNet runs (round 0 is not counted)")
    p.add_argument("--rounds-5m", type=int, default=4, help="rounds of the 4.9 M-parameter UNet runs")
    p.add_argument("--models", default="demo,5m", help="comma-separated: demo, 5m")
    p.add_argument("--modes", default="floor,simulator,poc", help="comma-separated: floor, simulator, poc")
    p.add_argument("--repeat", type=int, default=1, help="runs of everything; medians over all their rounds")
    p.add_argument("--jobs", type=Path, default=ROOT / "jobs", help="folder of the fedavg and fedavg_plain jobs")
    p.add_argument("--site-configs", type=Path, default=ROOT / "site_configs", help="the hospitals (data generated)")
    p.add_argument(
        "--consortium",
        type=Path,
        default=ROOT / "provisioning" / "consortium.yaml",
        help="the consortium definition for POC (its ports are replaced by free ones)",
    )
    p.add_argument("--keep", type=Path, help="keep the runs (logs, metrics.json) here; default: temporary")
    p.add_argument("--json", type=Path, help="also write the raw per-round numbers here")
    args = p.parse_args()
    args.models, args.modes = args.models.split(","), args.modes.split(",")
    print(f"start: {uptime()}", flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run_all(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="round-overhead-") as tmp:  # kits hold secret keys
            results = run_all(args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps({"|".join(k): v for k, v in results.items()}, indent=1))
    print_tables(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
