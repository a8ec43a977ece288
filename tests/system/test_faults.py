"""Faults on a real local consortium (server + 3 hospitals over mTLS): a hospital killed mid-round, the server
killed and restarted from its kit, then resumed; `poc down` stops what was restarted by hand."""

from __future__ import annotations

import json
import time

import pytest

from consortium.deploy.poc import kill_kit, kit_processes, start_kit
from tests.conftest import TINY_B
from tests.system.conftest import kit, three_site_cli

pytestmark = [pytest.mark.system, pytest.mark.slow]

TINY_C = TINY_B.replace("org: site_b", "org: site_c").replace("Beta Clinic", "Gamma Hospital")


@pytest.fixture
def cli3(tmp_path):
    yield from three_site_cli(tmp_path, TINY_C)


def server_history(cli, job_id: str, *, rounds: int, timeout: float = 300) -> dict:
    """The server's metrics.json of a running job once it has `rounds` rounds."""
    path = kit(cli, "localhost") / job_id / "metrics.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            history = json.loads(path.read_text())
            if len(history["rounds"]) >= rounds:
                return history
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not reach {rounds} rounds in {timeout} s")


def kill(cli, name: str) -> int:
    """SIGKILL every process started from one kit (by PID, found by the kit's folder)."""
    return kill_kit(cli.paths, kit(cli, name))


def wait_finished(cli, job_id: str, timeout: float = 400) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = cli("status", check=False).stdout
        line = next((ln for ln in out.splitlines() if job_id in ln and ln.startswith("job ")), "")
        if "FINISHED" in line:
            return line
        time.sleep(3)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def submitted_id(proc) -> str:
    return proc.stdout.split(" as ")[1].split()[0].rstrip(",")


def test_a_site_killed_mid_round_then_the_server_restarted_and_resumed(cli3):
    cli3("poc", "up")
    # -- a hospital lost mid-round: the round waits at most round_timeout, the job completes with the others
    sub = cli3("submit", "fedavg", "--rounds", "6", "--round-timeout", "15", "--no-wait")
    job = submitted_id(sub)
    server_history(cli3, job, rounds=2)
    assert kill(cli3, "site-c") > 0
    killed_at = time.time()
    assert "FINISHED:COMPLETED" in wait_finished(cli3, job)
    assert "FINISHED:COMPLETED" in cli3("download", job).stdout  # a --no-wait job's results, fetched afterwards
    history = json.loads((cli3.tmp / "runs" / "fedavg" / "metrics.json").read_text())
    assert len(history["rounds"]) == 6
    lost = [r for r in history["rounds"] if "site-c" in r["dropped"]]
    assert lost, history["rounds"]
    first = lost[0]
    assert "round timeout (15 s)" in first["dropped"]["site-c"] or "disconnected" in first["dropped"]["site-c"]
    assert first["contributed"] == ["site-a", "site-b"] and set(first["sites"]) == {"site-a", "site-b"}
    later = history["rounds"][first["round"] + 1 :]
    assert later and all(r["contributed"] == ["site-a", "site-b"] and r["not_awaited"] == ["site-c"] for r in later)
    assert set(history["final"]) == {"site-a", "site-b"}  # final validation among the present sites
    assert history["cross_site"]["sites"] == ["site-a", "site-b"]
    print(f"site lost: job completed {time.time() - killed_at:.0f} s after the kill; lost round {first['round'] + 1}")
    status = cli3("status").stdout
    assert "site-c: round" in status and "dropped from this round" in status

    # -- the server killed after round 2 and started again from its kit; the job resumes from round 3
    sub = cli3("submit", "fedavg", "--rounds", "4", "--round-timeout", "15", "--no-wait")
    job = submitted_id(sub)
    server_history(cli3, job, rounds=2)
    kill(cli3, "localhost")
    start_kit(cli3.paths, kit(cli3, "localhost"))
    deadline = time.time() + 120
    status = ""
    while "site-a, site-b" not in status and time.time() < deadline:
        status = cli3("status", check=False).stdout
        time.sleep(3)
    line = next(ln for ln in status.splitlines() if ln.startswith(f"job {job}"))
    assert "stale: no server process runs it" in line or "ABANDONED" in line or "ABNORMAL" in line, status
    resumed = cli3("submit", "fedavg", "--rounds", "4", "--round-timeout", "15", "--resume", timeout=600)
    assert f"continuing job {job}" in resumed.stdout and "FINISHED:COMPLETED" in resumed.stdout, resumed.stdout
    history = json.loads((cli3.tmp / "runs" / "fedavg" / "metrics.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    assert history["resumed"][0]["from_job"] == job and history["resumed"][0]["after_round"] >= 2
    down = cli3("poc", "down")
    assert "restarted by hand" in down.stdout and not kit_processes(cli3.paths)
