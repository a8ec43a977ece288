"""`consortium status | logs | abort`: look at and steer a running consortium through the FLARE admin API."""

from __future__ import annotations

from consortium.cli.deploy import admin_session, poc_paths


def cmd_status(args) -> int:
    from nvflare.fuel.flare_api.api_spec import AuthorizationError

    from consortium.deploy.admin import refusal_lines, running_jobs, site_errors

    with admin_session(args) as sess:
        info = sess.get_system_info()
        running = running_jobs(info)
        print(f"server: up, {'running job ' + ', '.join(running) if running else 'idle'}")
        print("sites:  " + ", ".join(sorted(c.name for c in info.client_info)))
        jobs = sess.list_jobs()
        for job in jobs:
            status = job.get("status", "")
            if status == "RUNNING" and job["job_id"] not in running:
                status += " (stale: no server process runs it; the server was restarted? resume it with "
                status += f"`consortium submit {job.get('job_name')} --resume`)"
            print(f"job {job.get('job_id')}  {job.get('job_name', ''):12s} {status}")
        # site errors of the running jobs and of the latest job only: one log read each, not one per job ever run
        latest = sorted(jobs, key=lambda j: j.get("submit_time", ""))[-1:]
        for job_id in dict.fromkeys(running + [j["job_id"] for j in latest]):
            try:
                meta = sess.get_job_meta(job_id)
            except AuthorizationError:
                meta = {}
            for line in refusal_lines(meta):  # e.g. a hospital's charter gate said no
                print(f"job {job_id}: {line}")
            try:
                errors = site_errors(sess, job_id)
            except AuthorizationError:  # e.g. a member, or a lead looking at another's job: no right get_job_log
                print(f"job {job_id}: your role may not read its logs (right 'get_job_log'); site errors not shown")
                continue
            if errors:
                print(f"errors reported by sites in job {job_id}:")
                for line in errors[-args.tail :]:
                    print(f"  {line}")
    return 0


def cmd_logs(args) -> int:
    """Job logs through the admin API; sites whose logs the server does not hold are read from the
    local POC kits (on one machine they are all here)."""
    from consortium.deploy.poc import read_state

    with admin_session(args) as sess:
        job_id = args.job_id or (sess.list_jobs() or [{}])[-1].get("job_id")
        if not job_id:
            print("no jobs yet")
            return 0
        logs = sess.get_job_logs(job_id, target=args.site or "all")
    texts = {site: (str(text), "admin API") for site, text in (logs.get("logs") or {}).items()}
    state = read_state(poc_paths(args)) or {}  # POC: site logs the server does not hold are read from the kits
    sites = [args.site] if args.site else state.get("sites", [])
    for site in sites:
        local = poc_paths(args).prod(state["project"]) / site / job_id / "log.txt"
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


def cmd_abort(args) -> int:
    with admin_session(args) as sess:
        sess.abort_job(args.job_id)
    print(f"asked the server to abort job {args.job_id}; `consortium status` shows its state")
    return 0


def add_status(sub) -> None:
    status = sub.add_parser("status", help="server, registered sites, jobs, and the errors sites reported")
    status.add_argument("--tail", type=int, default=20, help="last N site errors per job (default 20)")
    status.set_defaults(fn=cmd_status)


def add_abort(sub) -> None:
    abort = sub.add_parser("abort", help="abort a running job (admin API abort_job)")
    abort.add_argument("job_id")
    abort.set_defaults(fn=cmd_abort)


def add_logs(sub) -> None:
    logs = sub.add_parser("logs", help="a job's logs from the server and every site (admin API)")
    logs.add_argument("job_id", nargs="?", help="default: the latest job")
    logs.add_argument("--site", help="one site (or 'server'); default all")
    logs.add_argument("--errors", action="store_true", help="only ERROR lines")
    logs.add_argument("--tail", type=int, default=40, help="last N lines per site (default 40)")
    logs.set_defaults(fn=cmd_logs)
