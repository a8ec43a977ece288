"""The audit trail in a real FLARE simulator run of the (HE) fedavg job: the server and each site kept their own
chain, and every payload one side recorded as sent the other recorded as received, with the same hash; a broken
trail fails closed and fast: a site's drops that site, the server's stops the job."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from consortium import constants as C
from consortium import runrecord as R
from consortium.audit_trail import chain
from consortium.config import load_site_configs
from consortium.data.synth import generate_site
from tests.conftest import REPO, TINY_A, TINY_B, write_site_configs
from tests.integration.test_simulator import simulate_cmd

pytestmark = pytest.mark.integration


def _key(record):
    return record["job"], record["task_id"]


def test_each_sides_sent_hash_is_the_other_sides_received_hash(tiny_sites, tmp_path):
    cmd, env = simulate_cmd(tiny_sites, tmp_path, "fedavg", "--rounds", "2", "--local-epochs", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workspace = tmp_path / "runs" / "fedavg" / "workspace"
    trails = {p: chain.read(workspace / p / C.TRAIL_FOLDER / C.TRAIL_FILE) for p in ("server", *tiny_sites)}
    server = trails.pop("server")
    for site, records in trails.items():
        from_server = {_key(r): r for r in server if r["peer"] == site and r["direction"] == "sent"}
        to_server = {_key(r): r for r in server if r["peer"] == site and r["direction"] == "received"}
        received = {_key(r): r for r in records if r["direction"] == "received"}
        sent = {_key(r): r for r in records if r["direction"] == "sent"}
        assert set(received) == set(from_server) and set(sent) == set(to_server) and sent
        for mine, theirs in ((received, from_server), (sent, to_server)):
            for key, record in mine.items():
                other = theirs[key]
                assert (record["sha256"], record["bytes"], record["he"]) == (other["sha256"], other["bytes"],
                                                                             other["he"]), (site, record)  # fmt: skip
                assert (record["task"], record["round"]) == (other["task"], other["round"])
        train = [r for r in records if r["task"] == C.TASK_TRAIN]
        assert sorted((r["round"], r["direction"]) for r in train) == [
            (0, "received"), (0, "sent"), (1, "received"), (1, "sent")]  # fmt: skip
        # HE: the site's update left it as ciphertext, and round 1's global model came back as ciphertext
        assert all(r["he"] and r["kind"] == "WEIGHTS" for r in train if r["direction"] == "sent")
        assert [r["he"] for r in train if r["direction"] == "received"] == [False, True]
        assert all(r["participant"] == site and r["dp_epsilon"] is None for r in records)

    # the server summarised the job's exchanges into its run record, and the CLI verifies against its head
    run = tmp_path / "runs" / "fedavg"
    exchanges = json.loads((run / C.METRICS_FILE).read_text())[R.EXCHANGES]
    assert exchanges[R.Exchanges.HEAD] == server[-1]["hash"] and exchanges[R.Exchanges.PROBLEM] is None
    for site in tiny_sites:
        counts = {w: exchanges[R.Exchanges.SITES][site][w][R.Exchanges.COUNT] for w in ("to_site", "from_site")}
        by_way = {"to_site": "sent", "from_site": "received"}
        assert counts == {w: sum(r["peer"] == site and r["direction"] == d for r in server) for w, d in by_way.items()}
    verify = subprocess.run([*cmd[: cmd.index("simulate")], "audit", "verify", str(run)], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr
    report = (run / "report" / "report.md").read_text()
    assert "## Exchanges per site" in report and "| site-a |" in report


TINY_C = TINY_B.replace("org: site_b", "org: site_c").replace("Beta Clinic", "Gamma Hospital")
SHORT = """base: fedavg
description: one short round (HE) for the audit trail's fail-closed test
rounds: 1
local_epochs: 1
finetune_epochs: 0
train_alone: false
cross_site: false
audit: false
round_timeout: 120
"""
CUT_SHORT = '{"seq": 0, "prev_hash": "00'  # a record whose write was cut short: no line end


def _break_when_created(workspace, participant: str) -> threading.Thread:
    """Write a cut-short line into `participant`'s trail as soon as the simulator has made its workspace (the
    simulator wipes the workspace when it starts, so the file cannot be laid there before). Were the
    participant's first record written first, the line would still break the trail for every later record."""
    trail = workspace / participant / C.TRAIL_FOLDER / C.TRAIL_FILE

    def run():
        deadline = time.time() + 600
        while not trail.parent.parent.is_dir() and time.time() < deadline:
            time.sleep(0.01)
        trail.parent.mkdir(parents=True, exist_ok=True)
        with trail.open("a") as f:
            f.write(CUT_SHORT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def three_sites(tmp_path):
    """Three generated hospitals and a jobs folder with the short job at min_clients 2 and 3."""
    folder = write_site_configs(tmp_path / "site_configs", {"site-a": TINY_A, "site-b": TINY_B, "site-c": TINY_C})
    for cfg in load_site_configs(folder).values():
        generate_site(cfg, seed=0, size=32)
    jobs = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs" / "fedavg", jobs / "fedavg")
    for n in (2, 3):
        (jobs / f"short{n}").mkdir()
        (jobs / f"short{n}" / "job.yaml").write_text(SHORT + f"min_clients: {n}\n")
    return folder, jobs


def _simulate(tmp_path, three_sites, job: str, broken: str):
    folder, jobs = three_sites
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(folder), "--jobs", str(jobs), "--runs",
           str(tmp_path / "runs"), "simulate", job]  # fmt: skip
    workspace = tmp_path / "runs" / job / "workspace"
    breaker = _break_when_created(workspace, broken)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    breaker.join(5)
    return proc, workspace


