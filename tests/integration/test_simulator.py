"""The FedAvg job in the real FLARE simulator: 2 generated hospitals x 2 rounds, Dice improves."""

import json
import os
import subprocess
import sys

import pytest
import torch

from consortium import constants as C
from consortium.tasks import get_task
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def simulate_cmd(small_sites, tmp_path, *args: str) -> tuple[list[str], dict]:
    """`consortium simulate ARGS` on the fixture's sites with this repository's jobs, results under tmp_path/runs;
    and its environment (nvflare writes ~/.nvflare, so HOME is the test's own)."""
    site_configs = next(iter(small_sites.values())).source.parent
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--jobs", str(REPO / "jobs"),
           "--runs", str(tmp_path / "runs"), "simulate", *args]  # fmt: skip
    return cmd, {**os.environ, "HOME": str(tmp_path / "home")}


def test_fedavg_simulation_improves_dice(small_sites, tmp_path):
    cmd, env = simulate_cmd(small_sites, tmp_path, "fedavg", "--rounds", "2", "--local-epochs", "3")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round 2/2: 2 of 2 sites contributed" in proc.stdout

    out = tmp_path / "runs" / "fedavg"
    history = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1]
    first = history["rounds"][0]["sites"]
    assert set(first) == {"site-a", "site-b"}
    task = get_task("seg2d")
    for name, m in first.items():  # 3 passes over the site's training batches; uniform aggregation weights
        assert m["steps"] == 3 * len(task.make_loaders(small_sites[name], batch_size=8)[0]) and m["weight"] == 1
    initial = {s: m["val_score"] for s, m in first.items()}  # what the initial global model scored
    final = {s: m["val_score"] for s, m in history["final"].items()}
    assert set(final) == set(initial)
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    # the initial model predicts no lesion anywhere: it scores only on the slices without one
    assert mean(final) > mean(initial) + 0.1, (initial, final)

    state = torch.load(out / "global_model.pt")
    task.build_model().load_state_dict(state)  # the saved global model loads into the task's model

    # the sites' updates arrived inside their result messages: the server never had to download arrays from a
    # site afterwards (a site lost between the two would make FLARE end the server's job process; jobs/build.py)
    server_log = (out / "workspace" / "server" / "log.txt").read_text()
    assert "submit_update process. client_name:site-a" in server_log
    assert "[client] download ref=" not in server_log

    # train_alone (the base job): each site trained the initial model alone with the same budget, and the
    # cross-site matrix scores those models on every site's data
    alone = history["alone"]
    assert set(alone) == {"site-a", "site-b"}
    for name, m in alone.items():
        assert m["steps"] == sum(r["sites"][name]["steps"] for r in history["rounds"])
        assert history["cross_site"]["scores"][name][name] == pytest.approx(m["alone_score"], abs=1e-6)
    assert "trained alone, validation Dice" in proc.stdout

    # the membership-inference audit ends every job: each site attacked the final model, only scores came back
    audit = history["audit"]
    assert set(audit) == {"site-a", "site-b"} and history["meta"]["audit"] == {"references": 2, "epochs": 2}
    for name, m in audit.items():
        assert set(m) == {*C.AUDIT_KEYS, C.METRIC_AUDIT_SECONDS}, m  # no error; nothing about a single patient
        assert m["n_members"] + m["n_nonmembers"] <= 10 and m["n_nonmembers"] >= 1 and m["reference_models"] == 2
        assert 0 <= m["loss_auc"] <= 1 and 0 <= m["calibrated_auc"] <= 1
        assert f"[progress] audit {name}: membership AUC (0.5 = chance) loss attack {m['loss_auc']:.3f}" in proc.stdout
    report = (out / "report" / "report.md").read_text()
    assert "## What the model reveals" in report and f"| site-a | no DP | {audit['site-a']['n_members']} / " in report


def test_he_job_matches_plaintext_fedavg(small_sites, tmp_path):
    """One round of the (HE) fedavg job in the simulator gives the plaintext FedAvg global model within CKKS precision,
    while the server's checkpoint is ciphertext."""

    for job in ("fedavg_plain", "fedavg"):
        cmd, env = simulate_cmd(small_sites, tmp_path, job, "--rounds", "1", "--local-epochs", "1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint is ciphertext" in proc.stdout
    he_out = tmp_path / "runs" / "fedavg"
    encrypted = torch.load(he_out / "global_model.encrypted.pt", weights_only=False)
    assert set(encrypted) == {"__he__"} and all(isinstance(c, bytes) for c in encrypted["__he__"]["chunks"])
    plain = torch.load(tmp_path / "runs" / "fedavg_plain" / "global_model.pt")
    released = torch.load(he_out / "global_model.pt")
    err = max(float((plain[k].float() - released[k].float()).abs().max()) for k in plain)
    print(f"max abs error, HE vs plaintext global model after one round: {err:.2e}")
    assert set(plain) == set(released) and err < 1e-4

    # cross-site evaluation ran with HE on: the server forwarded ciphertexts, each site decrypted them
    he_matrix = json.loads((he_out / "metrics.json").read_text())["cross_site"]
    plain_matrix = json.loads((tmp_path / "runs" / "fedavg_plain" / "metrics.json").read_text())["cross_site"]
    assert he_matrix["models"] == ["global", "site-a", "site-b"] and he_matrix["sites"] == ["site-a", "site-b"]
    for model in he_matrix["models"]:
        for site in he_matrix["sites"]:
            assert he_matrix["scores"][model][site] == pytest.approx(plain_matrix["scores"][model][site], abs=0.02)


def test_stopping_simulate_stops_the_simulator(small_sites, tmp_path):
    """FLARE's simulator runs its server and clients in process groups of their own: a stop signal to the
    `consortium simulate` process group must still leave no simulator process behind."""
    import signal
    import time

    import psutil

    cmd, env = simulate_cmd(small_sites, tmp_path, "fedavg", "--rounds", "200")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workspace = str(tmp_path / "runs" / "fedavg" / "workspace")

    def simulator_processes():
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if "nvflare" in cmdline and workspace in cmdline:
                found.append(p)
        return found

    try:
        deadline = time.time() + 300
        while not simulator_processes() and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
        assert simulator_processes(), "the simulator never started"
        time.sleep(5)  # let its clients start as well
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while simulator_processes() and time.time() < deadline:
            time.sleep(1)
        assert simulator_processes() == []
    finally:  # never leave processes behind, whatever failed: stop them by their process group
        for p in simulator_processes():
            try:
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
