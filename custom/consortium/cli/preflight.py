"""`consortium simulate preflight` and `consortium submit preflight`: FLARE's federated statistics of every site."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from consortium.cli.common import BROKEN_PIPE, run_worker, sites
from consortium.stats.features import PREFLIGHT_JOB


def cmd_simulate_preflight(args) -> int:
    """The pre-flight in the FLARE simulator, one client per site config; results in RUNS/preflight/."""
    from consortium.cli.common import charter, gate
    from consortium.config import require_data_dirs
    from consortium.governance.props import job_props
    from consortium.stats.job import PURPOSE, check_charter, export_preflight_job, simulator_stats_file
    from consortium.stats.results import write_results

    chosen = sites(args)
    require_data_dirs(chosen)
    the_charter = charter(args)
    check_charter(the_charter)
    props = job_props(PURPOSE, the_charter.agreement.version, the_charter)
    job_dir = Path(args.runs) / PREFLIGHT_JOB / "job"
    chosen, _ = gate(args, chosen, props, min_clients=1, export=lambda: export_preflight_job(job_dir, the_charter))
    out = Path(args.runs) / PREFLIGHT_JOB
    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"simulating the pre-flight (FLARE federated statistics) at {', '.join(chosen)}")
    start = time.perf_counter()
    worker = [sys.executable, "-m", "consortium.stats.job", ",".join(chosen), str(Path(args.site_configs).resolve())]
    code = run_worker([*worker, str(workspace.resolve())], out / "simulate.log")
    if code == BROKEN_PIPE:
        return code
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
    from consortium.cli.common import charter
    from consortium.cli.deploy import admin_session
    from consortium.cli.submit import follow_job, submit_folder
    from consortium.stats.job import export_preflight_job
    from consortium.stats.results import download_results

    with admin_session(args) as sess:
        folder = export_preflight_job(Path(args.workspace) / "jobs", charter(args))
        job_id = submit_folder(sess, folder)
        print(f"submitted job '{PREFLIGHT_JOB}' as {job_id}")
        if args.no_wait:
            return 0
        if not follow_job(sess, job_id, args.timeout):
            return 1
        return download_results(sess, job_id, Path(args.runs) / PREFLIGHT_JOB)
