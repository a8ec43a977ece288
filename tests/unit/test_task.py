"""The task module: an Opacus-valid model, transforms that keep image and mask aligned, Dice semantics."""

import pytest
import torch
from opacus.validators import ModuleValidator

from consortium.tasks import get_task


def test_model_is_valid_for_opacus():
    model = get_task("seg2d").build_model()
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_the_5m_task_is_seg2d_with_a_wider_unet(tiny_sites):
    """task seg2d_5m (bench/round_overhead.py): seg2d's interface, data and loss, a 4.9 M-parameter UNet of the
    demo's depth (its sizes, multiples of 8, still fit), valid for Opacus like the demo's."""
    demo, wide = get_task("seg2d"), get_task("seg2d_5m")
    assert wide.make_loaders is demo.make_loaders and wide.batch_loss is demo.batch_loss
    model = wide.build_model()
    assert sum(v.numel() for v in model.state_dict().values()) == 4_903_315
    assert ModuleValidator.validate(model, strict=False) == []
    batch = next(iter(wide.make_loaders(tiny_sites["site-a"], batch_size=2)[0]))
    assert model(batch["image"]).shape == batch["label"].shape


def test_loaders_align_image_and_mask(tiny_sites):
    task = get_task("seg2d")
    _, val, report = task.make_loaders(tiny_sites["site-a"], batch_size=4)
    batch = next(iter(val))
    assert batch["image"].shape[1:] == (1, 32, 32) and batch["label"].shape == batch["image"].shape
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    lesion, organ = (
        batch["image"][batch["label"] > 0],
        batch["image"][(batch["label"] == 0) & (batch["image"] > 0.4)],
    )
    assert lesion.mean() < organ.mean() - 0.05  # hypodense lesions at site-a: the mask sits on the lesion
    assert report.usable["val"] == len(val.dataset)


