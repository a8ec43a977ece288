"""Differential privacy: the accountant against Opacus's, the Gaussian update filter's clipping and noise,
per-sample gradients against autograd, the site's budget and guard, and refusal of invalid settings."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import make_reply
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant
from opacus.accountants import RDPAccountant as OpacusRDP
from opacus.accountants.utils import get_noise_multiplier

from consortium import constants as C
from consortium.config import ConfigError, PrivacyConfig, load_site_configs
from consortium.filters.dp import CTX_RECEIVED_MODEL, GaussianUpdateFilter, KeepGlobalModel, PrivacyGuard, clip_update
from consortium.privacy.accountant import ORDERS, RDPAccountant, noise_for_target, rdp_subsampled_gaussian
from consortium.privacy.budget import BudgetRefused, check_job, check_noise, check_round
from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD
from consortium.privacy.persample import ConvGradSampleModule
from consortium.privacy.settings import DPUpdateSettings
from tests.conftest import REPO, TINY_A, write_site_configs

warnings.filterwarnings("ignore", message="Optimal order")

# (sample rate, noise multiplier, steps): the demo hospitals' DP-SGD regimes, a long run, full-batch rounds
REGIMES = [(8 / 42, 1.5, 100), (8 / 144, 1.0, 360), (0.01, 1.1, 10_000), (0.5, 3.0, 30), (1.0, 5.0, 10)]


@pytest.mark.parametrize("q, sigma, steps", REGIMES)
def test_accountant_matches_opacus_rdp(q, sigma, steps):
    ours = RDPAccountant(methods=("rdp",))  # RDP alone; the default reports the tighter of RDP and PRV
    ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    theirs = OpacusRDP()
    theirs.history = [(sigma, q, steps)]
    for delta in (1e-5, 1e-3):
        assert ours.epsilon(delta) == pytest.approx(theirs.get_epsilon(delta, alphas=list(ORDERS)), rel=1e-6)


def test_accountant_composes_rounds_like_opacus_and_brackets_prv():
    ours, theirs = RDPAccountant(methods=("rdp",)), OpacusRDP()
    for sigma, q, steps in [(1.2, 0.1, 50), (0.9, 0.2, 30), (1.2, 0.1, 50)]:
        ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
        theirs.history.append((sigma, q, steps))
    assert ours.steps == 130
    assert ours.epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5, alphas=list(ORDERS)), rel=1e-6)
    # RDP is an upper bound: Opacus's numerically tight PRV accountant gives less, but not much less
    prv = PRVAccountant()
    prv.history = [(1.2, 0.1, 100), (0.9, 0.2, 30)]
    assert prv.get_epsilon(1e-5) < ours.epsilon(1e-5) < 1.5 * prv.get_epsilon(1e-5)


def test_gaussian_mechanism_rdp_by_hand():
    # no subsampling: RDP(alpha) = alpha / (2 sigma^2) per step
    assert rdp_subsampled_gaussian(1.0, 2.0, 3, orders=[2.0, 10.0]) == pytest.approx([0.75, 3.75])


def test_noise_for_target_matches_opacus():
    for q, steps in [(8 / 42, 100), (8 / 144, 360)]:
        ours = noise_for_target(target_epsilon=8, delta=1e-5, sample_rate=q, steps=steps, methods=("rdp",))
        theirs = get_noise_multiplier(target_epsilon=8, target_delta=1e-5, sample_rate=q, steps=steps)
        assert ours == pytest.approx(theirs, rel=0.01)
        acc = RDPAccountant(methods=("rdp",))
        acc.step(noise_multiplier=ours, sample_rate=q, steps=steps)
        assert 7.99 - 0.01 <= acc.epsilon(1e-5) <= 8.0
    with pytest.raises(ValueError, match="out of reach"):
        noise_for_target(target_epsilon=1e-4, delta=1e-9, sample_rate=1.0, steps=10**7)


# -- Gaussian update filter -------------------------------------------------------------------------------


def _update(rng, norm):
    shapes = {"conv.weight": (64, 32, 3, 3), "conv.bias": (64,), "head.weight": (1, 64, 1, 1), "big": (40, 2000)}
    update = {k: rng.normal(size=s) for k, s in shapes.items()}
    scale = norm / math.sqrt(sum(float((v**2).sum()) for v in update.values()))
    received = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    local = {k: (received[k] + scale * update[k]).astype(np.float32) for k in shapes}
    return received, local


def test_clip_bounds_norm_and_keeps_small_updates():
    rng = np.random.default_rng(0)
    big = {"a": rng.normal(size=1000) * 10, "b": rng.normal(size=(20, 20)) * 10}
    clipped, norm = clip_update(big, 1.5)
    assert norm > 100
    assert math.sqrt(sum(float((v**2).sum()) for v in clipped.values())) == pytest.approx(1.5, rel=1e-9)
    small = {"a": np.full(4, 0.1)}
    assert np.array_equal(clip_update(small, 1.5)[0]["a"], small["a"])


def test_update_filter_output_is_clipped_plus_noise_of_expected_std():
    rng = np.random.default_rng(1)
    received, local = _update(rng, norm=50.0)
    f = GaussianUpdateFilter(clip_norm=2.0, noise_multiplier=1e-9, delta=1e-5, seed=3)
    out, norm = f.privatize(local, {k: v.astype(np.float64) for k, v in received.items()})
    assert norm == pytest.approx(50.0, rel=1e-4)
    sent = math.sqrt(sum(float(((out[k] - received[k]).astype(np.float64) ** 2).sum()) for k in out))
    assert sent <= 2.0 * (1 + 1e-4)  # float32 rounding of the weights only

    f = GaussianUpdateFilter(clip_norm=2.0, noise_multiplier=0.5, delta=1e-5, seed=7)
    rec64 = {k: v.astype(np.float64) for k, v in received.items()}
    out, _ = f.privatize(local, rec64)
    clipped, _ = clip_update({k: local[k].astype(np.float64) - rec64[k] for k in local}, 2.0)
    noise = np.concatenate([(out[k].astype(np.float64) - rec64[k] - clipped[k]).ravel() for k in out])
    n = noise.size  # about 100k coordinates: the sample std is within 1 % of the true one with room to spare
    assert n > 90_000
    assert noise.std() == pytest.approx(1.0, rel=0.01)  # noise_multiplier x clip_norm
    assert abs(noise.mean()) < 4 / math.sqrt(n)
    # another seed gives other noise; the accountant counted one round at multiplier 0.5 / 2 (sensitivity 2C)
    other, _ = GaussianUpdateFilter(clip_norm=2.0, noise_multiplier=0.5, delta=1e-5, seed=8).privatize(local, rec64)
    assert not np.allclose(other["big"], out["big"])
    assert f.accountant.history == [(0.25, 1.0, 1)]


def _fl_ctx(root=None, job="job-1"):
    """A site's FLARE context: its name, a workspace (for the privacy ledger) and the job id."""
    import tempfile

    from nvflare.apis.workspace import Workspace

    root = Path(root or tempfile.mkdtemp())
    (root / "local").mkdir(exist_ok=True)
    (root / "startup").mkdir(exist_ok=True)
    ctx = FLContext()
    ctx.set_prop(FLContextKey.CLIENT_NAME, "site-a", private=False, sticky=True)
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(root), "site-a"), private=True, sticky=False)
    ctx.set_prop(FLContextKey.CURRENT_RUN, job, private=False, sticky=True)
    return ctx


