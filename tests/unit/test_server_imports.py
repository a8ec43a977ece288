"""The server never imports the site executor: its workflows, aggregators and the HE filters load neither
consortium.executors nor opacus (site-only code), checked in a fresh interpreter."""

import subprocess
import sys

SERVER_MODULES = [
    "consortium.workflows.fedavg",
    "consortium.workflows.cross_site",
    "consortium.workflows.results",
    "consortium.workflows.rounds",
    "consortium.workflows.checkpoint",
    "consortium.workflows.ending",
    "consortium.aggregators.he",
    "consortium.aggregators.weighted",
    "consortium.filters.he",
    "consortium.he.wire",
]
SITE_ONLY = ("consortium.executors", "opacus")


def test_server_modules_do_not_load_the_site_executor_or_opacus():
    code = (
        "import importlib, sys\n"
        f"for m in {SERVER_MODULES!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {SITE_ONLY!r} or m.startswith({SITE_ONLY!r})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"server modules loaded site-only code: {proc.stdout}"
