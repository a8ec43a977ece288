"""`consortium simulate preflight`, `consortium submit preflight` and the pre-flight's results in runs/preflight/."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from consortium.stats import features as F
from consortium.stats.report import HARMONISATION_FILE, STATS_FILE, SUMMARY_FILE, write_preflight_report


def write_results(out: Path, stats_file: Path) -> dict:
    """Copy FLARE's statistics JSON to OUT, write our summary, the harmonisation file and the report; print them."""
    from consortium.stats.summary import summarise

    out.mkdir(parents=True, exist_ok=True)
    if stats_file.resolve() != (out / STATS_FILE).resolve():
        shutil.copy2(stats_file, out / STATS_FILE)
    summary = summarise(json.loads((out / STATS_FILE).read_text()))
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    (out / HARMONISATION_FILE).write_text(json.dumps(summary["harmonisation"], indent=1))
    files = write_preflight_report(out)
    for site, row in summary["sites"].items():
        print(
            f"  {site:14s} {row['patients']} patients, {row['slices']} slices; body HU {_f(row['body_hu_mean'])} "
            f"± {_f(row['body_hu_std'])}; lesion HU {_f(row['lesion_hu_mean'])}; "
            f"prevalence {_f(row['prevalence'], '.2f')}"
        )
    for flag in summary["flags"]:
        print(f"  FLAG {flag['message']}")
    if not summary["flags"]:
        print("  no site differs from the consortium beyond the limits")
    print(f"statistics:    {out / STATS_FILE} (FLARE's federated statistics)")
    print(f"summary:       {out / SUMMARY_FILE}")
    print(f"harmonisation: {out / HARMONISATION_FILE}")
    print(f"report:        {files['html']}")
    return summary


def _f(value, fmt: str = ".1f") -> str:
    return "withheld" if value is None else f"{value:{fmt}}"


def cmd_simulate_preflight(args) -> int:
    """The pre-flight in the FLARE simulator, one client per site config; results in RUNS/preflight/."""
    from consortium.cli import _echo_filtered, _interrupt, _sites
    from consortium.config import require_data_dirs
    from consortium.stats.job import simulator_stats_file

    sites = _sites(args)
    require_data_dirs(sites)
    out = Path(args.runs) / F.PREFLIGHT_JOB
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating the pre-flight (FLARE federated statistics) at {', '.join(sites)}")
    start = time.perf_counter()
    worker = [sys.executable, "-m", "consortium.stats.job", ",".join(sites), str(Path(args.site_configs).resolve())]
    worker.append(str(workspace.resolve()))
    with open(out / "simulate.log", "w") as log_file:
        proc = subprocess.Popen(
            worker,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _interrupt)
        try:
            _echo_filtered(proc.stdout, log_file)
        except KeyboardInterrupt:
            proc.terminate()  # the worker stops the simulator's processes
            proc.wait(timeout=30)
            raise
        code = proc.wait()
    stats_file = simulator_stats_file(workspace)
    if code != 0 or not stats_file.exists():
        print(f"ERROR pre-flight failed (exit {code}); full log: {out / 'simulate.log'}", file=sys.stderr)
        return 1
    print(f"done in {time.perf_counter() - start:.0f} s; per site:")
    write_results(out, stats_file)
    print(f"log:           {out / 'simulate.log'}")
    return 0


def cmd_submit_preflight(args) -> int:
    """The pre-flight on the running consortium through the FLARE admin API; results in RUNS/preflight/."""
    from consortium.deploy.commands import _session
    from consortium.deploy.job_commands import follow_job
    from consortium.stats.job import export_preflight_job

    with _session(args) as sess:
        folder = export_preflight_job(Path(args.workspace) / "jobs")
        job_id = sess.submit_job(str(folder.resolve()))
        print(f"submitted job '{F.PREFLIGHT_JOB}' as {job_id}")
        if args.no_wait:
            return 0
        if not follow_job(sess, job_id, args.timeout):
            return 1
        return download_results(sess, job_id, Path(args.runs) / F.PREFLIGHT_JOB)


def download_results(sess, job_id: str, out: Path) -> int:
    """A finished pre-flight job's results (FLARE's statistics JSON in the server's job folder) into OUT."""
    from consortium.deploy.admin import AdminError

    folder = Path(sess.download_job_result(job_id))
    found = sorted(folder.rglob(STATS_FILE))
    if not found:
        raise AdminError(f"job {job_id}: no {STATS_FILE} in its results ({folder}); see `consortium logs {job_id}`")
    shutil.rmtree(out / "download", ignore_errors=True)
    shutil.copytree(folder, out / "download")
    write_results(out, found[0])
    return 0


def cmd_report_preflight(folder: Path) -> int:
    files = write_preflight_report(folder)
    print(f"report: {files['html']} (self-contained) and {files['markdown']}")
    return 0
