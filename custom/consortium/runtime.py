"""Process handling shared by the simulator's worker processes (training jobs and the pre-flight)."""

from __future__ import annotations

import os
import signal


def stop_simulator_on_term() -> None:
    """FLARE's simulator runs its server and clients in process groups of their own, which a stop signal to
    this worker (or to its process group) does not reach. On SIGTERM or SIGINT, stop those groups, then exit."""
    import psutil

    def stop(signum, frame):
        own = os.getpgid(0)
        groups = set()
        for child in psutil.Process().children(recursive=True):
            try:
                groups.add(os.getpgid(child.pid))
            except ProcessLookupError:
                pass
        for group in groups - {own}:
            try:
                os.killpg(group, signal.SIGTERM)
            except ProcessLookupError:
                pass
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, stop)  # Ctrl-C reaches the terminal's process group only, not the simulator's
