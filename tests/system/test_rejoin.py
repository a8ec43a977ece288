"""A hospital killed mid-job and restarted from its kit rejoins the running job (server component in local/)."""

import functools
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from consortium.deploy import poc
from consortium.deploy.admin import session
from consortium.deploy.poc import PocPaths, kill_group, read_state
from tests.system.conftest import wait_for as shared_wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

COMPONENT = {"id": "rejoin_running_jobs", "path": "consortium.deploy.rejoin.RejoinRunningJobs", "args": {}}
ROUNDS = 20


def kit_processes(kit: Path) -> dict[int, int]:
    """{pid: pgid} of the processes whose command line names the kit folder or that run inside it."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
            cwd = os.readlink(proc / "cwd")
            pgid = os.getpgid(int(proc.name))
        except OSError:
            continue
        if any(a == str(kit) or a.startswith(f"{kit}/") for a in args) or cwd == str(kit) or cwd.startswith(f"{kit}/"):
            found[int(proc.name)] = pgid
    return found


def kill_kit(paths: PocPaths, kit: Path) -> None:
    """SIGKILL every process of one kit (its respawn loop included) by PID, as a crash or power cut would."""
    poc.kill_kit(paths, kit)
    wait_for(lambda: not kit_processes(kit), f"processes of {kit.name} to end", timeout=60)


def start_kit(kit: Path, env: dict) -> int:
    """Start a kit with its own startup/start.sh in a new process group; returns the group id."""
    with open(kit / "restart_console.log", "a") as out:
        proc = subprocess.Popen(
            ["bash", str(kit / "startup" / "start.sh")],
            cwd=kit,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    return proc.pid


# this test's waits default to 600 s (a round of a restarted site, its redeployment)
wait_for = functools.partial(shared_wait_for, timeout=600)


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_restarted_site_rejoins_the_running_job(cli):
    paths = PocPaths(cli.tmp / "ws" / "poc-consortium")
    cli("poc", "up")
    state = read_state(paths)
    prod = paths.prod(state["project"])
    server, site_b = prod / "localhost", prod / "site-b"
    groups = []
    try:
        # provisioning put the component into the server kit's local/ (both resources files)
        for name in ("resources.json", "resources.json.default"):
            resources = json.loads((server / "local" / name).read_text())
            assert COMPONENT in resources["components"], name
        sub = cli("submit", "fedavg", "--rounds", str(ROUNDS), "--round-timeout", "30", "--no-wait")
        job_id = sub.stdout.split("submitted job 'fedavg' as ")[1].split()[0]
        running_log = server / job_id / "log.txt"  # the server's job folder, archived when the job ends
        wait_for(lambda: f"[progress] round 2/{ROUNDS}:" in text(running_log), "round 2 at the server")

        kill_kit(paths, site_b)  # the hospital's parent, its job process and its respawn loop: gone mid-job
        groups.append(start_kit(site_b, cli.env))
        rejoined = f"site-b re-registered during job {job_id}: app redeployed"
        wait_for(lambda: rejoined in text(server / "log.txt"), "the server to redeploy to site-b", timeout=300)

        with session(state["admin"], prod / state["admin"]) as sess:
            meta = wait_for(
                lambda: (m := sess.get_job_meta(job_id))["status"].startswith("FINISHED") and m,
                "the job to finish",
                timeout=1200,
                poll=5,
            )
            server_job_log = "".join(t for t in sess.get_job_logs(job_id, target="server")["logs"].values() if t)
        assert meta["status"] == "FINISHED:COMPLETED", meta
        assert f"{rejoined}, job process has {{'clients': ['site-a', 'site-b']}}, site job process started" in text(
            server / "log.txt"
        )
        # the redeploy replaced site-b's job folder: every round in it was trained by the restarted site
        trained = re.findall(r"site-b round (\d+): Dice of received model", text(site_b / job_id / "log.txt"))
        rounds_b = [int(r) for r in trained]
        assert rounds_b and rounds_b[0] >= 2 and rounds_b[-1] == ROUNDS - 1, rounds_b
        assert f"[progress] round {ROUNDS}/{ROUNDS}: 2 of 2 sites contributed" in server_job_log, server_job_log[-3000:]
        cli("download", job_id)
        history = json.loads((cli.tmp / "runs" / "fedavg" / "metrics.json").read_text())
        back = [r["round"] for r in history["rounds"] if "site-b" in r["contributed"] and r["round"] >= 2]
        assert back and back[-1] == ROUNDS - 1 and not history["rounds"][-1]["dropped"], history["rounds"]
    finally:
        cli("poc", "down", check=False)
        for pgid in groups:
            kill_group(pgid)
        for pgid in set(kit_processes(prod).values()):  # job processes FLARE started in groups of their own
            kill_group(pgid)
    assert not kit_processes(prod), "processes of the consortium were left behind"
