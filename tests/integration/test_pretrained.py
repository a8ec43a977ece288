"""A job that starts from a pretrained checkpoint (the public start): the server's initial global model is the
checkpoint, shipped in the job and checked by hash; one that does not fit the model is refused at load."""

import json
import shutil
import subprocess

import pytest
import torch

from consortium.config import ConfigError
from consortium.jobs import load_job_spec
from consortium.tasks import get_task
from tests.conftest import REPO
from tests.integration.test_simulator import simulate_cmd

pytestmark = pytest.mark.integration


def _jobs(tmp_path, checkpoint) -> object:
    jobs = tmp_path / "jobs"
    for name in ("fedavg", "fedavg_plain"):
        shutil.copytree(REPO / "jobs" / name, jobs / name)
    (jobs / "from_public").mkdir()
    (jobs / "from_public" / "job.yaml").write_text(
        f"base: fedavg_plain\npretrained: {checkpoint}\nrounds: 1\nlocal_epochs: 1\ncross_site: false\n"
        "train_alone: false\nfinetune_epochs: 0\n"
    )
    return jobs


def test_the_initial_global_model_is_the_checkpoint(tiny_sites, tmp_path):
    task = get_task("seg2d")
    torch.manual_seed(777)
    start = task.build_model()
    last_bias = [k for k in start.state_dict() if k.endswith("bias")][-1]
    with torch.no_grad():  # predicts lesion everywhere: scores unlike the job's own initial model
        start.state_dict()[last_bias].fill_(5.0)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    jobs = _jobs(tmp_path, tmp_path / "start.pt")
    cmd, env = simulate_cmd(tiny_sites, tmp_path, "from_public")
    cmd[cmd.index("--jobs") + 1] = str(jobs)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = json.loads((tmp_path / "runs" / "from_public" / "metrics.json").read_text())
    assert history["meta"]["pretrained"] == "start.pt"
    for name, m in history["rounds"][0]["sites"].items():  # round 0's val_score: the initial global model's
        expected = task.evaluate(start, task.make_loaders(tiny_sites[name], batch_size=8)[1])
        assert m["val_score"] == pytest.approx(expected, abs=1e-6), name


def test_a_checkpoint_that_does_not_fit_is_refused_at_load(tmp_path):
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    jobs = _jobs(tmp_path, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"from_public/job.yaml: field pretrained: .*other.pt does not fit"):
        load_job_spec("from_public", jobs)
    jobs2 = _jobs(tmp_path / "b", tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="field pretrained: .*missing.pt not found"):
        load_job_spec("from_public", jobs2)
