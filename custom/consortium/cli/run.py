"""`consortium simulate | baseline | demo`: a job in the FLARE simulator, without federation, or on a local POC."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from consortium import constants as C
from consortium.cli.common import BROKEN_PIPE, charter, gate, job_spec, run_worker, sites
from consortium.stats.features import PREFLIGHT_JOB as PREFLIGHT


def cmd_simulate(args) -> int:
    from consortium import runrecord as R
    from consortium.config import require_data_dirs
    from consortium.governance.props import job_props
    from consortium.governance.record import simulated
    from consortium.jobs import export_job

    if args.job == PREFLIGHT:  # FLARE's federated statistics, not a training job
        from consortium.cli.preflight import cmd_simulate_preflight

        return cmd_simulate_preflight(args)
    spec = job_spec(args).with_overrides(
        Path(args.jobs) / args.job, rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed, lr=args.lr,
        standardise=args.standardise, round_timeout=args.round_timeout, pretrained=args.pretrained)  # fmt: skip
    chosen = sites(args)
    require_data_dirs(chosen)
    if len(chosen) < spec.min_clients:
        spec = replace(spec, min_clients=len(chosen))
    out = Path(args.runs) / args.job
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    props = job_props(spec.purpose, spec.agreement, charter(args))
    chosen, decisions = gate(args, chosen, props, min_clients=spec.min_clients,
                             export=lambda: export_job(spec, out / "job", charter=charter(args)))  # fmt: skip
    print(f"simulating job '{spec.name}': {spec.rounds} rounds x {spec.round_budget} at {', '.join(chosen)}")
    start = time.perf_counter()
    worker = [sys.executable, "-m", "consortium.cli", "_simulate-worker", json.dumps(spec.to_dict()), ",".join(chosen),
              str(Path(args.site_configs).resolve()), str(workspace.resolve())]  # fmt: skip
    code = run_worker(worker, out / "simulate.log")
    if code == BROKEN_PIPE:
        return code
    seconds = time.perf_counter() - start
    run_dir = workspace / "server" / "simulate_job"
    if code != 0 or not (run_dir / C.METRICS_FILE).exists():
        print(f"ERROR simulation failed (exit {code}); full log: {out / 'simulate.log'}", file=sys.stderr)
        return 1
    for name in (C.METRICS_FILE, C.GLOBAL_MODEL_FILE, C.CROSS_SITE_FILE):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / name)
    record = R.read(out)  # the decisions the simulated sites took (no kit deployed the job to refuse it)
    record[R.META][R.Meta.GOVERNANCE] = simulated(props, decisions)
    R.write(out, record)
    from consortium.cli.results import finish_run

    key = workspace / "startup" / "client_context.tenseal", "the simulated hospitals' key"
    return finish_run(out, key=lambda: key, headline=f"done in {seconds:.0f} s; ", log=out / "simulate.log",
                      wall_seconds=seconds)  # fmt: skip


def cmd_simulate_worker(args) -> int:
    from consortium.jobs import JobSpec, simulate
    from consortium.runtime import stop_simulator_on_term

    stop_simulator_on_term()
    spec = JobSpec(**json.loads(args.spec))
    result = simulate(
        spec,
        sites=args.sites.split(","),
        site_config_dir=Path(args.site_configs),
        workspace=Path(args.workspace),
    )
    return 0 if result in (None, 0) else 1


def cmd_baseline(args) -> int:
    from consortium.baselines import run_baselines

    spec = job_spec(args).with_overrides(Path(args.jobs) / args.job, rounds=args.rounds)
    result = run_baselines(spec, sites(args), kind=args.kind)
    out = Path(args.runs) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.kind}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0


def step_args(args, *argv: str):
    """`args` completed with the defaults of the command `argv` as its own parser gives them, so that a step the
    demo runs (data synth, poc up, submit) sees every option it knows, never an attribute missing."""
    from consortium.cli import build_parser

    step = build_parser().parse_args(["--site-configs", args.site_configs, *argv])
    for name, value in vars(args).items():
        if name not in ("command", "fn"):
            setattr(step, name, value)
    return step


def cmd_demo(args) -> int:
    """Generate data if missing, bring the consortium up, run the job through the admin API, shut down."""
    from concurrent.futures import ThreadPoolExecutor

    from consortium.cli.data import cmd_data_synth
    from consortium.cli.deploy import cmd_poc_up, poc_paths
    from consortium.cli.submit import cmd_submit, export_for_submit
    from consortium.deploy import poc

    cmd_data_synth(step_args(args, "data", "synth"))
    up, submit = step_args(args, "poc", "up"), step_args(args, "submit", args.job)
    # the job is exported while the consortium starts (its processes wait and import), not after: the same folder
    with ThreadPoolExecutor(max_workers=1) as pool:
        exported = pool.submit(export_for_submit, submit)
        try:
            cmd_poc_up(up)
            return cmd_submit(submit, exported=exported.result())
        except KeyboardInterrupt:
            print("interrupted: shutting the consortium down")
            return 130
        finally:
            poc.down(poc_paths(up))
            print("consortium stopped; no process left running")


def add_simulate(sub) -> None:
    sim = sub.add_parser("simulate", help="run a job in the FLARE simulator, one client per site config")
    sim.add_argument("job")
    sim.add_argument("--rounds", type=int, help="override the job's rounds")
    sim.add_argument("--local-epochs", type=int, help="override the job's local epochs")
    sim.add_argument("--seed", type=int, help="override the job's seed (model initialisation, data order)")
    sim.add_argument("--lr", type=float, help="override the job's learning rate")
    sim.add_argument("--standardise", help="override the job's feature standardisation (federated, local, none)")
    sim.add_argument("--round-timeout", type=int, help="override the job's round_timeout (seconds)")
    sim.add_argument("--pretrained", help="start from this state dict (e.g. runs/public_start/seg2d.pt)")
    sim.add_argument("--sites", help="comma-separated subset of sites")
    sim.set_defaults(fn=cmd_simulate)
    worker = sub.add_parser("_simulate-worker")  # internal: runs the simulator in a child process
    for name in ("spec", "sites", "site_configs", "workspace"):
        worker.add_argument(name)
    worker.set_defaults(fn=cmd_simulate_worker)


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="data + local consortium + FedAvg job via the admin API + shutdown")
    demo.add_argument("--job", default="fedavg")
    demo.add_argument("--timeout", type=float, default=1800)
    demo.set_defaults(fn=cmd_demo)


def add_baseline(sub) -> None:
    base = sub.add_parser("baseline", help="train without federation: each site alone, or pooled data")
    base.add_argument("kind", choices=["local", "pooled"])
    base.add_argument("--job", default="fedavg", help="job whose settings to copy (default fedavg)")
    base.add_argument("--rounds", type=int)
    base.add_argument("--sites", help="comma-separated subset of sites")
    base.set_defaults(fn=cmd_baseline)