class _Const(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_dice_counts_empty_slices():
    task = get_task("seg2d")
    label = torch.zeros(2, 1, 4, 4)
    label[0, 0, :2, :2] = 1
    logits = torch.full((2, 1, 4, 4), -10.0)
    logits[0, 0, :2, :] = 10.0  # predicts 8 px, 4 true: Dice 2*4/(8+4) = 2/3; slice 2 empty/empty: 1
    loader = [{"image": torch.zeros(2, 1, 4, 4), "label": label}]
    assert abs(task.evaluate(_Const(logits), loader) - (2 / 3 + 1) / 2) < 1e-6


def test_test_loader_covers_both_splits_without_augmentation(tiny_sites):
    task = get_task("seg2d")
    cfg = tiny_sites["site-a"]
    train, val, report = task.make_loaders(cfg, batch_size=4)
    test = task.make_test_loader(cfg, batch_size=4)
    assert len(test.dataset) == report.usable["train"] + report.usable["val"] == len(train.dataset) + len(val.dataset)
    first = torch.cat([b["image"] for b in test])
    second = torch.cat([b["image"] for b in test])
    assert torch.equal(first, second)  # no random transforms: a held-out cohort scores the same every time


def test_baselines_score_extra_test_loaders(tiny_sites):
    from dataclasses import replace

    from consortium.baselines import run_baselines
    from consortium.jobs import load_job_spec
    from tests.conftest import REPO

    spec = replace(load_job_spec("fedavg", REPO / "jobs"), rounds=1, local_epochs=1)
    task = get_task("seg2d")
    # the validation splits passed as "test" data must score exactly as the validation scores do
    tests = {name: task.make_loaders(cfg, batch_size=8)[1] for name, cfg in tiny_sites.items()}
    out = run_baselines(spec, tiny_sites, kind="pooled", log=lambda *_: None, test_loaders=tests)
    result = out["results"]["pooled"]
    assert set(result["test_scores"]) == set(tiny_sites)
    for name in tiny_sites:
        assert abs(result["test_scores"][name] - result["scores"][name]) < 1e-9


def test_local_steps_budget_is_the_same_at_every_site(tiny_sites):
    """With `local_steps` every site takes exactly that many steps per round, cycling its data if it is smaller
    (fedavg_steps); the pooled baseline takes all sites' steps together, the same compute as a federated round."""
    from dataclasses import replace

    from consortium.baselines import run_baselines
    from consortium.jobs import load_job_spec
    from tests.conftest import REPO

    spec = load_job_spec("fedavg_steps", REPO / "jobs")
    assert spec.local_steps is not None and spec.algorithm == "fedavg" and spec.he
    batches = {name: len(get_task("seg2d").make_loaders(cfg, batch_size=2)[0]) for name, cfg in tiny_sites.items()}
    steps = max(batches.values()) + 1  # more than one pass at every site: the data must be cycled
    spec = replace(spec, rounds=2, local_steps=steps, batch_size=2, finetune_epochs=0)
    local = run_baselines(spec, tiny_sites, kind="local", log=lambda *_: None)["results"]
    assert {name: r["steps"] for name, r in local.items()} == {name: 2 * steps for name in tiny_sites}
    pooled = run_baselines(spec, tiny_sites, kind="pooled", log=lambda *_: None)["results"]["pooled"]
    assert pooled["steps"] == 2 * steps * len(tiny_sites)


def test_site_harmonisation_shifts_hu_before_the_window(tiny_sites):
    from dataclasses import replace

    cfg = tiny_sites["site-a"]
    task = get_task("seg2d")
    plain = next(iter(task.make_loaders(cfg, batch_size=64)[1]))["image"]
    shifted_cfg = replace(cfg, data=replace(cfg.data, hu_offset=20.0, hu_scale=1.0))
    shifted = next(iter(task.make_loaders(shifted_cfg, batch_size=64)[1]))["image"]
    inside = (plain > 0.1) & (plain < 0.9)  # away from the window's clip
    assert torch.allclose(shifted[inside] - plain[inside], torch.tensor(20.0 / 400.0), atol=1e-4)


def test_site_size_uses_each_slices_own_spacing():
    from collections import Counter

    from consortium.data.manifest import DataReport
    from consortium.tasks.seg2d import _site_size

    report = DataReport(site="x", folder=".")
    report.fields_mm = Counter({(512 * 0.4, 512 * 0.4): 30, (400 * 0.8, 400 * 0.8): 40, (512 * 0.5, 512 * 0.5): 30})
    assert _site_size(report) == (400, 400)  # 40 slices of 320 mm at 0.8 mm: the most common field of view


def test_every_registered_task_exports_the_task_interface():
    """Switching the task is one job value: every registered module exports the same names, METRIC_NAME too."""
    from consortium.tasks import REQUIRED, TASKS

    assert "METRIC_NAME" in REQUIRED
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task.METRIC_NAME, str) and task.METRIC_NAME
        assert callable(task.sample_loss)  # DP-SGD's loss: both tasks support dp_sgd


def test_a_task_without_a_metric_name_is_refused(monkeypatch):
    import sys
    import types

    from consortium import tasks

    fake = types.ModuleType("fake_task")
    for fn in ("build_model", "make_loaders", "batch_loss", "train", "evaluate"):
        setattr(fake, fn, lambda *a, **k: None)
    monkeypatch.setitem(sys.modules, "fake_task", fake)
    monkeypatch.setitem(tasks.TASKS, "fake", "fake_task")
    with pytest.raises(TypeError, match=r"fake_task \(TASKS\['fake'\]\) lacks METRIC_NAME"):
        get_task("fake")


def test_seg2d_sample_loss_is_the_mean_of_each_slices_own_loss():
    """DP-SGD's loss decouples the samples (per-sample clipping needs it); plain training keeps batch Dice."""
    task = get_task("seg2d")
    torch.manual_seed(0)
    model = task.build_model(channels=(4, 8, 16, 32), num_res_units=0)
    batch = {"image": torch.rand(3, 1, 16, 16), "label": (torch.rand(3, 1, 16, 16) > 0.8).float()}
    with torch.no_grad():
        each = [float(task.sample_loss(model, {k: v[i : i + 1] for k, v in batch.items()})) for i in range(3)]
        whole, coupled = float(task.sample_loss(model, batch)), float(task.batch_loss(model, batch))
    assert whole == pytest.approx(sum(each) / 3, rel=1e-5)
    assert abs(coupled - whole) > 1e-6