def test_update_filter_accounting_continues_in_a_resumed_job(tmp_path):
    """The update filter's privacy ledger is on the site's disk: a resumed job (new filter, new job id, same
    run) counts the rounds of the job it continues."""
    rng = np.random.default_rng(3)
    received, local = _update(rng, norm=5.0)
    for job, chain in (("j1", ["j1"]), ("j2", ["j1", "j2"])):
        keep, noise = KeepGlobalModel(), GaussianUpdateFilter(clip_norm=1.0, noise_multiplier=0.8, delta=1e-5)
        ctx = _fl_ctx(tmp_path, job)
        keep.process(DXO(DataKind.WEIGHTS, data=dict(received), meta={C.META_RUN_CHAIN: chain}).to_shareable(), ctx)
        for _ in range(2):
            noise.process(DXO(DataKind.WEIGHTS, data=dict(local)).to_shareable(), ctx)
    assert noise.accountant.history == [(0.4, 1.0, 4)]  # 2 rounds in j1 + 2 in j2, at multiplier 0.8 / 2


def test_update_filter_as_flare_filters_and_submit_model_resends_released():
    rng = np.random.default_rng(2)
    received, local = _update(rng, norm=5.0)
    keep, noise = KeepGlobalModel(), GaussianUpdateFilter(clip_norm=1.0, noise_multiplier=0.8, delta=1e-5)
    ctx = _fl_ctx()
    keep.process(DXO(DataKind.WEIGHTS, data=dict(received)).to_shareable(), ctx)
    result = DXO(DataKind.WEIGHTS, data=dict(local), meta={MetaKey.INITIAL_METRICS: {"val_score": 0.5}})
    out = from_shareable(noise.process(result.to_shareable(), ctx))
    assert out.get_meta_prop(MetaKey.INITIAL_METRICS)[C.METRIC_DP_UPDATE_EPSILON] > 0
    assert not np.allclose(out.data["big"], local["big"])
    # submit_model brings no model: the filter sends what it released last, never the raw local model
    again = from_shareable(noise.process(DXO(DataKind.WEIGHTS, data=dict(local)).to_shareable(), _fl_ctx()))
    assert all(np.array_equal(again.data[k], out.data[k]) for k in out.data)
    # without KeepGlobalModel and nothing released yet it refuses instead of sending un-noised weights
    fresh = GaussianUpdateFilter(clip_norm=1.0, noise_multiplier=0.8, delta=1e-5)
    with pytest.raises(ValueError, match="KeepGlobalModel"):
        fresh.process(DXO(DataKind.WEIGHTS, data=dict(local)).to_shareable(), _fl_ctx())
    ctx = _fl_ctx()
    ctx.set_prop(CTX_RECEIVED_MODEL, {"__he__": 1}, private=True, sticky=False)
    with pytest.raises(ValueError, match="encrypted"):
        fresh.process(DXO(DataKind.WEIGHTS, data={"__he__": {}}).to_shareable(), ctx)
    error = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    assert fresh.process(error, _fl_ctx()) is error  # an error reply carries no weights


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": float("nan")}, "clip_norm"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"seed": -1}, "seed"),
    ],
)
def test_update_filter_refuses_invalid_parameters(kwargs, message):
    args = {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=f"GaussianUpdateFilter: {message}"):
        GaussianUpdateFilter(**args)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"clip_norm": 1.0, "delta": 1e-5}, "exactly one of"),
        ({"clip_norm": 1.0, "delta": 1e-5, "target_epsilon": 1, "noise_multiplier": 1}, "exactly one of"),
        ({"delta": 1e-5, "target_epsilon": 1}, "dp_update.clip_norm: missing"),
        ({"clip_norm": "big", "delta": 1e-5, "target_epsilon": 1}, "dp_update.clip_norm"),
        ({"clip_norm": 1.0, "delta": 1e-5, "epsilon": 1}, "dp_update.epsilon: unknown"),
        ({"clip_norm": 1.0, "delta": 2, "target_epsilon": 1}, "delta"),
    ],
)
def test_update_filter_job_settings_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        DPUpdateSettings.from_dict(raw)


