"""The `consortium` command: hospital data, jobs, simulator, provisioning, local consortium, admin, baselines."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from consortium import constants as C
from consortium.argtypes import positive_int
from consortium.config import ConfigError, load_site_configs, require_data_dirs
from consortium.stats.features import PREFLIGHT_JOB as PREFLIGHT  # built-in data-quality job: no jobs/ folder

DEFAULT_SITE_CONFIGS = "site_configs"
DEFAULT_JOBS = "jobs"
DEFAULT_RUNS = "runs"
DEFAULT_WORKSPACE = "workspace"
DEFAULT_CONSORTIUM = "provisioning/consortium.yaml"


def _sites(args) -> dict:
    sites = load_site_configs(args.site_configs)
    if getattr(args, "sites", None):
        wanted = [s.strip() for s in args.sites.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in sites]
        if unknown:
            raise ConfigError(f"--sites: unknown site(s) {', '.join(unknown)}; known: {', '.join(sites)}")
        sites = {s: sites[s] for s in wanted}
    return sites


def cmd_job_list(args) -> int:
    from consortium.jobs import available_jobs, load_job_spec

    for name in available_jobs(Path(args.jobs)):
        spec = load_job_spec(name, args.jobs)
        print(f"{name:16s} {spec.description}")
    print(f"{PREFLIGHT:16s} built in: federated data-quality statistics of every site (FLARE federated statistics)")
    return 0


def cmd_job_export(args) -> int:
    from consortium.jobs import export_job, load_job_spec

    if args.job == PREFLIGHT:
        from consortium.stats.job import export_preflight_job

        path = export_preflight_job(args.out)
    else:
        path = export_job(load_job_spec(args.job, args.jobs), args.out)
    print(f"exported job '{args.job}' to {path} (submit it with the admin console: submit_job {path})")
    return 0


def _echo_filtered(stream, log_file) -> None:
    """Copy the simulator's output to a log file; show only progress lines, site results and errors."""
    for line in stream:
        log_file.write(line)
        if (
            "[progress]" in line
            or " usable in " in line
            or "  skipped " in line
            or (" round " in line and " of received model " in line)
            or " ERROR " in line
        ):
            msg = line.split(" - INFO - ")[-1].split(" - ERROR - ")[-1].rstrip()
            print(("ERROR " if " ERROR " in line else "  ") + msg, flush=True)


def cmd_simulate(args) -> int:
    from consortium.jobs import load_job_spec

    if args.job == PREFLIGHT:  # FLARE's federated statistics, not a training job
        from consortium.stats.commands import cmd_simulate_preflight

        return cmd_simulate_preflight(args)
    spec = load_job_spec(args.job, args.jobs).with_overrides(
        Path(args.jobs) / args.job, rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed, lr=args.lr,
        standardise=args.standardise, round_timeout=args.round_timeout, pretrained=args.pretrained)  # fmt: skip
    sites = _sites(args)
    require_data_dirs(sites)
    if len(sites) < spec.min_clients:
        spec = replace(spec, min_clients=len(sites))
    out = Path(args.runs) / args.job
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating job '{spec.name}': {spec.rounds} rounds x {spec.round_budget} at {', '.join(sites)}")
    start = time.perf_counter()
    worker = [
        sys.executable,
        "-m",
        "consortium.cli",
        "_simulate-worker",
        json.dumps(spec.__dict__),
        ",".join(sites),
        str(Path(args.site_configs).resolve()),
        str(workspace.resolve()),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out / "simulate.log", "w") as log_file:
        proc = subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for sig in (signal.SIGTERM, signal.SIGHUP):  # a stop request or a closed terminal: end the worker too
            signal.signal(sig, _interrupt)
        try:
            _echo_filtered(proc.stdout, log_file)
        except (KeyboardInterrupt, BrokenPipeError) as exc:  # Ctrl-C, a signal, or `| head` closing the pipe
            proc.terminate()  # the worker stops the simulator's processes (_stop_simulator_on_term)
            proc.wait(timeout=30)
            if isinstance(exc, BrokenPipeError):  # nobody reads our output any more: leave quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 141
            raise
        code = proc.wait()
    seconds = time.perf_counter() - start
    run_dir = workspace / "server" / "simulate_job"
    metrics = run_dir / C.METRICS_FILE
    if code != 0 or not metrics.exists():
        print(f"ERROR simulation failed (exit {code}); full log: {out / 'simulate.log'}", file=sys.stderr)
        return 1
    for name in (C.METRICS_FILE, C.GLOBAL_MODEL_FILE, C.CROSS_SITE_FILE):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / name)
    from consortium.he.release import release_plaintext

    release_plaintext(out, workspace / "startup" / "client_context.tenseal", "the simulated hospitals' key")
    history = json.loads(metrics.read_text())
    history["wall_seconds"] = seconds
    (out / C.METRICS_FILE).write_text(json.dumps(history, indent=1))
    from consortium.report import print_job_summary

    print_job_summary(out, history, f"done in {seconds:.0f} s; ", log=out / "simulate.log")
    return 0


