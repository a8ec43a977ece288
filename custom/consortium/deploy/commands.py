"""`consortium` commands that act on a consortium: provision, kit verify, poc up/down, submit, status, logs, demo."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from consortium.config import load_site_configs


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
    """An admin API session: from `--admin-kit` (a production or distributed admin kit), else the local POC's."""
    from consortium.deploy.admin import session
    from consortium.deploy.poc import admin_kit

    if getattr(args, "admin_kit", None):
        kit = Path(args.admin_kit)
        return session(args.admin or kit.resolve().name, kit)
    state = _state(args)
    return session(state["admin"], admin_kit(_paths(args), state))


def cmd_provision(args) -> int:
    from consortium.deploy.provision import load_consortium, orphan_admins, project_dict, run_provision, write_project

    defn = load_consortium(args.consortium)
    sites = load_site_configs(args.site_configs)
    for warning in orphan_admins(defn, sites):
        print(f"warning: {warning}", file=sys.stderr)
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

    if poc.down(_paths(args)):
        print("stopped; no process of the local consortium is left running and its ports are free")
    else:
        print("no consortium was running from this workspace")
    return 0


def cmd_status(args) -> int:
    from consortium.deploy.admin import running_jobs, site_errors

    with _session(args) as sess:
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
            errors = site_errors(sess, job_id)
            if errors:
                print(f"errors reported by sites in job {job_id}:")
                for line in errors[-args.tail :]:
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
    state = read_state(_paths(args)) or {}  # POC: site logs the server does not hold are read from the kits
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
    from consortium.data.commands import cmd_data_synth
    from consortium.deploy import poc
    from consortium.deploy.job_commands import cmd_submit

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
