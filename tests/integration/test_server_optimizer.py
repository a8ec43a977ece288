"""FedAdam in the real FLARE simulator under HE: the server only sums ciphertexts of w_i - w_t, every site
steps the same aggregate, and all sites hold the same global model every round."""

import json
import subprocess

import pytest
import torch

from consortium import constants as C
from consortium.tasks import get_task
from tests.integration.test_simulator import simulate_cmd

pytestmark = pytest.mark.integration


def test_fedadam_under_he_keeps_every_site_on_one_global_model(small_sites, tmp_path):
    cmd, env = simulate_cmd(small_sites, tmp_path, "fedadam", "--rounds", "3", "--local-epochs", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "checkpoint is ciphertext" in proc.stdout  # HE: the server never held a plaintext model or update

    out = tmp_path / "runs" / "fedadam"
    history = json.loads((out / "metrics.json").read_text())
    assert history["meta"]["server_optimizer"] == {"name": "adam", "lr": 0.01, "beta1": 0.9, "beta2": 0.99,
                                                   "tau": 0.001}  # fmt: skip
    prints = []
    for r in history["rounds"]:
        assert set(r["sites"]) == {"site-a", "site-b"}
        held = {m[C.METRIC_MODEL_SHA] for m in r["sites"].values()}
        assert len(held) == 1, (r["round"], held)  # both sites stepped the same aggregate to the same model
        prints.append(held.pop())
        assert r["server_rss_mb"] > 50  # the server job process's memory after the round (workflows/memory.py)
    assert len(set(prints)) == 3  # and the model moved every round
    final = [line for line in proc.stdout.splitlines() if "server optimizer: the last step applied" in line]
    assert final and "site-a, site-b" in final[0] and prints[-1] not in final[0]  # the last step too

    task = get_task("seg2d")
    state = torch.load(out / "global_model.pt")
    task.build_model().load_state_dict(state)  # the saved global model (w_T, decrypted) loads into the model
    report = (out / "report" / "report.md").read_text()
    assert "| server optimizer | adam (lr 0.01, beta1 0.9, beta2 0.99, tau 0.001), stepped at every site |" in report