def cmd_he_decrypt(args) -> int:
    from consortium.he.release import decrypt_model_file

    try:
        out = decrypt_model_file(Path(args.model), Path(args.context), Path(args.out))
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    print(f"plaintext global model: {out}")
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_simulator_on_term() -> None:
    """FLARE's simulator runs its server and clients in process groups of their own, which a stop signal to
    this worker (or to its process group) does not reach. On SIGTERM or SIGINT, stop those groups, then exit."""
    import psutil

    def stop(signum, frame):
        own = os.getpgid(0)
        groups = set()
        for child in psutil.Process().children(recursive=True):
            try:
                groups.add(os.getpgid(child.pid))
            except ProcessLookupError:
                pass
        for group in groups - {own}:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C reaches the terminal's process group only, not the simulator's


def cmd_simulate_worker(args) -> int:
    from consortium.jobs import JobSpec, simulate

    _stop_simulator_on_term()
    spec = JobSpec(**json.loads(args.spec))
    result = simulate(
        spec,
        sites=args.sites.split(","),
        site_config_dir=Path(args.site_configs),
        workspace=Path(args.workspace),
    )
    return 0 if result in (None, 0) else 1


def cmd_pretrain(args) -> int:
    from consortium.public_start import pretrain

    pretrain(task_name=args.task, cohort_dir=Path(args.cohort), out=Path(args.out), epochs=args.epochs, lr=args.lr,
             batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    return 0


def cmd_baseline(args) -> int:
    from consortium.baselines import run_baselines
    from consortium.jobs import load_job_spec

    spec = load_job_spec(args.job, args.jobs).with_overrides(Path(args.jobs) / args.job, rounds=args.rounds)
    result = run_baselines(spec, _sites(args), kind=args.kind)
    out = Path(args.runs) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.kind}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0


