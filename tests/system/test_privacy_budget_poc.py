"""A hospital's privacy budget across jobs on a real POC consortium: site-b (budget epsilon 10) trains one DP-SGD
job at epsilon 6, is killed mid-job and restarted from its kit (every round it sent is in its ledger), and refuses
the next job before it reads any data; the job goes on with site-a (min_clients 1), the refusal shows in
`consortium submit` and `consortium status`, and `consortium privacy ledger` prints site-b's ledger."""

import json
import shutil

import pytest

from consortium.deploy import poc
from consortium.deploy.admin import clients, session
from consortium.deploy.poc import PocPaths, read_state
from consortium.privacy import spending
from tests.conftest import REPO
from tests.system.conftest import wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

JOB = """base: fedavg_dp
description: DP-SGD at epsilon 6 per site, 2 rounds, for the budget test
rounds: 2
local_epochs: 1
batch_size: 4
min_clients: 1
he: false
cross_site: false
audit: false
dp_sgd: {target_epsilon: 6, delta: 1.0e-5, max_grad_norm: 1.0}
"""


def why_not_completed(run_dir, meta) -> str:
    """What the server's run record and log say about a job that did not complete (the assertion's message)."""
    history = json.loads((run_dir / "metrics.json").read_text())
    rounds = [(r["round"], r.get("contributed"), r.get("dropped")) for r in history["rounds"]]
    lines = [line for log in run_dir.glob("download/**/log.txt") for line in log.read_text().splitlines()
             if "[progress]" in line or " ERROR " in line and "log_streaming" not in line]  # fmt: skip
    return f"{meta['status']}: stopped {history.get('stopped')!r}; rounds {rounds}; server log:\n" + "\n".join(
        lines[-40:]
    )


def test_a_site_refuses_the_job_that_would_pass_its_budget_across_jobs(tiny_sites, tmp_path):
    from tests.system.conftest import cli_runner

    site_configs = next(iter(tiny_sites.values())).source.parent
    with open(site_configs / "site-b.yaml", "a") as f:
        f.write("privacy:\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    jobs = tmp_path / "jobs"
    for name in ("fedavg", "fedavg_dp"):  # the repo's jobs (their purpose and agreement too), and a small variant
        shutil.copytree(REPO / "jobs" / name, jobs / name)
    (jobs / "dp_budget").mkdir()
    (jobs / "dp_budget" / "job.yaml").write_text(JOB)
    cli = cli_runner(site_configs, tmp_path)
    paths = PocPaths(tmp_path / "ws" / "poc-consortium")
    cli("poc", "up")
    try:
        state = read_state(paths)
        kit_b = paths.prod(state["project"]) / "site-b"
        first = cli("--jobs", str(jobs), "submit", "dp_budget", "--rounds", "3", "--round-timeout", "40", "--no-wait")
        job1 = first.stdout.split("submitted job 'dp_budget' as ")[1].split()[0]
        # the hospital crashes mid-job, after sending its first update, and is restarted from its kit
        wait_for(lambda: 1 in spending.read(spending.path(kit_b)).runs.get(job1, spending.Run("")).rounds,
                 "site-b's first round in its ledger")  # fmt: skip
        poc.kill_kit(paths, kit_b)
        poc.start_kit(paths, kit_b)
        with session(state["admin"], poc.admin_kit(paths, state)) as sess:
            meta = wait_for(lambda: (m := sess.get_job_meta(job1))["status"].startswith("FINISHED") and m,
                            "the first job to finish", timeout=900, poll=5)  # fmt: skip
            wait_for(lambda: "site-b" in clients(sess), "site-b to register again")
        cli("download", job1)
        assert meta["status"] == "FINISHED:COMPLETED", why_not_completed(tmp_path / "runs" / "dp_budget", meta)
        # site-b's updates came inside its result messages: had the server still to download them from site-b's
        # job process when it was killed, FLARE would have ended the whole job (jobs/build.py, INLINE_RESULTS)
        server_log = (tmp_path / "runs" / "dp_budget" / "download" / "workspace" / "log.txt").read_text()
        assert "submit_update process. client_name:site-b" in server_log and "[client] download ref=" not in server_log
        sent = [r["round"] + 1 for r in json.loads((tmp_path / "runs" / "dp_budget" / "metrics.json").read_text())[
            "rounds"] if "site-b" in r["contributed"]]  # fmt: skip
        ledger = spending.read(spending.path(kit_b))
        assert list(ledger.runs) == [job1] and not ledger.problems, ledger
        assert 1 in sent and set(sent) <= ledger.runs[job1].rounds, (sent, ledger.runs[job1].rounds)  # sent: counted
        spent_1 = ledger.runs[job1].spent["dp_sgd"]["epsilon"]
        assert 0 < spent_1 and ledger.runs[job1].counted() == (max(6.0, spent_1), 1e-5)

        second = cli("--jobs", str(jobs), "submit", "dp_budget")
        job2 = second.stdout.split("submitted job 'dp_budget' as ")[1].split()[0]
        assert "FINISHED:COMPLETED" in second.stdout, second.stdout[-3000:]
        assert "site-b dropped; training goes on with site-a" in second.stdout
        assert f"[progress] site-b refused: site site-b refuses job {job2}: this job plans" in second.stdout
        assert "[progress] round 2/2: 1 of" in second.stdout

        history = json.loads((tmp_path / "runs" / "dp_budget" / "metrics.json").read_text())
        reason = history["refused"]["site-b"]["reason"]
        for part in (f"site site-b refuses job {job2}", "plans to spend epsilon 6.00", "privacy.budget in",
                     "site-b.yaml: epsilon 10", f"spent by {job1} (epsilon {max(6.0, spent_1):.2f}",
                     "Nothing was trained or spent", "privacy ledger --site site-b"):  # fmt: skip
            assert part in reason, (part, reason)
        assert [sorted(r["contributed"]) for r in history["rounds"]] == [["site-a"], ["site-a"]]

        # refused before its data were read or anything trained: the refusal comes before any data line
        log_b = (kit_b / job2 / "log.txt").read_text()
        refused_at = log_b.index(f"site site-b refuses job {job2}")
        assert "DP-SGD over" not in log_b and "site-b round" not in log_b
        assert " usable in " not in log_b[:refused_at], log_b[:refused_at][-2000:]
        ledger = spending.read(spending.path(kit_b))
        assert ledger.runs[job2].refused and not ledger.runs[job2].rounds and ledger.runs[job2].planned is None
        assert ledger.counted() == pytest.approx((max(6.0, spent_1), 1e-5))

        status = cli("status")
        assert f"errors reported by sites in job {job2}:" in status.stdout
        assert f"site-b refused to train (dropped from the remaining rounds): site site-b refuses job {job2}" in (
            status.stdout
        )
        table = cli("privacy", "ledger", "--site", "site-b")
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["job", "rounds", "epsilon", "delta", "counted", "accountant", "time"]
        assert lines[2].split()[0] == job1 and "dp_sgd:" in lines[2]
        assert lines[3].split()[:3] == [job2, "0", "refused"]
        assert f"left: epsilon {10 - max(6.0, spent_1):.2f}" in table.stdout and "site-b.yaml" in table.stdout
    finally:
        cli("poc", "down", check=False)
