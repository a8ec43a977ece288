"""Our accountant's wiring of Opacus's RDP and PRV accountants, checked against Opacus directly: the tighter
bound is reported and named, the noise for a target meets it under the accountant named, bad input is refused."""

import copy
import json
import math
import pickle
import warnings

import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP
from opacus.accountants.utils import get_noise_multiplier

from consortium.privacy import accountant as acc
from consortium.privacy.accountant import ORDERS, Accountant, RDPAccountant, noise_for_target
from consortium.privacy.settings import read_dp_settings

warnings.filterwarnings("ignore", message="Optimal order")

# (noise multiplier, sample rate, steps): demo hospitals' DP-SGD, full-batch update rounds, a long run
HISTORIES = [
    [(1.5, 8 / 42, 100)],
    [(1.0, 8 / 144, 360)],
    [(5.0, 1.0, 10)],
    [(1.1, 0.01, 10_000)],
    [(1.2, 0.1, 50), (0.9, 0.2, 30), (1.2, 0.1, 50)],
]


@pytest.fixture(autouse=True)
def fresh_cache():
    acc.spent.cache_clear()  # monkeypatched Opacus must not be hidden by results cached earlier
    yield
    acc.spent.cache_clear()


def _opacus(cls, history):
    theirs = cls()
    theirs.history = list(history)
    return theirs


def _ours(history, **kwargs):
    ours = Accountant(**kwargs)
    for sigma, q, steps in history:
        ours.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    return ours


@pytest.mark.parametrize("history", HISTORIES)
def test_rdp_equals_opacus_rdp_for_the_same_history(history):
    ours = _ours(history, methods=("rdp",))
    assert ours.steps == sum(n for *_, n in history)
    for delta in (1e-5, 1e-3):
        expected = _opacus(OpacusRDP, history).get_epsilon(delta, alphas=list(ORDERS))
        assert ours.epsilon(delta) == pytest.approx(expected, rel=1e-12)
        assert ours.last_method == "rdp"
        assert _ours(history).spent(delta).rdp == pytest.approx(expected, rel=1e-12)  # also kept with PRV on


@pytest.mark.parametrize("history", HISTORIES)
def test_prv_used_when_tighter_and_reported_as_such(history):
    ours = _ours(history)
    rdp = _opacus(OpacusRDP, history).get_epsilon(1e-5, alphas=list(ORDERS))
    prv = _opacus(OpacusPRV, history).get_epsilon(1e-5, eps_error=acc.PRV_EPS_ERROR)
    assert prv < rdp  # PRV is tighter in every regime here
    assert ours.epsilon(1e-5) == pytest.approx(prv, rel=1e-9)
    assert ours.last_method == "prv"
    assert ours.epsilon_with_method(1e-5) == (pytest.approx(prv, rel=1e-9), "prv")
    assert ours.spent(1e-5).note == ""


def test_rdp_reported_when_it_is_the_tighter(monkeypatch):
    monkeypatch.setattr(OpacusPRV, "get_epsilon", lambda self, delta, **kw: 1e6)
    ours = _ours(HISTORIES[0])
    assert ours.epsilon_with_method(1e-5) == (pytest.approx(ours.spent(1e-5).rdp), "rdp")


def test_prv_failure_falls_back_to_rdp_and_says_so(monkeypatch):
    def fail(self, delta, **kwargs):
        raise ValueError("Floating point errors will dominate for such small values of delta")

    monkeypatch.setattr(OpacusPRV, "get_epsilon", fail)
    ours = _ours(HISTORIES[0])
    spent = ours.spent(1e-5)
    assert (spent.accountant, spent.prv) == ("rdp", None) and "Floating point" in spent.note
    assert ours.epsilon(1e-5) == pytest.approx(_opacus(OpacusRDP, HISTORIES[0]).get_epsilon(1e-5, alphas=list(ORDERS)))
    with pytest.raises(ValueError, match="PRV accountant: Floating point"):
        Accountant(methods=("prv",)).spent(1e-5, extra=HISTORIES[0])  # PRV alone: no silent fallback


def test_prv_skipped_where_it_would_take_minutes():
    # Opacus's PRV takes about 4 minutes here (and returns inf); RDP says epsilon ~ 3000 at once
    spent = _ours([(0.3, 0.5, 1000)]).spent(1e-5)
    assert spent.accountant == "rdp" and spent.epsilon > 1000 and "grid" in spent.note