def test_update_filter_from_job_reaches_target_epsilon():
    settings = DPUpdateSettings.from_dict({"clip_norm": 1.0, "delta": 1e-5, "target_epsilon": 20})
    f = GaussianUpdateFilter.from_settings(settings, rounds=10)
    for _ in range(10):
        f.accountant.step(noise_multiplier=f.noise_multiplier / 2, sample_rate=1.0)
    assert 19.9 <= f.accountant.epsilon(1e-5) <= 20.0


# -- DP-SGD ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"delta": 1e-5, "max_grad_norm": 1.0}, "exactly one of"),
        ({"target_epsilon": 8, "max_grad_norm": 1.0}, "dp_sgd.delta: missing"),
        ({"target_epsilon": 8, "delta": 1e-5}, "dp_sgd.max_grad_norm: missing"),
        ({"target_epsilon": -8, "delta": 1e-5, "max_grad_norm": 1.0}, "dp_sgd.target_epsilon: must be"),
        ({"target_epsilon": 8, "delta": 1.5, "max_grad_norm": 1.0}, "dp_sgd.delta: must be < 1"),
        ({"target_epsilon": 8, "delta": 1e-5, "max_grad_norm": 1.0, "clip": 1}, "dp_sgd.clip: unknown"),
        ("eps 8", "expected a mapping"),
    ],
)
def test_dp_sgd_settings_refused(raw, message):
    with pytest.raises(ValueError, match=message):
        DPSGDSettings.from_dict(raw)


