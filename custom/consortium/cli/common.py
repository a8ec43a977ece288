"""Helpers every command area shares: the selected sites, and a simulator worker followed in a child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from consortium.config import ConfigError, load_site_configs

BROKEN_PIPE = 141  # what a shell reports for a command whose reader went away


def sites(args) -> dict:
    """The site configs under --site-configs, narrowed to --sites where the command has that flag."""
    found = load_site_configs(args.site_configs)
    if getattr(args, "sites", None):
        wanted = [s.strip() for s in args.sites.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in found]
        if unknown:
            raise ConfigError(f"--sites: unknown site(s) {', '.join(unknown)}; known: {', '.join(found)}")
        found = {s: found[s] for s in wanted}
    return found


def charter(args):
    """The charter of the consortium definition (--consortium): what every job is checked against."""
    from consortium.governance.charter import load_charter

    return load_charter(args.consortium)


def job_spec(args, name: str | None = None):
    """The job `name` (default: the command's job) from --jobs, checked against the charter."""
    from consortium.jobs import load_job_spec

    return load_job_spec(name or args.job, args.jobs, charter=charter(args))


def gate(args, chosen: dict, props: dict, *, min_clients: int, export=None) -> tuple[dict, list]:
    """The simulator deploys nothing, so its hospitals' kits cannot refuse a job: here each chosen site config
    decides as its kit would (governance/gate.py); the refusals are printed. Returns (the approving sites, every
    decision); fewer approving sites than `min_clients` is a ConfigError. `export()`: the exported job folder
    (only made when a site approves exact jobs)."""
    from consortium.governance.gate import decide
    from consortium.governance.jobhash import app_files_from_dir, site_app

    cache: dict = {}

    def files():
        if "files" not in cache:
            cache["files"] = app_files_from_dir(site_app(export()))
        return cache["files"]

    the_charter = charter(args)
    decisions = [decide(name, cfg, the_charter, props, files) for name, cfg in chosen.items()]
    for d in decisions:
        if not d.approved:
            print(f"  {d.site} refuses the job: {d.reason}")
    kept = {d.site: chosen[d.site] for d in decisions if d.approved}
    if len(kept) < min_clients:
        raise ConfigError(
            f"only {len(kept)} of {len(chosen)} site(s) approve this job ({', '.join(kept) or 'none'}), fewer than "
            f"its min_clients {min_clients}: it would end at deployment. The refusals are above"
        )
    return kept, decisions


def echo_filtered(stream, log_file) -> None:
    """Copy the simulator's output to a log file; show only progress lines, site results and errors."""
    for line in stream:
        log_file.write(line)
        if (
            "[progress]" in line
            or " usable in " in line
            or "  skipped " in line
            or (" round " in line and " of received model " in line)
            or " ERROR " in line
        ):
            msg = line.split(" - INFO - ")[-1].split(" - ERROR - ")[-1].rstrip()
            print(("ERROR " if " ERROR " in line else "  ") + msg, flush=True)


def interrupt(signum, frame):
    """A stop signal unwinds like Ctrl-C, so the worker is ended too."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_worker(cmd: list[str], log: Path) -> int:
    """Run a simulator worker (`cmd`), its full output into `log`, the filtered lines on screen; its exit code.
    A stop request, a closed terminal or Ctrl-C ends the worker too (it stops the simulator's processes:
    consortium.runtime.stop_simulator_on_term); `| head` closing our output ends it quietly (BROKEN_PIPE)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, interrupt)
        try:
            echo_filtered(proc.stdout, log_file)
        except (KeyboardInterrupt, BrokenPipeError) as exc:
            proc.terminate()
            proc.wait(timeout=30)
            if isinstance(exc, BrokenPipeError):  # nobody reads our output any more: leave quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return BROKEN_PIPE
            raise
        return proc.wait()
