"""A job without DP loads no Opacus in the site job process: its import took about 40% of that process's
start (make demo starts one per hospital per job), so the modules every site loads import it only for DP."""

import subprocess
import sys

# what a hospital's job process of a job without DP imports: the executor and its kit's privacy scope filter
SITE_MODULES = ("consortium.executors.trainer", "consortium.filters.dp", "consortium.privacy.budget")


def test_site_modules_of_a_job_without_dp_do_not_import_opacus():
    code = (f"import sys\nfor m in {SITE_MODULES!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('opacus')))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"imported without DP: {out}"


def test_accountant_still_reaches_opacus_when_used():
    from consortium.privacy.accountant import spent

    got = spent(((1.0, 0.01, 100),), 1e-5, methods=("rdp",))
    assert got.accountant == "rdp" and 0 < got.epsilon < 10
