"""The heart job in the real FLARE simulator: FLARE's federated statistics run first, and every hospital trains
and evaluates on features standardised with the global mean and std they produced."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from consortium.config import load_site_configs
from consortium.tasks import heart
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_heart_job_standardises_with_the_federated_statistics(tmp_path):
    site_dir = REPO / "site_configs" / "heart"
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_dir), "--jobs", str(REPO / "jobs"),
           "--runs", str(tmp_path / "runs"), "simulate", "heart_fedavg", "--rounds", "1"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # nvflare writes ~/.nvflare
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "standardised with the global mean and std of the federated statistics of 4 sites" in proc.stdout

    out = tmp_path / "runs" / "heart_fedavg"
    history = json.loads((out / "metrics.json").read_text())
    stats = history["meta"]["feature_stats"]
    sites = load_site_configs(site_dir)
    pooled = np.concatenate([heart.load_site(cfg)[0][0] for cfg in sites.values()]).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], pooled.mean(axis=0), rtol=1e-8)  # no row left a site for this
    np.testing.assert_allclose(stats["std"], pooled.std(axis=0, ddof=1), rtol=1e-8)

    # each hospital scored the final model on its test rows standardised with exactly these global values
    model = heart.build_model()
    model.load_state_dict(torch.load(out / "global_model.pt"))
    scores = {name: heart.evaluate(model, heart.make_loaders(cfg, standardise=stats)[1]) for name, cfg in sites.items()}
    assert scores == {name: m["val_score"] for name, m in history["final"].items()}
    own = {name: heart.evaluate(model, heart.make_loaders(cfg, standardise="local")[1]) for name, cfg in sites.items()}
    assert own != scores  # the check has teeth: each site's own statistics would have scored differently
