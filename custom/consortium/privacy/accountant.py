"""Privacy accounting of the (Poisson-)subsampled Gaussian mechanism with Opacus's accountants, RDP and PRV.

Both give valid upper bounds on epsilon for the same mechanisms, so the smaller holds: we report it and
name the accountant that gave it. RDP (Mironov et al. 2019, converted with Balle et al. 2020) is fast and
always available; PRV (Gopi et al. 2021, numerical composition) is tighter here but slow or failing for
very large epsilon or very many steps, where we fall back to RDP and say why.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Opacus is imported where it is used, not here: every hospital's PrivacyGuard (filters/dp.py) imports this module
# for check_dp_args, and loading Opacus (with torch.distributed) took about 40% of a site job process's imports,
# paid by every job, with DP or without.

log = logging.getLogger(__name__)

# Opacus's default orders, extended to 256: small epsilons over many steps are tightest at high orders.
ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 160, 192, 256])
METHODS = ("rdp", "prv")
MAX_NOISE_MULTIPLIER = 1e4  # noise_for_target gives up above this: the budget is unreachable
PRV_EPS_ERROR = 0.01  # PRV reports its upper bound: estimate + this
MAX_PRV_POINTS = 3_000_000  # PRV's grid beyond this takes many seconds (eps far above any useful budget)


def check_dp_args(
    *,
    delta: float,
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    target_epsilon: float | None = None,
    num_patients: int | None = None,
) -> None:
    """Refuse values for which the accounting is meaningless, naming the argument, before anything is spent."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}; use e.g. 1e-5 (below 1 / number of patients)")
    if num_patients is not None and delta >= 1 / num_patients:
        raise ValueError(
            f"delta {delta:g} must be below 1 / number of patients (1/{num_patients} = {1 / num_patients:.3g}): "
            "a larger delta allows releasing one patient's data outright; use e.g. 1e-5"
        )
    if noise_multiplier is not None and not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if sample_rate is not None and not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    if target_epsilon is not None and not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")


def rdp_subsampled_gaussian(q: float, sigma: float, steps: int, orders=ORDERS) -> np.ndarray:
    """RDP at each order of `steps` subsampled Gaussian steps (Opacus's analysis); kept for the RDP-by-hand test."""
    check_dp_args(delta=0.5, noise_multiplier=sigma, sample_rate=q)
    from opacus.accountants.analysis import rdp as _rdp_analysis

    return np.asarray(_rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(orders)))


@dataclass(frozen=True)
class Spent:
    """Epsilon at one delta: the tighter bound, which accountant gave it, both numbers, why PRV was not used."""

    epsilon: float
    accountant: str
    rdp: float
    prv: float | None = None
    note: str = ""


def _prv_points(history: tuple, rdp_epsilon: float) -> float:
    """About how many grid points Opacus's PRV would use: its domain is at least +-(RDP epsilon + 3) with the
    mesh of PRVAccountant._get_domain. Cheap, so hopeless cases are skipped before they take minutes."""
    total = sum(n for _, _, n in history)
    mesh = PRV_EPS_ERROR / math.sqrt(total * math.log(12 / 1e-8) / 2)  # delta_error <= 1e-8 for delta <= 1e-5
    return 2 * (rdp_epsilon + 3) / mesh


@lru_cache(maxsize=512)
def spent(history: tuple, delta: float, methods: tuple = METHODS, orders: tuple = ORDERS) -> Spent:
    """Epsilon at `delta` of a history ((noise multiplier, sample rate, steps), ...) under the tighter of
    `methods`. Cached: a site asks for the same history before and after each round."""
    check_dp_args(delta=delta)
    if not history:
        return Spent(0.0, methods[0], 0.0)
    from opacus.accountants import PRVAccountant as _OpacusPRV
    from opacus.accountants import RDPAccountant as _OpacusRDP

    rdp = _OpacusRDP()
    rdp.history = list(history)
    rdp_eps = float(rdp.get_epsilon(delta, alphas=list(orders)))
    if "prv" not in methods:
        return Spent(rdp_eps, "rdp", rdp_eps)
    try:
        if _prv_points(history, rdp_eps) > MAX_PRV_POINTS:
            raise ValueError(
                f"skipped: epsilon {rdp_eps:.3g} over {sum(h[2] for h in history)} steps needs too fine a grid"
            )
        prv = _OpacusPRV()
        prv.history = list(history)
        with np.errstate(divide="ignore"):  # log(0) at q = 1 is Opacus's intended -inf
            prv_eps = float(prv.get_epsilon(delta, eps_error=PRV_EPS_ERROR))
        if not math.isfinite(prv_eps):
            raise ValueError(f"epsilon {prv_eps}")
    except (ValueError, RuntimeError, FloatingPointError, OverflowError) as exc:
        if "rdp" not in methods:
            raise ValueError(f"PRV accountant: {exc}") from exc
        note = f"PRV {exc}; using RDP"
        log.info("privacy accountant: %s (history %s, delta %g)", note, list(history), delta)
        return Spent(rdp_eps, "rdp", rdp_eps, note=note)
    if "rdp" not in methods:
        return Spent(prv_eps, "prv", rdp_eps, prv_eps)
    best = "prv" if prv_eps < rdp_eps else "rdp"
    return Spent(min(prv_eps, rdp_eps), best, rdp_eps, prv_eps)


