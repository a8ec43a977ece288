"""Membership-inference audit: the AUC / TPR math by hand, and the attacks against an overfit model (they see
membership) and the same model trained with the project's real Opacus DP-SGD at epsilon 1 (they barely do)."""

import numpy as np
import pytest
import torch

from consortium.privacy.audit import (
    AUDIT_KEYS,
    audit_site,
    describe,
    fpr_floor,
    loss_threshold_attack,
    reference_splits,
    rmia_scores,
    roc_auc,
    tpr_at_fpr,
)
from consortium.privacy.audit_tasks import heart_item_loss, local_trainer
from consortium.privacy.dpsgd import DPSGDSettings
from consortium.tasks import heart


def test_auc_separable_identical_and_by_hand():
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
    assert roc_auc([1, 1, 1], [1, 1]) == 0.5  # ties count one half
    # pairs (member > non-member): 2>1, 2<3, 4>1, 4>3, 0.5 for 3 == 3 of member 3 ... by hand: 6 pairs
    assert roc_auc([2, 4, 3], [1, 3]) == pytest.approx((1 + 0 + 1 + 1 + 1 + 0.5) / 6)
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.normal(size=4000), rng.normal(size=4000)) - 0.5) < 0.02


def test_tpr_at_fpr_allows_only_the_stated_false_positives():
    members, nonmembers = np.arange(100, 200), np.arange(200)  # non-members 100..199 tie a member each
    assert tpr_at_fpr(members, nonmembers, fpr=0.5) == 1.0  # 100 FP allowed: flag > 99
    assert tpr_at_fpr(members, nonmembers, fpr=0.01) == pytest.approx(0.02)  # 2 FP allowed: flag > 197
    assert tpr_at_fpr(members, nonmembers, fpr=0.004) == pytest.approx(0.0)  # none allowed: flag > 199
    assert tpr_at_fpr([5, 6, 0], [1, 2, 3], fpr=0.01) == pytest.approx(2 / 3)  # 3 non-members: FPR 0 (floor 1/3)
    assert fpr_floor(3) == pytest.approx(1 / 3) and fpr_floor(200) == 0.005
    auc, tpr = loss_threshold_attack([0.1, 0.2], [0.3, 0.4])  # lower loss = member
    assert (auc, tpr) == (1.0, 1.0)


def test_reference_splits_put_every_patient_in_half_and_rmia_calibrates():
    masks = reference_splits(7, 4, seed=1)
    assert masks.shape == (4, 7) and (masks.sum(0) == 2).all()
    with pytest.raises(ValueError, match="pairs"):
        reference_splits(7, 3)
    # patient 0 is easy for every model (loss 0.1), patient 1 is hard for references (2.0) but not for the target
    scores = rmia_scores([0.1, 0.5], [[0.1, 2.0], [0.1, 2.0]])
    assert scores[0] == pytest.approx(0.0) and scores[1] == pytest.approx(1.5)  # the hard one is the member


