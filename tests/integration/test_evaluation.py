"""End of a job in the real FLARE simulator: SCAFFOLD rounds with server momentum, per-site fine-tuning,
cross-site evaluation."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.integration

JOB = """
description: SCAFFOLD with fine-tuning, for the test
purpose: lesion segmentation research
agreement: "1.0"
task: seg2d
rounds: 2
local_epochs: 1
lr: 0.003
batch_size: 8
min_clients: 2
he: false
algorithm: scaffold
server_momentum: 0.5
finetune_epochs: 1
train_alone: false  # so a site's cross-site model is its fine-tuned one (train_alone: test_simulator.py)
"""


def test_cross_site_matrix_scaffold_and_personalization(small_sites, tmp_path):
    site_configs = next(iter(small_sites.values())).source.parent
    jobs = tmp_path / "jobs"
    (jobs / "eval").mkdir(parents=True)
    (jobs / "eval" / "job.yaml").write_text(JOB)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--jobs", str(jobs)]
    cmd += ["--runs", str(tmp_path / "runs"), "simulate", "eval"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cross-site: global model" in proc.stdout
    # every simulator run ends with its report
    assert (tmp_path / "runs" / "eval" / "report" / "report.html").is_file() and "report: " in proc.stdout

    out = tmp_path / "runs" / "eval"
    history = json.loads((out / "metrics.json").read_text())
    assert history["meta"]["algorithm"] == "scaffold" and len(history["rounds"]) == 2
    assert history["meta"]["server_momentum"] == 0.5
    # every site took both rounds, so each knew the previous global model and added the momentum term
    log = (out / "simulate.log").read_text()
    assert "server momentum: this site did not receive" not in log
    matrix = history["cross_site"]
    assert json.loads((out / "cross_site.json").read_text()) == matrix
    sites = ["site-a", "site-b"]
    assert matrix["models"] == ["global"] + sites and matrix["sites"] == sites
    scores = matrix["scores"]
    assert all(0.0 <= scores[m][s] <= 1.0 for m in matrix["models"] for s in sites)
    final = history["final"]
    for site in sites:
        # the global row is the final global model on each site's data: the final validation saw the same
        assert scores["global"][site] == pytest.approx(final[site]["val_score"], abs=1e-6)
        # a site's own model is its fine-tuned one: on its own data it scores what fine-tuning reported
        assert scores[site][site] == pytest.approx(final[site]["personalized_score"], abs=1e-6)

    # SCAFFOLD's control variates travelled with the model but are not part of the saved global model
    state = torch.load(out / "global_model.pt")
    assert not any(k.startswith("scaffold_c::") for k in state)
    from consortium.tasks import get_task

    get_task("seg2d").build_model().load_state_dict(state)
    # every site keeps its fine-tuned model in its own workspace
    personal = sorted((out / "workspace").rglob("personalized_model.pt"))
    assert [p.relative_to(out / "workspace").parts[0] for p in personal] == sites
    get_task("seg2d").build_model().load_state_dict(torch.load(personal[0]))