def _small_unet():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="instance", act=("relu", {}))


def test_conv_per_sample_gradients_match_autograd_and_opacus():
    model, x = _small_unet(), torch.randn(5, 1, 16, 16)
    y = (torch.rand(5, 1, 16, 16) > 0.8).float()
    fast = ConvGradSampleModule(model)
    torch.nn.functional.binary_cross_entropy_with_logits(fast(x), y).backward()
    ours = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "ConvTranspose2d"} <= kinds
    for i in range(5):  # each sample's own gradient, by plain autograd
        model.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ours[name][i], p.grad, rtol=1e-4, atol=1e-6)
    twin = GradSampleModule(_small_unet())  # same seed: same weights, Opacus's own per-sample gradients
    torch.nn.functional.binary_cross_entropy_with_logits(twin(x), y).backward()
    for (name, _), (_, q) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(ours[name], q.grad_sample, rtol=1e-4, atol=1e-6)


class _Records(torch.utils.data.Dataset):
    """Slices with their patient, as the task's CacheDataset holds them (records in `.data`)."""

    def __init__(self, patients: int, slices: int):
        self.data = [{"patient_id": f"P{p}"} for p in range(patients) for _ in range(slices)]
        self.items = [{"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)} for _ in self.data]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.items[i]


class _Loader:
    def __init__(self, patients: int, slices: int = 4):
        self.dataset = _Records(patients, slices)
        self.collate_fn = torch.utils.data.default_collate


def _conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2, 1, 1))


def test_clipping_is_per_patient_average_of_its_slices():
    model = _conv()
    settings = DPSGDSettings(delta=1e-5, max_grad_norm=0.05, noise_multiplier=1.0)
    dp = SiteDPSGD(settings, model=model, train_loader=_Loader(3, 2), batch_size=3)
    opt = dp.optimizer(0.1)
    opt.noise_multiplier = 0.0  # to compare the clipped sum with a hand computation
    x, y = torch.randn(5, 1, 8, 8), torch.rand(5, 1, 8, 8)
    groups = torch.tensor([0, 0, 1, 2, 2])  # three patients: two slices, one slice, two slices
    opt.groups = groups
    opt.zero_grad()
    torch.nn.functional.mse_loss(dp.module(x), y).backward()
    assert opt.pre_step()
    noised = {n: p.grad.clone() for n, p in model.named_parameters()}  # noise 0: clipped sum / expected patients
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for patient in range(3):
        grads = []
        for i in (groups == patient).nonzero().flatten().tolist():  # each slice's own gradient, by autograd
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        mean = {n: sum(g[n] for g in grads) / len(grads) for n in expected}
        norm = math.sqrt(sum(float((v**2).sum()) for v in mean.values()))
        assert norm > 0.05  # every patient is clipped: the bound is what limits its influence
        for n in expected:
            expected[n] += mean[n] * min(1.0, 0.05 / norm)
    for n in expected:
        torch.testing.assert_close(noised[n] * dp.expected_patients, expected[n], rtol=1e-4, atol=1e-7)


