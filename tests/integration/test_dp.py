"""DP in the real FLARE simulator: DP-SGD epsilon reported every round, a site's budget refusal drops it,
and a job with too few sites left ends with the reason. Tiny generated sites, 2-3 rounds."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

JOB = """
purpose: lesion segmentation research
agreement: "1.0"
task: seg2d
rounds: {rounds}
local_epochs: 1
batch_size: 4
min_clients: {min_clients}
he: {he}
cross_site: false
dp_sgd: {{target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}}
"""
UPDATE_NOISE = "dp_update: {clip_norm: 1.0, noise_multiplier: 0.1, delta: 1.0e-5}\n"


def _simulate(tiny_sites, tmp_path, job: str):
    site_configs = next(iter(tiny_sites.values())).source.parent
    # site-b's own floor: at most epsilon 5.5 per job (site-a has none)
    with open(site_configs / "site-b.yaml", "a") as f:
        f.write("privacy:\n  max_epsilon: 5.5\n")
    (tmp_path / "jobs" / "dp").mkdir(parents=True)
    (tmp_path / "jobs" / "dp" / "job.yaml").write_text(job)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs)]
    cmd += ["--jobs", str(tmp_path / "jobs"), "--runs", str(tmp_path / "runs"), "simulate", "dp"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_epsilon_per_round_and_refusing_site_dropped(tiny_sites, tmp_path):
    """DP-SGD + Gaussian update noise + HE: site-b refuses round 2 (its epsilon would pass 5.5); min_clients 1
    lets the job go on with site-a."""
    proc = _simulate(tiny_sites, tmp_path, JOB.format(rounds=3, min_clients=1, he="true") + UPDATE_NOISE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "site-b dropped; training goes on with site-a" in proc.stdout
    assert "DP-SGD epsilon" in proc.stdout  # each site's round line reports its epsilon

    history = json.loads((tmp_path / "runs" / "dp" / "metrics.json").read_text())
    refusal = history["refused"]["site-b"]
    assert refusal["round"] == 1
    assert "refuses round 2" in refusal["reason"] and "max_epsilon 5.5" in refusal["reason"]
    assert "site-b.yaml" in refusal["reason"]  # names the file that sets the limit
    rounds = [r["sites"] for r in history["rounds"]]
    assert [sorted(r) for r in rounds] == [["site-a", "site-b"], ["site-a"], ["site-a"]]
    eps_a = [r["site-a"]["dp_epsilon"] for r in rounds]
    assert eps_a == sorted(eps_a) and eps_a[0] > 0 and 7.9 <= eps_a[-1] <= 8.0  # the job's target, reached
    assert all(r["site-a"]["dp_delta"] == 1e-5 for r in rounds)
    assert 0 < rounds[0]["site-b"]["dp_epsilon"] <= 5.5
    update_eps = [r["site-a"]["dp_update_epsilon"] for r in rounds]
    assert update_eps == sorted(update_eps) and update_eps[0] > 0
    assert set(history["final"]) == {"site-a", "site-b"}  # validation still runs everywhere
    assert (tmp_path / "runs" / "dp" / "global_model.pt").exists()  # HE: decrypted at the end
    # the audit attacked the decrypted final model at both sites, its reference models trained with DP-SGD
    audit = history["audit"]
    assert set(audit) == {"site-a", "site-b"} and all(m["reference_models"] == 2 for m in audit.values()), audit
    assert "audit site-a: membership AUC (0.5 = chance)" in proc.stdout


def test_job_ends_with_reason_when_too_few_sites_remain(tiny_sites, tmp_path):
    proc = _simulate(tiny_sites, tmp_path, JOB.format(rounds=3, min_clients=2, he="false"))
    assert proc.returncode != 0
    assert "round 2: only 1 site(s) contributed (site-a), fewer than the job's min_clients 2" in proc.stdout
    assert "site-b dropped: refused:" in proc.stdout  # the reason travels with the message
    history = json.loads((tmp_path / "runs/dp/workspace/server/simulate_job/metrics.json").read_text())
    assert "min_clients 2" in history["stopped"]
    # the round site-b refused is recorded, but was not aggregated from one site
    assert [r["aggregated"] for r in history["rounds"]] == [True, False]
    assert history["rounds"][1]["contributed"] == ["site-a"] and "site-b" in history["rounds"][1]["dropped"]
