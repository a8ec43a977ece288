"""The `consortium` command: generate data, check it, run jobs in the simulator, export jobs, baselines."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from consortium import constants as C
from consortium.config import ConfigError, load_site_configs, require_data_dirs
from consortium.data.manifest import DataError
from consortium.deploy.admin import AdminError
from consortium.deploy.poc import PocError
from consortium.deploy.provision import ProvisionError

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


def cmd_data_synth(args) -> int:
    from consortium.data.synth import generate_site

    for name, cfg in _sites(args).items():
        if cfg.synthetic is None:
            print(f"{name}: uses its own data at {cfg.data.dir} (no 'synthetic' section), skipped")
            continue
        if cfg.manifest_path.exists() and not args.force:
            print(f"{name}: {cfg.manifest_path} exists, kept (use --force to regenerate)")
            continue
        if cfg.data.dir.exists():
            shutil.rmtree(cfg.data.dir)
        start = time.perf_counter()
        df = generate_site(cfg, seed=args.seed, size=args.size, patients=args.patients)
        counts = df.split.value_counts().to_dict()
        print(
            f"{name}: {df.patient_id.nunique()} patients, {len(df)} DICOM slices "
            f"({counts.get('train', 0)} train / {counts.get('val', 0)} val) -> {cfg.data.dir} "
            f"[{time.perf_counter() - start:.1f} s]"
        )
    return 0


def cmd_data_check(args) -> int:
    from consortium.data.manifest import load_records

    failed = 0
    for cfg in _sites(args).values():
        try:
            _, report = load_records(cfg)
            print(report.summary())
        except DataError as exc:
            failed += 1
            print(f"ERROR {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_job_list(args) -> int:
    from consortium.jobs import available_jobs, load_job_spec

    for name in available_jobs(Path(args.jobs)):
        spec = load_job_spec(name, args.jobs)
        print(f"{name:16s} {spec.description}")
    return 0


def cmd_job_export(args) -> int:
    from consortium.jobs import export_job, load_job_spec

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
            or (" round " in line and "Dice" in line)
            or " ERROR " in line
        ):
            msg = line.split(" - INFO - ")[-1].split(" - ERROR - ")[-1].rstrip()
            print(("ERROR " if " ERROR " in line else "  ") + msg, flush=True)


def cmd_simulate(args) -> int:
    from consortium.jobs import load_job_spec

    spec = load_job_spec(args.job, args.jobs)
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    if args.local_epochs:
        spec = replace(spec, local_epochs=args.local_epochs)
    sites = _sites(args)
    require_data_dirs(sites)
    if len(sites) < spec.min_clients:
        spec = replace(spec, min_clients=len(sites))
    out = Path(args.runs) / args.job
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"simulating job '{spec.name}': {spec.rounds} rounds x {spec.local_epochs} local epochs at {', '.join(sites)}"
    )
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
        try:
            _echo_filtered(proc.stdout, log_file)
        except KeyboardInterrupt:
            proc.terminate()
            raise
        code = proc.wait()
    seconds = time.perf_counter() - start
    run_dir = workspace / "server" / "simulate_job"
    metrics = run_dir / C.METRICS_FILE
    if code != 0 or not metrics.exists():
        print(f"ERROR simulation failed (exit {code}); full log: {out / 'simulate.log'}", file=sys.stderr)
        return 1
    for name in (C.METRICS_FILE, C.GLOBAL_MODEL_FILE):
        shutil.copy2(run_dir / name, out / name)
    history = json.loads(metrics.read_text())
    history["wall_seconds"] = seconds
    (out / C.METRICS_FILE).write_text(json.dumps(history, indent=1))
    final = history.get("final", {})
    print(f"done in {seconds:.0f} s. Final global model, validation Dice per site:")
    for site, m in sorted(final.items()):
        print(f"  {site:14s} {m.get(C.METRIC_DICE, float('nan')):.3f}")
    print(f"global model: {out / C.GLOBAL_MODEL_FILE}")
    print(f"metrics:      {out / C.METRICS_FILE}")
    print(f"log:          {out / 'simulate.log'}")
    return 0


def cmd_simulate_worker(args) -> int:
    from consortium.jobs import JobSpec, simulate

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
    from consortium.jobs import load_job_spec

    spec = load_job_spec(args.job, args.jobs)
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    result = run_baselines(spec, _sites(args), kind=args.kind)
    out = Path(args.runs) / "baselines"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.kind}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0


def _paths(args):
    from consortium.deploy.poc import PocPaths

    return PocPaths(Path(args.workspace).resolve() / "poc-consortium")


def _state(args) -> dict:
    from consortium.deploy.poc import PocError, read_state

    state = read_state(_paths(args))
    if state is None:
        raise PocError("the consortium is not up: run `consortium poc up` first")
    return state


def _session(args):
    from consortium.deploy.admin import session
    from consortium.deploy.poc import admin_kit

    state = _state(args)
    return session(state["admin"], admin_kit(_paths(args), state))


def cmd_provision(args) -> int:
    from consortium.deploy.provision import load_consortium, project_dict, run_provision, write_project

    defn = load_consortium(args.consortium)
    sites = load_site_configs(args.site_configs)
    out = Path(args.workspace).resolve() / "prod"
    project = project_dict(defn, sites, site_configs=Path(args.site_configs), storage_root=out / "storage")
    changes = write_project(project, out / "project.yml")
    start = time.perf_counter()
    prod = run_provision(out / "project.yml", out)
    print(f"project.yml ({out / 'project.yml'}): {', '.join(changes) if changes else 'unchanged since last time'}")
    print(f"startup kits in {prod} [{time.perf_counter() - start:.1f} s]:")
    for kit in sorted(p for p in prod.iterdir() if p.is_dir()):
        print(f"  {kit.name}")
    print("Give each participant only its own kit; keep them secret (they hold private keys).")
    return 0


def cmd_kit_verify(args) -> int:
    from consortium.deploy.kits import verify_kit

    kit = Path(args.path)
    problems, checked = verify_kit(kit)
    if not checked and (kit / "startup" / "fl_admin.sh").exists():
        print(f"{kit}: admin kit; FLARE does not sign admin kits (the server checks its certificate at login)")
        return 0
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"{kit}: {len(problems)} problem(s); re-provision or restore the kit from its original copy")
        return 1
    print(f"{kit}: OK, every signed file intact ({', '.join(checked)})")
    return 0


def cmd_poc_up(args) -> int:
    from consortium.deploy import poc
    from consortium.deploy.admin import clients

    paths = _paths(args)
    print(f"starting the local consortium (server + {len(load_site_configs(args.site_configs))} hospitals) ...")
    state = poc.up(paths, consortium_file=Path(args.consortium), site_configs=Path(args.site_configs))
    with _session(args) as sess:
        registered = clients(sess)
    print(f"up in {state['ready_seconds']:.0f} s: server on 127.0.0.1:{state['ports'][0]} (admin {state['ports'][1]})")
    print(f"registered sites: {', '.join(registered)}")
    print(f"kits and logs: {paths.prod(state['project'])}")
    return 0


def cmd_poc_down(args) -> int:
    from consortium.deploy import poc

    print("stopped" if poc.down(_paths(args)) else "no consortium was running from this workspace")
    return 0


def cmd_submit(args) -> int:
    from consortium.deploy.admin import download as download_results
    from consortium.deploy.admin import follow, site_errors
    from consortium.jobs import export_job, load_job_spec

    spec = load_job_spec(args.job, args.jobs)
    if args.rounds:
        spec = replace(spec, rounds=args.rounds)
    folder = export_job(spec, Path(args.workspace) / "jobs")
    with _session(args) as sess:
        job_id = sess.submit_job(str(folder.resolve()))
        print(f"submitted job '{spec.name}' as {job_id}")
        if args.no_wait:
            return 0
        start = time.perf_counter()
        status = follow(sess, job_id, timeout=args.timeout)
        print(f"job {job_id}: {status} after {time.perf_counter() - start:.0f} s")
        if status != "FINISHED:COMPLETED":
            for line in sess.get_job_meta(job_id).get("job_deploy_detail") or []:
                if not line.endswith(": OK"):
                    print(f"  deploy: {line}")
            for line in site_errors(sess, job_id):
                print(f"  {line}")
            print(f"details: consortium logs {job_id}")
            return 1
        out = download_results(sess, job_id, Path(args.runs) / spec.name)
    history = json.loads((out / C.METRICS_FILE).read_text())
    print("final global model, validation Dice per site:")
    for site, m in sorted(history.get("final", {}).items()):
        print(f"  {site:14s} {m.get(C.METRIC_DICE, float('nan')):.3f}")
    print(f"global model: {out / C.GLOBAL_MODEL_FILE}")
    print(f"metrics:      {out / C.METRICS_FILE}")
    return 0


def cmd_status(args) -> int:
    from consortium.deploy.admin import site_errors

    with _session(args) as sess:
        info = sess.get_system_info()
        running = info.server_info.status != "stopped"  # FLARE reports an idle server as 'stopped'
        print(f"server: up, {'running a job' if running else 'idle'}")
        print("sites:  " + ", ".join(sorted(c.name for c in info.client_info)))
        jobs = sess.list_jobs()
        for job in jobs:
            print(f"job {job.get('job_id')}  {job.get('job_name', ''):12s} {job.get('status')}")
        for job in jobs:
            errors = site_errors(sess, job["job_id"])
            if errors:
                print(f"errors reported by sites in job {job['job_id']}:")
                for line in errors:
                    print(f"  {line}")
    return 0


def cmd_logs(args) -> int:
    """Job logs through the admin API; sites whose logs the server does not hold are read from the
    local POC kits (on one machine they are all here)."""
    from consortium.deploy.poc import read_state

    with _session(args) as sess:
        job_id = args.job_id or (sess.list_jobs() or [{}])[-1].get("job_id")
        if not job_id:
            print("no jobs yet")
            return 0
        logs = sess.get_job_logs(job_id, target=args.site or "all")
    texts = {site: (str(text), "admin API") for site, text in (logs.get("logs") or {}).items()}
    state = read_state(_paths(args))
    sites = [args.site] if args.site else state.get("sites", [])
    for site in sites:
        local = _paths(args).prod(state["project"]) / site / job_id / "log.txt"
        if site not in texts and local.exists():
            texts[site] = (local.read_text(errors="replace"), f"POC kit {local}")
    for site, (text, origin) in sorted(texts.items()):
        lines = text.splitlines()
        if args.errors:
            lines = [ln for ln in lines if " ERROR " in ln]
        print(f"==== {site} (job {job_id}, from {origin}) ====")
        print("\n".join(lines[-args.tail :]))
    for site in sorted(set(sites) - set(texts)):
        print(f"==== {site}: no log for job {job_id}")
    return 0


def cmd_demo(args) -> int:
    """Generate data if missing, bring the consortium up, run the job through the admin API, shut down."""
    from consortium.deploy import poc

    args.force, args.seed, args.size, args.patients, args.sites = False, 0, 64, None, None
    cmd_data_synth(args)
    try:
        cmd_poc_up(args)
        args.no_wait, args.rounds = False, None
        return cmd_submit(args)
    except KeyboardInterrupt:
        print("interrupted: shutting the consortium down")
        return 130
    finally:
        poc.down(_paths(args))
        print("consortium stopped; no process left running")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="consortium", description=__doc__)
    p.add_argument("--site-configs", default=DEFAULT_SITE_CONFIGS, help="folder with _defaults.yaml and <site>.yaml")
    p.add_argument("--jobs", default=DEFAULT_JOBS, help="folder with one <job>/job.yaml per experiment")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="where results are written")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="kits, POC workspace and exported jobs (secret)")
    p.add_argument("--consortium", default=DEFAULT_CONSORTIUM, help="the consortium definition")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or check hospital data").add_subparsers(dest="action", required=True)
    synth = data.add_parser("synth", help="write generated DICOM cohorts for sites with a 'synthetic' profile")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    synth.add_argument("--patients", type=int, default=None, help="override every site's patient count")
    synth.add_argument("--sites", help="comma-separated subset of sites")
    synth.add_argument("--force", action="store_true", help="regenerate even if a manifest exists")
    synth.set_defaults(fn=cmd_data_synth)
    check = data.add_parser("check", help="check every file of every site and report what would be skipped")
    check.add_argument("--sites", help="comma-separated subset of sites")
    check.set_defaults(fn=cmd_data_check)

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
    sim.add_argument("--sites", help="comma-separated subset of sites")
    sim.set_defaults(fn=cmd_simulate)

    worker = sub.add_parser("_simulate-worker")  # internal: runs the simulator in a child process
    for name in ("spec", "sites", "site_configs", "workspace"):
        worker.add_argument(name)
    worker.set_defaults(fn=cmd_simulate_worker)

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
    submit.add_argument("--no-wait", action="store_true", help="return after submitting")
    submit.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job (default 1800)")
    submit.set_defaults(fn=cmd_submit)
    sub.add_parser("status", help="server, registered sites, jobs, and the errors sites reported").set_defaults(
        fn=cmd_status
    )
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

    base = sub.add_parser("baseline", help="train without federation: each site alone, or pooled data")
    base.add_argument("kind", choices=["local", "pooled"])
    base.add_argument("--job", default="fedavg", help="job whose settings to copy (default fedavg)")
    base.add_argument("--rounds", type=int)
    base.add_argument("--sites", help="comma-separated subset of sites")
    base.set_defaults(fn=cmd_baseline)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, DataError, PocError, AdminError, ProvisionError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