def test_empty_poisson_batches_are_noise_only_steps_and_counted():
    model = _conv()
    dp = SiteDPSGD(
        DPSGDSettings(delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.0),
        model=model,
        train_loader=_Loader(4, 1),
        batch_size=1,
    )
    dp.sample_rate = 1e-12  # every batch empty
    dp.loader.sampler.sample_rate = dp.sample_rate
    dp.plan(rounds=1, local_epochs=2)
    before = model[0].weight.detach().clone()
    dp.optimizer(0.1)
    assert list(dp.loader) == []  # nothing reaches the training loop ...
    assert dp.accountant.steps == 4  # ... but every draw is a DP-SGD step
    assert not torch.equal(before, model[0].weight)  # the noise-only steps moved the weights


def test_poisson_batches_hold_whole_patients():
    dp = SiteDPSGD(
        DPSGDSettings(delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.0),
        model=_conv(),
        train_loader=_Loader(10, 4),
        batch_size=8,
    )
    opt = dp.optimizer(0.1)
    sizes = []
    for batch in dp.loader:
        sizes.append(len(batch["image"]))
        assert len(opt.groups) == sizes[-1] and torch.bincount(opt.groups).tolist() == [4] * (sizes[-1] // 4)
    # 5 draws (empty ones became noise-only steps), each a whole number of 4-slice patients
    assert dp.accountant.steps == dp.steps_per_epoch == 5 and len(sizes) <= 5 and all(s % 4 == 0 for s in sizes)


def test_site_dpsgd_plans_noise_for_target_over_the_job():
    settings = DPSGDSettings(delta=1e-5, max_grad_norm=1.0, target_epsilon=3.0)
    dp = SiteDPSGD(settings, model=_conv(), train_loader=_Loader(10, 4), batch_size=8)
    sigma = dp.plan(rounds=5, local_epochs=2)
    assert (dp.sample_rate, dp.steps_per_round, dp.expected_patients) == (0.2, 10, 2.0)
    for _ in range(5):
        dp.accountant.step(noise_multiplier=sigma, sample_rate=0.2, steps=10)
    assert 2.98 <= dp.epsilon() <= 3.0
    loader = _Loader(2)
    loader.dataset.data = None
    with pytest.raises(ValueError, match="patient_id"):
        SiteDPSGD(settings, model=_conv(), train_loader=loader, batch_size=8)
    rows = torch.utils.data.TensorDataset(torch.rand(8, 1, 8, 8), torch.zeros(8, 1, 8, 8))
    rows.one_patient_per_sample = True  # e.g. one table row per patient: every sample is its own unit
    loader.dataset = rows
    dp = SiteDPSGD(settings, model=_conv(), train_loader=loader, batch_size=4)
    assert dp.loader.patients == [[i] for i in range(8)] and dp.expected_patients == 4


# -- the site's floor ------------------------------------------------------------------------------------

FLOOR = PrivacyConfig(require_dp=True, max_epsilon=4.0, delta=1e-5, min_noise_multiplier=0.8, max_clip_norm=2.0)
DP = DPSGDSettings(delta=1e-5, max_grad_norm=1.0, target_epsilon=3.0)


@pytest.mark.parametrize(
    "dp, message",
    [
        (None, "trains only with DP-SGD .*require_dp in site.yaml.*fedavg_dp"),
        (DPSGDSettings(delta=1e-4, max_grad_norm=1.0, target_epsilon=3), "delta up to 1e-05.*dp_sgd.delta"),
        (DPSGDSettings(delta=1e-5, max_grad_norm=5.0, target_epsilon=3), "clipping bound up to 2.*max_grad_norm"),
    ],
)
def test_site_refuses_jobs_weaker_than_its_floor(dp, message):
    with pytest.raises(BudgetRefused, match=message):
        check_job(FLOOR, dp, site="hospital-c", source="site.yaml")


def test_site_floor_accepts_compliant_job_and_refuses_rounds_beyond_budget():
    check_job(FLOOR, DP, site="hospital-c", source="site.yaml")
    check_job(PrivacyConfig(), None, site="hospital-a", source="a.yaml")  # no floor, no DP: fine
    with pytest.raises(BudgetRefused, match="noise multiplier of at least 0.8"):
        check_noise(FLOOR, 0.5, site="hospital-c", source="site.yaml")
    check_round(FLOOR, epsilon_after=3.9, delta=1e-5, round_number=4, site="hospital-c", source="site.yaml")
    with pytest.raises(BudgetRefused, match=r"refuses round 5: .* 4.20 .*max_epsilon 4 \(privacy.max_epsilon in s"):
        check_round(FLOOR, epsilon_after=4.2, delta=1e-5, round_number=5, site="hospital-c", source="site.yaml")


@pytest.mark.parametrize(
    "body, field",
    [
        ("privacy:\n  delta: 0\n", "privacy.delta"),
        ("privacy:\n  max_epsilon: -1\n", "privacy.max_epsilon"),
        ("privacy:\n  require_dp: yes please\n", "privacy.require_dp"),
        ("privacy:\n  epsilon: 3\n", "privacy.epsilon"),
        ("privacy:\n  min_noise_multiplier: -0.5\n", "privacy.min_noise_multiplier"),
    ],
)
def test_bad_privacy_section_names_file_and_field(tmp_path, body, field):
    folder = write_site_configs(tmp_path, {"site-a": TINY_A + body})
    with pytest.raises(ConfigError) as err:
        load_site_configs(folder)
    assert field in str(err.value) and "site-a.yaml" in str(err.value)


def test_guard_stops_model_results_outside_the_floor():
    guard = PrivacyGuard(require_dp=True, max_epsilon=4.0, delta=1e-5)
    ctx = _fl_ctx()
    weights = {"w": np.zeros(3, dtype=np.float32)}
    plain = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    refused = guard.process(plain, ctx)
    assert refused.get_return_code() == ReturnCode.EARLY_TERMINATION
    assert "not trained with DP-SGD" in refused.get_header(C.HEADER_SITE_REFUSED)
    ok = DXO(DataKind.WEIGHTS, data=weights, meta={C.METRIC_DP_EPSILON: 3.5, C.METRIC_DP_DELTA: 1e-5})
    assert guard.process(ok.to_shareable(), ctx).get_return_code() == ReturnCode.OK
    over = DXO(DataKind.WEIGHTS, data=weights, meta={C.METRIC_DP_EPSILON: 4.5, C.METRIC_DP_DELTA: 1e-5})
    assert "above this site's max_epsilon 4" in guard.process(over.to_shareable(), ctx).get_header(
        C.HEADER_SITE_REFUSED
    )
    metrics = DXO(DataKind.METRICS, data={"val_score": 0.7}).to_shareable()
    assert guard.process(metrics, ctx).get_return_code() == ReturnCode.OK
    lenient = PrivacyGuard()  # no floor: non-DP models pass
    assert lenient.process(DXO(DataKind.WEIGHTS, data=weights).to_shareable(), ctx).get_return_code() == "OK"
    with pytest.raises(ValueError, match="PrivacyGuard: delta"):
        PrivacyGuard(delta=2.0)
    with pytest.raises(ValueError, match="PrivacyGuard: max_epsilon"):
        PrivacyGuard(max_epsilon=0)


def test_kit_privacy_policy_is_a_flare_default_scope_with_the_site_guard(tmp_path):
    from dataclasses import replace

    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    from consortium.deploy.kit_builder import privacy_policy

    cfg = load_site_configs(REPO / "site_configs")["hospital-c"]
    cfg = replace(cfg, privacy=replace(cfg.privacy, require_dp=True, max_epsilon=6.0))
    (tmp_path / "local").mkdir()
    (tmp_path / "startup").mkdir()
    (tmp_path / "local" / "privacy.json").write_text(json.dumps(privacy_policy(cfg)))
    manager = create_privacy_manager(Workspace(str(tmp_path), "hospital-c"), names_only=False)
    scope = manager.get_scope("")  # a job that names no scope gets the default
    assert scope is not None and manager.get_scope("anything-else") is None
    (guard,) = scope.task_result_filters["out"]
    assert isinstance(guard, PrivacyGuard) and (guard.require_dp, guard.max_epsilon, guard.delta) == (True, 6.0, 1e-5)


# -- job variants ----------------------------------------------------------------------------------------

DP_SGD = "dp_sgd: {target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0}\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ("dp_sgd: {target_epsilon: 8, max_grad_norm: 1}\n", "field dp_sgd.delta: missing"),
        ("dp_sgd: 8\n", "field 'dp_sgd'"),
        ("algorithm: fedprox\nprox_mu: 0.01\n" + DP_SGD, "'dp_sgd': cannot be combined with algorithm: fedprox"),
        ("finetune_epochs: 1\n" + DP_SGD, "'finetune_epochs': must be 0 with dp_sgd"),
        ("train_alone: true\n" + DP_SGD, "'train_alone': must be false with dp_sgd"),
        (
            "algorithm: scaffold\ndp_update: {clip_norm: 1, delta: 1.0e-5, target_epsilon: 20}\n",
            "'dp_update': cannot be combined with algorithm: scaffold",
        ),
    ],
)
def test_bad_dp_job_refused_naming_the_field(tmp_path, body, message):
    from consortium.jobs import load_job_spec

    (tmp_path / "j").mkdir()
    (tmp_path / "j/job.yaml").write_text("task: seg2d\n" + body)
    with pytest.raises(ConfigError, match=message):
        load_job_spec("j", tmp_path)


