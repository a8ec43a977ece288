"""The quantised HE packing (jobs/fedavg_quantised) in the real FLARE simulator: one round gives the plaintext
FedAvg global model within the quantisation bound, with 1 / per_slot of the ckks packing's ciphertexts."""

import json
import math
import subprocess

import numpy as np
import pytest
import torch

from consortium.he.quant import Packing
from consortium.jobs import load_job_spec
from tests.conftest import REPO
from tests.integration.test_simulator import simulate_cmd

pytestmark = pytest.mark.integration


@pytest.mark.slow  # two simulator jobs: 693 s under load 15-21 on 2 cores (2026-12-07)
def test_quantised_he_job_matches_plaintext_fedavg_within_the_quantisation_bound(small_sites, tmp_path):
    for job in ("fedavg_plain", "fedavg_quantised"):
        cmd, env = simulate_cmd(small_sites, tmp_path, job, "--rounds", "1", "--local-epochs", "1")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "runs" / "fedavg_quantised"
    payload = torch.load(out / "global_model.encrypted.pt", weights_only=False)["__he__"]
    assert payload["version"] == 2 and payload["quant"]["sites"] == 2
    packing = Packing.from_wire(payload["quant"]["packing"])
    job = Packing(**dict(load_job_spec("fedavg_quantised", REPO / "jobs").he.quantised))
    assert (packing.bits, packing.per_slot) == (job.bits, job.per_slot)  # 6 bits, 5 per slot (the job file)
    plain = torch.load(tmp_path / "runs" / "fedavg_plain" / "global_model.pt")
    released = torch.load(out / "global_model.pt")
    assert set(plain) == set(released)
    size = sum(int(np.prod(shape)) for _, shape, _ in payload["layout"])
    assert len(payload["chunks"]) == math.ceil(size / (packing.per_slot * 4096))  # 4096 slots per ciphertext

    # uniform weights, 2 sites: each site's integer is off by less than one step of its layer, so the mean too;
    # the ranges are the ones the sites used (2 x the initial model's largest value, or the floor)
    history = json.loads((out / "metrics.json").read_text())
    assert {m["weight"] for m in history["rounds"][0]["sites"].values()} == {1}
    worst = 0.0
    for (name, _, dtype), layer_range in zip(payload["layout"], payload["quant"]["ranges"], strict=True):
        step = layer_range / packing.qmax
        err = float((plain[name].double() - released[name].double()).abs().max())
        worst = max(worst, err / step)
        if np.issubdtype(np.dtype(dtype), np.integer):  # counts (num_batches_tracked): step 1, exact
            assert err == 0, name
        else:
            assert err < step + 1e-6, (name, err, step)
    print(f"largest error, quantised HE vs plaintext global model after one round: {worst:.2f} steps")