def _cohort(n, seed, records=4, dims=10):
    """Patients with `records` rows each; odd patients have random labels (hard), even ones a learnable rule."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dims, generator=g)
    out = {}
    for p in range(n):
        x = torch.randn(records, dims, generator=g)
        y = (x @ w > 0).float()
        flip = torch.rand(records, generator=g) < (0.5 if p % 2 else 0.0)
        out[f"P{p:03d}"] = list(zip(x, torch.where(flip, 1 - y, y), strict=True))
    return out


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))


def _setup(seed, n=50, dp=None, epochs=40):
    data = _cohort(2 * n, seed)
    ids = list(data)
    members, nonmembers = {k: data[k] for k in ids[:n]}, {k: data[k] for k in ids[n:]}
    train = local_trainer(heart, _mlp, data, epochs=epochs, lr=0.03, batch_size=64, dp=dp, seed=seed)
    return train(list(members)), members, nonmembers, train


def test_overfit_model_leaks_and_calibration_is_at_least_as_strong():
    torch.set_num_threads(1)
    model, members, nonmembers, train = _setup(seed=1)
    result = audit_site(model, heart_item_loss, members, nonmembers, train, references=4, seed=1)
    assert tuple(result) == AUDIT_KEYS and result["reference_models"] == 4
    assert (result["n_members"], result["n_nonmembers"], result["fpr_floor"]) == (50, 50, 0.02)
    assert result["loss_auc"] > 0.75  # measured 0.89
    assert result["calibrated_auc"] >= result["loss_auc"]  # measured 0.93
    assert "TPR at FPR 0" in describe(result)  # 50 non-members cannot measure a 1 % FPR


def test_dp_sgd_at_epsilon_1_brings_the_attack_close_to_chance():
    """The same cohort and training, with DP-SGD (whole patients, noise for epsilon 1 at delta 1e-5). Opacus's
    noise comes from the OS (secure_generator), so this is not seeded: 3 cohorts of 100 + 100 patients keep the
    mean's spread about 0.02 (measured means 0.51-0.55 over 11 runs: epsilon 1 is not zero leakage), against a
    margin of 0.1."""
    torch.set_num_threads(1)
    dp = DPSGDSettings(delta=1e-5, max_grad_norm=1.0, target_epsilon=1.0)
    aucs = []
    for seed in range(3):
        model, members, nonmembers, _ = _setup(seed=seed, n=100, dp=dp, epochs=20)
        assert model.dp_epsilon <= 1.0 + 1e-6
        aucs.append(audit_site(model, heart_item_loss, members, nonmembers)["loss_auc"])
    assert abs(np.mean(aucs) - 0.5) < 0.1, aucs


# -- the audit inside every job: its settings, the site's task on its own loaders, the report's section


def test_audit_settings_parsed_at_load_and_refused_naming_the_key():
    from consortium.config import ConfigError
    from consortium.jobs.spec import JobSpec
    from consortium.privacy.settings import AuditSettings

    assert JobSpec(name="j").audit == AuditSettings(references=2, epochs=2)  # on by default
    assert JobSpec(name="j", audit=False).audit is None and JobSpec(name="j", audit=True).audit == AuditSettings()
    assert JobSpec(name="j", audit={"references": 0}).audit == AuditSettings(references=0, epochs=2)
    assert JobSpec(**JobSpec(name="j", audit={"epochs": 3}).to_dict()).audit.epochs == 3  # the simulator's copy
    for bad, message in [
        ({"references": 3}, "audit.references: reference models come in complementary pairs"),
        ({"epochs": 0}, "audit.epochs: must be >= 1"),
        ({"refs": 2}, "audit.refs: unknown key"),
        ({"epochs": 1.5}, "audit.epochs: expected a whole number"),
        ("yes", "audit: expected"),
    ]:
        with pytest.raises(ConfigError, match=message):
            JobSpec(name="j", audit=bad)


def test_secure_mode_is_refused_with_the_reason():
    from consortium.privacy.settings import DPSGDSettings

    raw = {"delta": 1e-5, "max_grad_norm": 1.0, "target_epsilon": 1.0}
    with pytest.raises(ValueError, match=r"dp_sgd.secure_mode: not offered: .*torchcsprng.*Python 3.11"):
        DPSGDSettings.from_dict({**raw, "secure_mode": True})
    assert DPSGDSettings.from_dict({**raw, "secure_mode": False}) == DPSGDSettings.from_dict(raw)


def _heart_site(dp=None, audit=None):
    """A site as the executor holds it after setup: Switzerland's real rows (30 train, 16 test), standardised."""
    from types import SimpleNamespace

    from consortium.config import load_site_configs
    from consortium.executors.training import local_training
    from tests.conftest import REPO

    cfg = load_site_configs(REPO / "site_configs" / "heart")["switzerland"]
    train_loader, val_loader, _ = heart.make_loaders(cfg, batch_size=4, standardise="local")
    return SimpleNamespace(task=heart, train_loader=train_loader, val_loader=val_loader, lr=0.01, batch_size=4,
                           seed=0, training=local_training(dp), audit=audit, site_cfg=cfg)  # fmt: skip


