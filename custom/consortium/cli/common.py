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
