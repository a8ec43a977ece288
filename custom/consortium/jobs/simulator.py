"""Run a job in FLARE 2.9's simulator, without its race that gives two simulated sites the same name.

FLARE's simulator runs each simulated site in a worker process started by a thread of its client runner. Each
thread sets `build_ctx["client_name"]` on the one dict the runner shares between its threads, then pickles that
dict to its worker (nvflare/private/fed/app/simulator/simulator_runner.py, `do_one_task`). When two threads do
this at the same moment, both workers get the later name: two processes then run as, say, site-b (one of them in
site-a's workspace), the server sees site-b twice and site-a never, and the job hangs or ends with wrong
results. The threads poll their workers on the same 1 s ticks, so the moment is shared often; it was the cause
of the simulator tests that failed now and then (2026-12-07: "identity=site-b" lines in site-a's log, both sites'
audit trails written as site-b).

`run()` does what `FedJob.simulator_run` does (export the job to a temporary folder, start the simulator in a
process group of its own, wait), but starts this module instead of FLARE's `simulator` module; this module
makes the shared dict keep "client_name" per thread, then hands over to FLARE's own simulator entry point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading


class PerThreadClientName(dict):
    """A dict whose "client_name" is each thread's own: what a thread stores there is what it reads back and
    what it pickles (the simulator sends this dict to the thread's worker with `conn.send`)."""

    KEY = "client_name"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._local = threading.local()
        self._local.name = super().get(self.KEY)

    def _name(self):
        return getattr(self._local, "name", super().get(self.KEY))

    def __setitem__(self, key, value):
        if key == self.KEY:
            self._local.name = value
        else:
            super().__setitem__(key, value)

    def __getitem__(self, key):
        return self._name() if key == self.KEY else super().__getitem__(key)

    def get(self, key, default=None):
        return self._name() if key == self.KEY else super().get(key, default)

    def snapshot(self) -> dict:
        """A plain dict with this thread's client name."""
        out = dict(super().items())
        out[self.KEY] = self._name()
        return out

    def __reduce__(self):  # pickling (conn.send) and copying give this thread's view as a plain dict
        return dict, (self.snapshot(),)


def patch_simulator() -> None:
    """Make FLARE's simulator client runner keep its build context's client name per thread."""
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorClientRunner

    if getattr(SimulatorClientRunner, "_consortium_patched", False):
        return
    original = SimulatorClientRunner.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if isinstance(self.build_ctx, dict) and not isinstance(self.build_ctx, PerThreadClientName):
            self.build_ctx = PerThreadClientName(self.build_ctx)

    SimulatorClientRunner.__init__ = __init__
    SimulatorClientRunner._consortium_patched = True


def run(job, workspace: str, *, clients: list[str], threads: int, log_config: str = "concise") -> int:
    """FedJob.simulator_run(workspace, clients=..., threads=..., log_config=...) through this module."""
    from nvflare.private.fed.app.utils import kill_child_processes

    with tempfile.TemporaryDirectory() as job_root:
        job.clients = list(clients)
        job.export_job(job_root)
        (name,) = os.listdir(job_root)
        cmd = [sys.executable, "-m", __name__, os.path.join(job_root, name), "-w", str(workspace),
               "-c", ",".join(clients), "-n", str(len(clients)), "-t", str(threads), "-l", log_config]  # fmt: skip
        process = subprocess.Popen(cmd, preexec_fn=os.setsid, env=os.environ.copy())
        try:
            return process.wait()
        except KeyboardInterrupt:
            kill_child_processes(os.getpid())
            return -9


def main() -> None:
    """FLARE's simulator entry point (nvflare.private.fed.app.simulator.simulator), patched first."""
    import argparse

    from nvflare.private.fed.app.simulator.simulator import define_simulator_parser, run_simulator
    from nvflare.private.fed.app.utils import version_check

    patch_simulator()
    version_check()
    parser = argparse.ArgumentParser()
    define_simulator_parser(parser)
    sys.exit(run_simulator(parser.parse_args()))


if __name__ == "__main__":
    main()