def test_epsilon_after_is_epsilon_after_stepping():
    ours = _ours(HISTORIES[0])
    after = ours.epsilon_after(1e-5, noise_multiplier=1.5, sample_rate=8 / 42, steps=50)
    assert ours.steps == 100  # nothing spent by asking
    ours.step(noise_multiplier=1.5, sample_rate=8 / 42, steps=50)
    assert ours.history == [(1.5, 8 / 42, 150)] and ours.epsilon(1e-5) == after
    assert Accountant().epsilon(1e-5) == 0.0
    assert RDPAccountant is Accountant  # callers keep the old name


@pytest.mark.parametrize("q, steps, target", [(8 / 42, 100, 8), (0.05, 300, 1), (0.25, 30, 2), (1.0, 10, 8)])
def test_noise_for_target_meets_the_target_under_the_accountant_it_names(q, steps, target):
    sigma = noise_for_target(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps)
    assert sigma.accountant == "prv"
    history = [(float(sigma), q, steps)]
    theirs = _opacus(OpacusPRV, history).get_epsilon(1e-5, eps_error=acc.PRV_EPS_ERROR)
    assert theirs == pytest.approx(sigma.epsilon, rel=1e-9)
    assert target - 0.01 <= theirs <= target
    # and it is the smallest such noise: 1% less would overspend
    assert _opacus(OpacusPRV, [(0.99 * sigma, q, steps)]).get_epsilon(1e-5, eps_error=acc.PRV_EPS_ERROR) > target
    rdp_sigma = noise_for_target(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, methods=("rdp",))
    assert rdp_sigma.accountant == "rdp" and sigma < rdp_sigma  # PRV needs less noise for the same promise
    opacus_rdp = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps)
    assert rdp_sigma == pytest.approx(opacus_rdp, rel=0.01)
    assert target - 0.01 <= _opacus(OpacusRDP, [(rdp_sigma, q, steps)]).get_epsilon(1e-5, alphas=list(ORDERS)) <= target


def test_noise_multiplier_is_a_float_for_callers():
    sigma = noise_for_target(target_epsilon=8, delta=1e-5, sample_rate=1.0, steps=10)
    assert type(2 * sigma) is float and json.loads(json.dumps([sigma])) == [float(sigma)]
    for clone in (pickle.loads(pickle.dumps(sigma)), copy.deepcopy(sigma)):
        assert (clone, clone.accountant, clone.epsilon) == (sigma, sigma.accountant, sigma.epsilon)
    ours = Accountant()
    ours.step(noise_multiplier=sigma, sample_rate=1.0, steps=10)
    assert type(ours.history[0][0]) is float  # the ledger stores plain numbers


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf])
def test_target_epsilon_refused_naming_it(bad):
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_for_target(target_epsilon=bad, delta=1e-5, sample_rate=0.1, steps=10)
    with pytest.raises(ValueError, match=r"dp_sgd\.target_epsilon"):
        read_dp_settings(
            {"target_epsilon": bad, "delta": 1e-5, "max_grad_norm": 1.0},
            where="dp_sgd",
            required=("delta", "max_grad_norm"),
            example="target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0",
        )


@pytest.mark.parametrize("bad", [0, -1e-5, 1, 1.5, math.nan])
def test_delta_out_of_range_refused_naming_it(bad):
    with pytest.raises(ValueError, match="delta"):
        noise_for_target(target_epsilon=1, delta=bad, sample_rate=0.1, steps=10)
    ours = _ours(HISTORIES[0])
    with pytest.raises(ValueError, match="delta"):
        ours.epsilon(bad)


def test_delta_at_least_one_over_patients_refused_naming_it():
    with pytest.raises(ValueError, match=r"delta 0\.01 must be below 1 / number of patients \(1/100"):
        acc.check_dp_args(delta=0.01, num_patients=100)
    acc.check_dp_args(delta=1e-5, num_patients=100)


def test_bad_mechanism_refused_and_nothing_spent():
    ours = Accountant()
    for kwargs, name in [
        ({"noise_multiplier": 0, "sample_rate": 0.1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
    ]:
        with pytest.raises(ValueError, match=name):
            ours.step(**kwargs)
    assert ours.history == [] and ours.steps == 0
    with pytest.raises(ValueError, match="methods"):
        Accountant(methods=("moments",))
    with pytest.raises(ValueError, match="out of reach"):
        noise_for_target(target_epsilon=1e-4, delta=1e-9, sample_rate=1.0, steps=10**7)
