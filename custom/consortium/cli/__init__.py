"""The `consortium` command: hospital data, jobs, simulator, provisioning, local consortium, admin, baselines."""

from __future__ import annotations

import argparse
import sys

from consortium.cli import (
    admin,
    audit,
    data,
    deploy,
    distributed,
    jobs,
    netlab,
    pretrain,
    privacy,
    report,
    results,
    run,
    submit,
)
from consortium.config import ConfigError

DEFAULT_SITE_CONFIGS = "site_configs"
DEFAULT_JOBS = "jobs"
DEFAULT_RUNS = "runs"
DEFAULT_WORKSPACE = "workspace"
DEFAULT_CONSORTIUM = "provisioning/consortium.yaml"

# Each adds one top-level command (with its sub-commands), in the order `consortium --help` lists them.
COMMANDS = (
    jobs.add_job,
    run.add_simulate,
    deploy.add_provision,
    deploy.add_kit,
    deploy.add_poc,
    submit.add_submit,
    admin.add_status,
    submit.add_download,
    admin.add_abort,
    admin.add_logs,
    run.add_demo,
    results.add_he,
    run.add_baseline,
    pretrain.add_pretrain,
    report.add_report,
    data.add_data,
    netlab.add_netlab,
    distributed.add_distributed,
    audit.add_audit,
    privacy.add_privacy,
)


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
    p.add_argument(
        "--as",
        dest="as_person",
        metavar="PERSON",
        help="act as PERSON on the local POC consortium, with their own admin kit and role (an admin of the "
        "consortium definition, e.g. lead@northfield.org; default: its first project admin)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
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