def cmd_report(args) -> int:
    from consortium.report import ReportError, load_run, write_report

    folder = Path(args.run)
    if not folder.is_dir() and (Path(args.runs) / args.run).is_dir():
        folder = Path(args.runs) / args.run  # a job name: its results under --runs
    from consortium.stats.report import SUMMARY_FILE

    if (folder / SUMMARY_FILE).is_file():  # the pre-flight's statistics, not a training run
        from consortium.stats.commands import cmd_report_preflight

        return cmd_report_preflight(folder)
    try:
        run = load_run(folder, Path(args.baselines) if args.baselines else None)
    except ReportError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    files = write_report(run)
    print(f"report: {files['html']} (self-contained) and {files['markdown']}")
    print(f"TensorBoard: tensorboard --logdir {files['tensorboard']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consortium", description=__doc__)
    p.add_argument("--site-configs", default=DEFAULT_SITE_CONFIGS, help="folder with _defaults.yaml and <site>.yaml")
    p.add_argument("--jobs", default=DEFAULT_JOBS, help="folder with one <job>/job.yaml per experiment")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="where results are written")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="kits, POC workspace and exported jobs (secret)")
    p.add_argument("--consortium", default=DEFAULT_CONSORTIUM, help="the consortium definition")
    p.add_argument(
        "--admin-kit",
        help="admin startup kit for submit/status/logs/abort against a production consortium (default: the local "
        "POC's project admin kit)",
    )
    p.add_argument("--admin", help="admin user name of --admin-kit (default: the kit folder's name)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")


    job = sub.add_parser("job", help="list or export job definitions").add_subparsers(dest="action", required=True)
    job.add_parser("list", help="list the jobs in jobs/").set_defaults(fn=cmd_job_list)
    export = job.add_parser("export", help="write a submit-ready FLARE job folder")
    export.add_argument("job")
    export.add_argument("--out", default="build/jobs")
    export.set_defaults(fn=cmd_job_export)

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

    from consortium.deploy.commands import (
        cmd_demo,
        cmd_kit_verify,
        cmd_logs,
        cmd_poc_down,
        cmd_poc_up,
        cmd_provision,
        cmd_status,
    )
    from consortium.deploy.job_commands import cmd_abort, cmd_download, cmd_submit

    sub.add_parser("provision", help="write project.yml and signed startup kits").set_defaults(fn=cmd_provision)
    kit = sub.add_parser("kit", help="startup kit checks").add_subparsers(dest="action", required=True)
    verify = kit.add_parser("verify", help="check a kit's signatures; names every file that fails")
    verify.add_argument("path")
    verify.set_defaults(fn=cmd_kit_verify)

    poc_cmd = sub.add_parser("poc", help="a real local consortium (FLARE POC)").add_subparsers(
        dest="action", required=True
    )
    poc_cmd.add_parser("up", help="provision POC kits, start server + hospitals, wait for registration").set_defaults(
        fn=cmd_poc_up
    )
    poc_cmd.add_parser("down", help="stop every process of the local consortium").set_defaults(fn=cmd_poc_down)

    submit = sub.add_parser("submit", help="submit a job through the FLARE admin API and follow it")
    submit.add_argument("job")
    submit.add_argument("--rounds", type=int, help="override the job's rounds")
    submit.add_argument("--round-timeout", type=int, help="override the job's round_timeout (seconds)")
    submit.add_argument("--pretrained", help="start from this state dict (e.g. runs/public_start/seg2d.pt)")
    submit.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="JOB_ID",
        help="continue an interrupted job from its last complete round (default: the latest unfinished job of "
        "this name), e.g. after a server restart",
    )
    submit.add_argument("--no-wait", action="store_true", help="return after submitting")
    submit.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job (default 1800)")
    submit.set_defaults(fn=cmd_submit)
    status = sub.add_parser("status", help="server, registered sites, jobs, and the errors sites reported")
    status.add_argument("--tail", type=int, default=20, help="last N site errors per job (default 20)")
    status.set_defaults(fn=cmd_status)
    download = sub.add_parser("download", help="download a finished job's results into --runs/<job name>/")
    download.add_argument("job_id")
    download.set_defaults(fn=cmd_download)
    abort = sub.add_parser("abort", help="abort a running job (admin API abort_job)")
    abort.add_argument("job_id")
    abort.set_defaults(fn=cmd_abort)
    logs = sub.add_parser("logs", help="a job's logs from the server and every site (admin API)")
    logs.add_argument("job_id", nargs="?", help="default: the latest job")
    logs.add_argument("--site", help="one site (or 'server'); default all")
    logs.add_argument("--errors", action="store_true", help="only ERROR lines")
    logs.add_argument("--tail", type=int, default=40, help="last N lines per site (default 40)")
    logs.set_defaults(fn=cmd_logs)
    demo = sub.add_parser("demo", help="data + local consortium + FedAvg job via the admin API + shutdown")
    demo.add_argument("--job", default="fedavg")
    demo.add_argument("--timeout", type=float, default=1800)
    demo.set_defaults(fn=cmd_demo)

    he = sub.add_parser("he", help="homomorphic encryption tools").add_subparsers(dest="action", required=True)
    dec = he.add_parser("decrypt", help="decrypt an encrypted global model with a hospital's client_context.tenseal")
    dec.add_argument("model", help="the server's ciphertext checkpoint (global_model.pt of an HE job)")
    dec.add_argument("--context", required=True, help="startup/client_context.tenseal of a hospital kit")
    dec.add_argument("--out", default="global_model.plain.pt")
    dec.set_defaults(fn=cmd_he_decrypt)

    base = sub.add_parser("baseline", help="train without federation: each site alone, or pooled data")
    base.add_argument("kind", choices=["local", "pooled"])
    base.add_argument("--job", default="fedavg", help="job whose settings to copy (default fedavg)")
    base.add_argument("--rounds", type=int)
    base.add_argument("--sites", help="comma-separated subset of sites")
    base.set_defaults(fn=cmd_baseline)
    pre = sub.add_parser("pretrain", help="the public start: train the task's model on the public stand-in cohort")
    pre.add_argument("--task", default="seg2d", help="the task whose model to pretrain")
    pre.add_argument("--cohort", default="public_cohort", help="folder of the public archives' profiles")
    pre.add_argument("--out", default="runs/public_start/seg2d.pt", help="where to write the state dict (+ .json)")
    pre.add_argument("--epochs", type=positive_int, default=20, help="passes over the pooled public cohort")
    pre.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine schedule)")
    pre.add_argument("--batch-size", type=positive_int, default=16)
    pre.add_argument("--seed", type=int, default=0, help="model initialisation and data order")
    pre.set_defaults(fn=cmd_pretrain)

    report = sub.add_parser("report", help="HTML/Markdown report of a run: is the shared model better for each site?")
    report.add_argument("run", help="a run folder (runs/fedavg) or a job name under --runs")
    report.add_argument("--baselines", help="folder with local.json/pooled.json (default: RUN/../baselines)")
    report.set_defaults(fn=cmd_report)
    # commands that live with their own module: each module's register(sub) adds its parsers
    import importlib

    for module in ("consortium.data.commands", "consortium.deploy.netlab", "consortium.deploy.distributed"):
        importlib.import_module(module).register(sub)
    return p


def _user_errors() -> tuple:
    """Errors that are the user's to fix: printed as one line. Imported only when one happens, so that
    `consortium` starts without loading torch and pandas."""
    from consortium.data.index import IndexingError
    from consortium.data.manifest import DataError
    from consortium.deploy.admin import AdminError
    from consortium.deploy.poc import PocError
    from consortium.deploy.provision import ProvisionError
    from consortium.he.contexts import HEContextError

    return ConfigError, DataError, IndexingError, PocError, AdminError, ProvisionError, HEContextError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"ERROR {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