def test_dp_variant_states_only_dp_and_filters_run_noise_before_encryption(tmp_path):
    from dataclasses import replace

    from consortium.jobs import export_job, load_job_spec

    base, dp = load_job_spec("fedavg", REPO / "jobs"), load_job_spec("fedavg_dp", REPO / "jobs")
    same = replace(dp, name="fedavg", description=base.description, dp_sgd=None, finetune_epochs=base.finetune_epochs)
    assert same == base  # the variant states only DP (and turns off fine-tuning, which is not DP)
    assert dp.dp_sgd == DPSGDSettings(target_epsilon=8, delta=1e-5, max_grad_norm=1.0) and dp.he
    update = DPUpdateSettings(clip_norm=1.0, delta=1e-5, target_epsilon=20)
    folder = export_job(replace(dp, dp_update=update), tmp_path)
    client = json.loads((folder / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["dp_sgd"] == dp.dp_sgd.to_dict()
    (result_chain,) = client["task_result_filters"]
    assert [f["path"].rsplit(".", 1)[1] for f in result_chain["filters"]] == ["GaussianUpdateFilter", "HEEncryptUpdate"]
    (data_chain,) = client["task_data_filters"]
    assert [f["path"].rsplit(".", 1)[1] for f in data_chain["filters"]] == ["HEDecryptModel", "KeepGlobalModel"]


def test_dp_sgd_training_needs_the_tasks_sample_loss():
    """DP-SGD trains on the task's per-sample loss; a task without one is refused, not trained on batch Dice."""
    import types

    from consortium.tasks import get_task

    torch.manual_seed(0)
    x, y = torch.randn(12, 3), (torch.rand(12) > 0.5).float()
    dataset = torch.utils.data.TensorDataset(x, y)
    dataset.one_patient_per_sample = True
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    site = SiteDPSGD(DPSGDSettings(delta=1e-5, max_grad_norm=1.0, noise_multiplier=1.0), model=torch.nn.Linear(3, 1),
                     train_loader=loader, batch_size=4)  # fmt: skip
    site.plan(rounds=1, local_epochs=1)
    result = site.train(get_task("heart"), lr=1e-2, epochs=1)
    assert result.steps <= site.steps_per_epoch == site.accountant.steps  # every Poisson draw is accounted
    with pytest.raises(ValueError, match="exports no sample_loss"):
        site.train(types.ModuleType("plain_task"), lr=1e-2, epochs=1)