@pytest.mark.slow
def test_a_site_whose_trail_is_broken_is_dropped_and_the_job_goes_on_or_ends(three_sites, tmp_path):
    proc, workspace = _simulate(tmp_path, three_sites, "short2", broken="site-c")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    trail_c = workspace / "site-c" / C.TRAIL_FOLDER / C.TRAIL_FILE
    history = json.loads((tmp_path / "runs" / "short2" / C.METRICS_FILE).read_text())
    (first,) = history["rounds"]
    assert first["contributed"] == ["site-a", "site-b"] and set(first["sites"]) == {"site-a", "site-b"}
    reason = first["dropped"]["site-c"]
    assert str(trail_c) in reason and f"consortium audit verify {trail_c}" in reason, reason
    assert "site-c could not record the received payload" in reason
    assert trail_c.read_text() == CUT_SHORT  # nothing was linked to the broken line
    # the server recorded what site-c sent back: an error without a body, matched to its task
    server = chain.read(workspace / "server" / C.TRAIL_FOLDER / C.TRAIL_FILE)
    from_c = [r for r in server if r["peer"] == "site-c" and r["direction"] == "received"]
    assert from_c and all(r["rc"] == "EXECUTION_EXCEPTION" and r["kind"] == "none" for r in from_c)
    sent_to_c = {r["task_id"] for r in server if r["peer"] == "site-c" and r["direction"] == "sent"}
    assert {r["task_id"] for r in from_c} == sent_to_c  # one error reply per task, no task sent again

    # min_clients 3: the round ends as soon as site-c's error came, and the job with it, saying why
    proc, workspace = _simulate(tmp_path, three_sites, "short3", broken="site-c")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "fewer than the job's min_clients 3" in out and "site-c dropped: audit trail: site-c could not" in out
    assert f"consortium audit verify {workspace / 'site-c' / C.TRAIL_FOLDER / C.TRAIL_FILE}" in out


def test_a_server_whose_trail_is_broken_does_not_run_the_job(three_sites, tmp_path):
    proc, workspace = _simulate(tmp_path, three_sites, "short2", broken="server")
    out = proc.stdout + proc.stderr
    trail = workspace / "server" / C.TRAIL_FOLDER / C.TRAIL_FILE
    assert proc.returncode == 1, out[-4000:]
    assert "[progress] audit trail: the server" in out and f"consortium audit verify {trail}" in out, out[-4000:]
    assert trail.read_text() == CUT_SHORT
    for site in ("site-a", "site-b", "site-c"):  # no model reached a site: nothing it received carried one
        site_trail = workspace / site / C.TRAIL_FOLDER / C.TRAIL_FILE
        received = [r for r in chain.read(site_trail) if r["direction"] == "received"] if site_trail.exists() else []
        assert all(r["kind"] == "none" for r in received), (site, received)
