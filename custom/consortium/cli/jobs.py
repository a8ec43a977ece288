"""`consortium job list | export`: the job definitions in jobs/ (and the built-in pre-flight)."""

from __future__ import annotations

from pathlib import Path

from consortium.stats.features import PREFLIGHT_JOB as PREFLIGHT  # built-in data-quality job: no jobs/ folder


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


def add_job(sub) -> None:
    job = sub.add_parser("job", help="list or export job definitions").add_subparsers(dest="action", required=True)
    job.add_parser("list", help="list the jobs in jobs/").set_defaults(fn=cmd_job_list)
    export = job.add_parser("export", help="write a submit-ready FLARE job folder")
    export.add_argument("job")
    export.add_argument("--out", default="build/jobs")
    export.set_defaults(fn=cmd_job_export)