class Accountant:
    """Privacy spent by a sequence of (noise multiplier, sample rate, steps) mechanisms, composed by Opacus's
    RDP and PRV accountants; `epsilon` is the tighter and `last_method` names it."""

    def __init__(self, orders=ORDERS, methods=METHODS):
        unknown = set(methods) - set(METHODS)
        if not methods or unknown:
            raise ValueError(f"accountant methods must be a non-empty subset of {METHODS}, got {methods!r}")
        self.orders, self.methods = tuple(orders), tuple(m for m in METHODS if m in methods)
        self.history: list[tuple[float, float, int]] = []
        self.last: Spent | None = None

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        check_dp_args(delta=0.5, noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        noise_multiplier, sample_rate = float(noise_multiplier), float(sample_rate)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            self.history[-1] = (noise_multiplier, sample_rate, self.history[-1][2] + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    @property
    def last_method(self) -> str | None:
        """The accountant ("rdp" or "prv") that gave the last epsilon returned."""
        return self.last.accountant if self.last else None

    def spent(self, delta: float, extra: tuple = ()) -> Spent:
        """Spent at `delta`, with `extra` mechanisms appended (merged like step() merges, so asking before a
        round gives the same number, and the same cache entry, as asking after it)."""
        history: list[tuple[float, float, int]] = []
        for sigma, q, n in [*self.history, *extra]:
            if history and history[-1][:2] == (float(sigma), float(q)):
                history[-1] = (*history[-1][:2], history[-1][2] + int(n))
            else:
                history.append((float(sigma), float(q), int(n)))
        self.last = spent(tuple(history), float(delta), self.methods, self.orders)
        return self.last

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at `delta` (0 before any step), the tighter of the accountants."""
        return self.spent(delta).epsilon

    def epsilon_with_method(self, delta: float) -> tuple[float, str]:
        spent_now = self.spent(delta)
        return spent_now.epsilon, spent_now.accountant

    def epsilon_after(self, delta: float, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon at `delta` if `steps` more steps ran: what a site checks before it trains a round."""
        return self.spent(delta, extra=((noise_multiplier, sample_rate, steps),)).epsilon


RDPAccountant = Accountant  # the name callers and saved code use; it now also runs PRV


class NoiseMultiplier(float):
    """A noise multiplier (a float, as callers use it) that says which accountant chose it and its epsilon."""

    def __new__(cls, value: float, accountant: str, epsilon: float):
        obj = super().__new__(cls, value)
        obj.accountant, obj.epsilon = accountant, epsilon
        return obj

    def __getnewargs__(self):
        return float(self), self.accountant, self.epsilon


def noise_for_target(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, tol: float = 0.01, methods=METHODS
) -> NoiseMultiplier:
    """The smallest noise multiplier (within `tol` in epsilon) whose `steps` steps at `sample_rate` spend at
    most `target_epsilon` at `delta` under the tighter accountant; `.accountant` names it."""
    check_dp_args(delta=delta, sample_rate=sample_rate, target_epsilon=target_epsilon)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")

    def search(methods: tuple, low: float, high: float) -> NoiseMultiplier:
        def at(sigma: float) -> Spent:
            return spent(((sigma, float(sample_rate), steps),), float(delta), methods)

        while at(high).epsilon > target_epsilon:
            low, high = high, 2 * high
            if high > MAX_NOISE_MULTIPLIER:
                raise ValueError(
                    f"epsilon {target_epsilon} at delta {delta} is out of reach for {steps} steps at sample rate "
                    f"{sample_rate:.3g}: raise the target epsilon, or train fewer rounds or epochs"
                )
        while low > 1e-3 and at(low).epsilon <= target_epsilon:
            low, high = low / 2, low
        goal = math.log(max(target_epsilon - tol / 2, target_epsilon / 2))  # aim just inside the target
        while target_epsilon - at(high).epsilon > tol and high - low > 1e-5 * high:
            mid = (low + high) / 2  # bisection while epsilon(low) is infinite, else interpolate: PRV is slow
            eps_low, eps_high = at(low).epsilon if low > 0 else math.inf, at(high).epsilon
            if math.isfinite(eps_low) and eps_high > 0:  # log epsilon is nearly linear in log sigma
                t = (goal - math.log(eps_high)) / (math.log(eps_low) - math.log(eps_high))
                mid = math.exp(math.log(high) + min(max(t, 0.05), 0.95) * (math.log(low) - math.log(high)))
            low, high = (low, mid) if at(mid).epsilon <= target_epsilon else (mid, high)
        best = at(high)
        return NoiseMultiplier(high, best.accountant, best.epsilon)

    methods = tuple(methods)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # low sigmas, searching
        sigma = search(("rdp",), 0.0, 1.0) if "rdp" in methods else None  # fast; bounds PRV's answer from above
        if "prv" not in methods:
            return sigma
        return search(methods, 0.75 * sigma if sigma else 0.0, sigma or 1.0)