def test_site_audit_on_a_real_hospital_sends_only_scores():
    from consortium.executors.audit import site_audit
    from consortium.privacy.settings import AuditSettings

    torch.set_num_threads(1)
    site = _heart_site()
    model = heart.build_model()
    site.task.train(model, site.train_loader, epochs=2, lr=0.01)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    result = site_audit(site, weights, AuditSettings(references=2, epochs=1))
    assert set(result) == set(AUDIT_KEYS) and (result["n_members"], result["n_nonmembers"]) == (30, 16)
    assert all(isinstance(v, (int, float)) for v in result.values())  # nothing about any single patient
    assert 0 <= result["loss_auc"] <= 1 and 0 <= result["calibrated_auc"] <= 1
    dp = {"delta": 1e-5, "max_grad_norm": 1.0, "target_epsilon": 1.0}  # references trained with the job's DP-SGD
    assert site_audit(_heart_site(dp=dp), weights, AuditSettings(references=2, epochs=1))["reference_models"] == 2


def test_audit_task_reports_its_error_instead_of_failing():
    from nvflare.apis.fl_constant import ReturnCode
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    from consortium import constants as C
    from consortium.executors.audit import audit_task

    site = _heart_site(audit={"references": 2, "epochs": 1})
    logged = []
    site.log_info = site.log_exception = lambda ctx, message: logged.append(message)
    wrong = FLModelUtils.to_shareable(FLModel(params={"not.a.layer": np.zeros(2)}))  # a model that does not fit
    reply = audit_task(site, wrong, None)
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
    error = FLModelUtils.from_shareable(reply).metrics[C.METRIC_AUDIT_ERROR]
    assert error.startswith("audit failed: RuntimeError") and "not.a.layer" in error and error in logged[-1]


def _record(folder, *, dp: bool, audit: dict | None):
    from consortium import runrecord as R

    meta = {R.Meta.JOB: folder.name, R.Meta.AUDIT: {"references": 2, "epochs": 2}}
    sites = {"site-a": {"val_score": 0.5}}
    if dp:
        meta[R.Meta.DP_SGD] = {"target_epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}
        sites["site-a"] |= {"dp_epsilon": 0.98, "dp_delta": 1e-5}
    record = R.new(task="heart", num_rounds=1, meta=meta)
    record[R.ROUNDS] = [{"round": 0, "sites": sites}]
    if audit is not None:
        record[R.AUDIT] = audit
    folder.mkdir(parents=True)
    R.write(folder, record)


SCORES = {"n_members": 100, "n_nonmembers": 100, "loss_auc": 0.52, "loss_tpr_at_1pct_fpr": 0.01, "fpr_floor": 0.01,
          "calibrated_auc": 0.71, "calibrated_tpr_at_1pct_fpr": 0.2, "reference_models": 2}  # fmt: skip


def test_report_section_per_site_with_dp_setting_and_the_run_beside_it(tmp_path):
    from consortium.report.load import load_run
    from consortium.report.reveals import TITLE, chance_band, reveals_section

    assert chance_band(100, 100) == pytest.approx(2 * np.sqrt(201 / 120000))  # Mann-Whitney's null spread
    _record(tmp_path / "old", dp=False, audit=None)  # a record from before the audit: still read
    title, md, _ = reveals_section(load_run(tmp_path / "old"))
    assert title == TITLE and "no membership-inference audit" in md
    _record(tmp_path / "dp", dp=True, audit={"site-a": {**SCORES, "calibrated_auc": 0.53}, "site-b": {
        "audit_error": "audit failed: ValueError: no held-out patients"}})  # fmt: skip
    md = reveals_section(load_run(tmp_path / "dp"))[1]
    assert "0.5 is a coin toss" in md and "docs/results.md" in md  # no run without DP beside it yet
    assert "| site-a | epsilon 0.98 (DP-SGD) | 100 / 100 | 0.520 | 0.010 | 0.530 |" in md
    assert (
        "cannot be told from chance" in md and "| site-b | DP job; no spend recorded | audit failed: ValueError" in md
    )
    _record(tmp_path / "plain", dp=False, audit={"site-a": SCORES})
    md = reveals_section(load_run(tmp_path / "dp"))[1]
    assert "run plain (job plain), beside this one, without DP" in md
    assert "| site-a (plain) | no DP | 100 / 100 | 0.520 | 0.010 | 0.710 | 0.200 |" in md and "membership visible" in md
