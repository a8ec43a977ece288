"""`consortium` commands on jobs of a running consortium: submit (and resume), download, abort."""

from __future__ import annotations

import json
import time
from pathlib import Path

from consortium import constants as C
from consortium.deploy.commands import _paths, _session, _state
from consortium.stats.features import PREFLIGHT_JOB


def cmd_abort(args) -> int:
    with _session(args) as sess:
        sess.abort_job(args.job_id)
    print(f"asked the server to abort job {args.job_id}; `consortium status` shows its state")
    return 0


def cmd_submit(args) -> int:
    from consortium.deploy.admin import download as download_results
    from consortium.jobs import export_job, load_job_spec

    if args.job == PREFLIGHT_JOB:  # FLARE's federated statistics, not a training job
        from consortium.stats.commands import cmd_submit_preflight

        return cmd_submit_preflight(args)
    spec = load_job_spec(args.job, args.jobs).with_overrides(
        Path(args.jobs) / args.job, rounds=args.rounds, round_timeout=args.round_timeout,
        pretrained=getattr(args, "pretrained", None))  # fmt: skip
    with _session(args) as sess:
        resume_from = resume_target(sess, spec.name, args.resume) if args.resume else ""
        folder = export_job(spec, Path(args.workspace) / "jobs", resume_from=resume_from)
        job_id = sess.submit_job(str(folder.resolve()))
        print(f"submitted job '{spec.name}' as {job_id}" + (f", continuing job {resume_from}" if resume_from else ""))
        if args.no_wait:
            return 0
        if not follow_job(sess, job_id, args.timeout):
            return 1
        out = download_results(sess, job_id, Path(args.runs) / spec.name)
    return _results(args, out)


def follow_job(sess, job_id: str, timeout: float) -> bool:
    """Follow a submitted job to its end, printing its progress; True if it completed, else print why not."""
    from consortium.deploy.admin import follow, site_errors

    start = time.perf_counter()
    status = follow(sess, job_id, timeout=timeout)
    print(f"job {job_id}: {status} after {time.perf_counter() - start:.0f} s")
    if status == "FINISHED:COMPLETED":
        return True
    for line in sess.get_job_meta(job_id).get("job_deploy_detail") or []:
        if not line.endswith(": OK"):
            print(f"  deploy: {line}")
    for line in site_errors(sess, job_id):
        print(f"  {line}")
    print(f"details: consortium logs {job_id}")
    return False


def _results(args, out: Path) -> int:
    """After a job: the plaintext model (POC: decrypted with a local hospital kit's key), summary, report."""
    history = json.loads((out / C.METRICS_FILE).read_text())
    he = bool(history.get("meta", {}).get("he"))
    if he and getattr(args, "admin_kit", None):  # production: the admin holds no hospital key
        print(f"HE: {out / C.GLOBAL_MODEL_FILE} is ciphertext; a hospital decrypts it with `consortium he decrypt`")
    elif he:  # in POC every hospital kit is here: release the plaintext model with the first one's key
        from consortium.he.release import release_plaintext

        state = _state(args)
        site = state["sites"][0]
        kit_context = _paths(args).prod(state["project"]) / site / "startup" / "client_context.tenseal"
        release_plaintext(out, kit_context, f"{site}'s kit key")
        history = json.loads((out / C.METRICS_FILE).read_text())
    from consortium.report import print_job_summary

    print_job_summary(out, history, "")
    return 0


def cmd_download(args) -> int:
    """Results of a finished job (e.g. one submitted with --no-wait) into runs/<job name>/."""
    from consortium.deploy.admin import AdminError
    from consortium.deploy.admin import download as download_results

    with _session(args) as sess:
        meta = sess.get_job_meta(args.job_id)
        status = meta.get("status", "")
        if not status.startswith("FINISHED"):
            raise AdminError(f"job {args.job_id} is {status or 'unknown'}; download it once it has finished")
        if meta.get("name") == PREFLIGHT_JOB:
            from consortium.stats.commands import download_results as download_preflight

            return download_preflight(sess, args.job_id, Path(args.runs) / PREFLIGHT_JOB)
        out = download_results(sess, args.job_id, Path(args.runs) / meta.get("name", args.job_id))
    print(f"job {args.job_id}: {status}; results in {out}")
    return _results(args, out)


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
