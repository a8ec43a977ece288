"""`consortium submit | download`: a job on a running consortium (and its resumption), and its results."""

from __future__ import annotations

import time
from pathlib import Path

from consortium.cli.deploy import admin_session, poc_paths, poc_state
from consortium.cli.results import finish_run
from consortium.stats.features import PREFLIGHT_JOB


def submit_spec(args):
    """The job `submit` sends, with the command's overrides."""
    from consortium.cli.common import job_spec

    return job_spec(args).with_overrides(
        Path(args.jobs) / args.job, rounds=args.rounds, round_timeout=args.round_timeout,
        pretrained=getattr(args, "pretrained", None))  # fmt: skip


def export_for_submit(args, spec=None, resume_from: str = ""):
    """(spec, exported job folder) of the job `submit` sends. The demo calls it while the consortium starts: its
    imports (torch, MONAI, FLARE's job API) were most of the demo's 5-10 s between "registered sites" and
    "submitted job" (2026-12-07, load 3-7)."""
    from consortium.cli.common import charter
    from consortium.jobs import export_job

    spec = spec or submit_spec(args)
    return spec, export_job(spec, Path(args.workspace) / "jobs", resume_from=resume_from, charter=charter(args))


def cmd_submit(args, exported=None) -> int:
    """`exported`: what export_for_submit(args) returned, when the job was exported beforehand (not with --resume:
    the job it continues is asked of the server first)."""
    from consortium.deploy.admin import download as download_results

    if args.job == PREFLIGHT_JOB:  # FLARE's federated statistics, not a training job
        from consortium.cli.preflight import cmd_submit_preflight

        return cmd_submit_preflight(args)
    if exported is not None and args.resume:
        raise ValueError("submit --resume exports the job once it knows which job it continues; not beforehand")
    spec = exported[0] if exported else submit_spec(args)
    with admin_session(args) as sess:
        resume_from = resume_target(sess, spec.name, args.resume) if args.resume else ""
        _, folder = exported or export_for_submit(args, spec, resume_from)
        job_id = submit_folder(sess, folder)
        print(f"submitted job '{spec.name}' as {job_id}" + (f", continuing job {resume_from}" if resume_from else ""))
        if args.no_wait:
            return 0
        if not follow_job(sess, job_id, args.timeout):
            return 1
        out = download_results(sess, job_id, Path(args.runs) / spec.name)
    return finish_run(out, key=_hospital_key(args))


def submit_folder(sess, folder: Path) -> str:
    """Submit an exported job folder; a job the server refuses (its charter check) is an AdminError with why."""
    from nvflare.fuel.flare_api.api_spec import InvalidJobDefinition

    from consortium.deploy.admin import AdminError

    try:
        return sess.submit_job(str(folder.resolve()))
    except InvalidJobDefinition as exc:
        raise AdminError(f"the server refused job {folder.name}: {exc}") from None


def _hospital_key(args):
    """Production: the admin holds no hospital key (None). POC: every hospital kit is here; the first one's key."""
    if getattr(args, "admin_kit", None):
        return None

    def key() -> tuple[Path, str]:
        state = poc_state(args)
        site = state["sites"][0]
        return poc_paths(args).prod(state["project"]) / site / "startup" / "client_context.tenseal", f"{site}'s kit key"

    return key


def follow_job(sess, job_id: str, timeout: float) -> bool:
    """Follow a submitted job to its end, printing its progress; True if it completed, else print why not."""
    from consortium.deploy.admin import follow, refusal_lines, site_errors

    start, refused = time.perf_counter(), set()
    status = follow(sess, job_id, timeout=timeout, shown_refusals=refused)
    print(f"job {job_id}: {status} after {time.perf_counter() - start:.0f} s")
    if status == "FINISHED:COMPLETED":
        return True
    meta = sess.get_job_meta(job_id)
    for line in refusal_lines(meta):
        if line not in refused:
            print(f"  {line}")
    for line in meta.get("job_deploy_detail") or []:
        if not line.endswith(": OK") and ": " not in line:  # the sites' own lines: above
            print(f"  deploy: {line}")
    for line in site_errors(sess, job_id):
        print(f"  {line}")
    print(f"details: consortium logs {job_id}")
    return False


def cmd_download(args) -> int:
    """Results of a finished job (e.g. one submitted with --no-wait) into runs/<job name>/."""
    from consortium.deploy.admin import AdminError
    from consortium.deploy.admin import download as download_results

    with admin_session(args) as sess:
        meta = sess.get_job_meta(args.job_id)
        status = meta.get("status", "")
        if not status.startswith("FINISHED"):
            raise AdminError(f"job {args.job_id} is {status or 'unknown'}; download it once it has finished")
        if meta.get("name") == PREFLIGHT_JOB:
            from consortium.stats.results import download_results as download_preflight

            return download_preflight(sess, args.job_id, Path(args.runs) / PREFLIGHT_JOB)
        out = download_results(sess, args.job_id, Path(args.runs) / meta.get("name", args.job_id))
    print(f"job {args.job_id}: {status}; results in {out}")
    return finish_run(out, key=_hospital_key(args))


def resume_target(sess, name: str, wanted: str) -> str:
    """The job `submit --resume` continues: the given id, or the latest job of this name that did not complete."""
    from consortium.deploy.admin import AdminError

    jobs = [j for j in sess.list_jobs() if j.get("job_name") == name]
    if wanted != "latest":
        if not any(j["job_id"] == wanted for j in jobs):
            raise AdminError(f"--resume {wanted}: no job '{name}' with that id on the server (see `consortium status`)")
        return wanted
    unfinished = [j for j in jobs if j.get("status") != "FINISHED:COMPLETED"]
    if not unfinished:
        raise AdminError(f"--resume: no unfinished job '{name}' on the server; submit it without --resume")
    return sorted(unfinished, key=lambda j: j.get("submit_time", ""))[-1]["job_id"]


def add_submit(sub) -> None:
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


def add_download(sub) -> None:
    download = sub.add_parser("download", help="download a finished job's results into --runs/<job name>/")
    download.add_argument("job_id")
    download.set_defaults(fn=cmd_download)
