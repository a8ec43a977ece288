"""Start the local consortium's server and hospitals at once, wait until every hospital has registered, and
shut them down.

`nvflare poc start` starts the kits one after another, a second apart, then checks readiness with a new admin
login every second; on 2026-12-07 (load 7) it returned 5 s after the last hospital had registered (registered
18:14:02.4, ready 18:14:07). Here every kit's own `startup/start.sh` starts at the same moment (a hospital
that is up before the server retries its registration every 2 s), and one admin session looks at the
registered sites every half second once the server's admin port accepts connections.

`nvflare poc stop` took 11-21 s, and once more than 60 s, after every process had said goodbye (2026-12-07,
load 9): `shutdown` asks FLARE through the admin API and watches the processes themselves.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

# Each kit's start.sh from its own folder, output appended to the kit's poc_console.log as `nvflare poc start`
# does; all in the new session of this one shell, so the consortium is one process group.
START_ALL = (
    'for kit in "$@"; do (cd "$kit" && echo "--- consortium poc up $(date) ---" >> poc_console.log'
    ' && exec bash startup/start.sh >> poc_console.log 2>&1) & done; wait'
)
POLL = 0.5  # seconds between looks at the registered sites


class StartError(RuntimeError):
    """The consortium did not come up; the message names the logs to read."""


def start_all(kits: list[Path], *, env: dict, log: Path) -> int:
    """Start every kit (server first in the list) at once; return the id of the process group they share."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", START_ALL, "start-kits", *map(str, kits)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return proc.pid


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_registered(*, admin: str, admin_kit: Path, admin_port: int, sites: list[str], alive, timeout: float,
                    logs: str) -> list[str]:  # fmt: skip
    """The registered sites once every one of `sites` is; StartError after `timeout` s or when `alive()` says
    the consortium's processes are gone. `logs` says where to look."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    deadline, sess, last = time.time() + timeout, None, "the server's admin port does not accept connections yet"
    try:
        while True:
            if sess is None and _accepts(admin_port):
                try:
                    wait = max(1.0, min(10.0, deadline - time.time()))
                    sess = new_secure_session(admin, str(admin_kit), timeout=wait)
                except Exception as exc:  # the server is still starting: try again
                    last = f"admin login failed: {exc}"
            if sess is not None:
                registered = sorted(c.name for c in sess.get_system_info().client_info)
                missing = sorted(set(sites) - set(registered))
                if not missing:
                    return registered
                last = f"waiting for {', '.join(missing)} to register"
            if not alive():
                raise StartError(f"the consortium's processes exited while starting ({last}); see {logs}")
            if time.time() > deadline:
                raise StartError(f"the consortium did not become ready in {timeout:.0f} s ({last}); see {logs}")
            time.sleep(POLL)
    finally:
        if sess is not None:
            sess.close()


def shutdown(*, admin: str, admin_kit: Path, running, timeout: float = 30.0) -> str | None:
    """FLARE's own shutdown of the server and every hospital through the admin API (running jobs aborted first,
    as `nvflare poc stop` does), then wait until `running()` (the kits' FLARE processes) is empty; None, or why
    the processes must be stopped directly."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    try:
        sess = new_secure_session(admin, str(admin_kit), timeout=10)
    except Exception as exc:
        return f"admin login failed ({exc})"
    try:
        for job in sess.list_jobs():
            if job.get("status") == "RUNNING":
                sess.abort_job(job["job_id"])
        sess.shutdown("all", wait=False)
    except Exception as exc:
        return f"FLARE's shutdown failed ({type(exc).__name__}: {exc})"
    finally:
        try:
            sess.close()
        except Exception:  # the server closed the connection itself
            pass
    deadline = time.time() + timeout
    while running():
        if time.time() > deadline:
            return f"FLARE processes still running {timeout:.0f} s after FLARE's shutdown"
        time.sleep(0.2)
    return None
