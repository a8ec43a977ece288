"""`consortium job list | export | hash`: the job definitions in jobs/ (and the built-in pre-flight)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from consortium.cli.common import charter, job_spec
from consortium.stats.features import PREFLIGHT_JOB as PREFLIGHT  # built-in data-quality job: no jobs/ folder


def cmd_job_list(args) -> int:
    from consortium.jobs import available_jobs

    for name in available_jobs(Path(args.jobs)):
        spec = job_spec(args, name)
        print(f"{name:16s} {spec.description} [purpose: {spec.purpose}]")
    print(f"{PREFLIGHT:16s} built in: federated data-quality statistics of every site (FLARE federated statistics)")
    return 0


def export(args, out: str | Path) -> Path:
    """The job (with the command's overrides, as `submit` has them) exported to `out`, under the charter."""
    from consortium.jobs import export_job

    if args.job == PREFLIGHT:
        from consortium.stats.job import export_preflight_job

        return export_preflight_job(out, charter(args))
    overrides = {k: getattr(args, k, None) for k in ("rounds", "round_timeout", "pretrained")}
    spec = job_spec(args).with_overrides(Path(args.jobs) / args.job, **overrides)
    return export_job(spec, out, charter=charter(args))


def cmd_job_export(args) -> int:
    path = export(args, args.out)
    print(f"exported job '{args.job}' to {path} (submit it with the admin console: submit_job {path})")
    return 0


def cmd_job_hash(args) -> int:
    """The hash a hospital approves exactly this job by (site config `approved_jobs:`)."""
    import json

    from consortium.governance import props as P

    with tempfile.TemporaryDirectory() as tmp:
        folder = export(args, tmp)
        props = P.declared(json.loads((folder / "meta.json").read_text()))
    print(props[P.JOB_SHA])
    print(f"  job '{args.job}': purpose {props[P.PURPOSE]!r}, agreement {P.agreement_version(props)}, "
          f"{props[P.PACKAGE]}; a hospital approves exactly this job with it in its site config's approved_jobs "
          "(other rounds, timeouts or package versions give other hashes)", flush=True)  # fmt: skip
    return 0


def add_job(sub) -> None:
    job = sub.add_parser("job", help="list, export or hash job definitions").add_subparsers(
        dest="action", required=True
    )
    job.add_parser("list", help="list the jobs in jobs/").set_defaults(fn=cmd_job_list)
    export_cmd = job.add_parser("export", help="write a submit-ready FLARE job folder")
    export_cmd.add_argument("job")
    export_cmd.add_argument("--out", default="build/jobs")
    export_cmd.set_defaults(fn=cmd_job_export)
    hash_cmd = job.add_parser("hash", help="print the job hash a hospital approves a job by (approved_jobs)")
    hash_cmd.add_argument("job")
    hash_cmd.add_argument("--rounds", type=int, help="as `submit --rounds` (another job, another hash)")
    hash_cmd.add_argument("--round-timeout", type=int, help="as `submit --round-timeout`")
    hash_cmd.add_argument("--pretrained", help="as `submit --pretrained`")
    hash_cmd.set_defaults(fn=cmd_job_hash)
