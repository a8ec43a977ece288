"""Processes started from a consortium's kits: find them (whatever their process group), stop them, and
kill one kit as a crash would."""

from __future__ import annotations

import os
from pathlib import Path


def kit_processes(paths, under: Path | None = None) -> list:
    """Live processes started from this workspace's POC kits (or from one folder `under` it), whatever their
    process group: a server or site restarted by hand from its kit runs outside the group `poc up` started."""
    import psutil

    folder = str(Path(under or paths.poc).resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            words = list(proc.info["cmdline"] or []) + [proc.info["cwd"] or ""]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid != os.getpid() and any(w == folder or w.startswith(folder + os.sep) for w in words):
            found.append(proc)
    return found


def stop_processes(procs: list, grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `grace` s, the given processes (by PID); the number that were alive."""
    import psutil

    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, rest = psutil.wait_procs(alive, timeout=grace)
    for p in rest:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(rest, timeout=5)
    return len(alive)


def kill_kit(paths, kit: Path) -> int:
    """SIGKILL every process started from one kit (its respawn loop included), as a crash would, and remove
    the pid files the crash leaves: the kit's start script refuses to run beside a stale daemon_pid.fl whose
    PID another process has taken. Returns how many processes were killed."""
    import psutil

    procs = kit_processes(paths, kit)
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    for pid_file in ("daemon_pid.fl", "pid.fl"):
        (kit / pid_file).unlink(missing_ok=True)
    return len(procs)
