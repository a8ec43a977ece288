"""Renyi-DP accounting of the (Poisson-)subsampled Gaussian mechanism: DP-SGD steps and noised updates.

Math: Mironov, Talwar, Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism"
(integer orders: binomial expansion; fractional orders: their Section 3.3 series), composed by adding
RDP over steps, converted to (epsilon, delta) with Balle et al. 2020, Theorem 21. Opacus's RDPAccountant
implements the same analysis; tests/unit/test_privacy.py checks that both agree.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import special

# Opacus's default orders, extended to 256: small epsilons over many steps are tightest at high orders.
ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 160, 192, 256])
MAX_NOISE_MULTIPLIER = 1e4  # noise_for_target gives up above this: the budget is unreachable


def check_dp_args(*, delta: float, noise_multiplier: float | None = None, sample_rate: float | None = None) -> None:
    """Refuse values for which the accounting is meaningless, naming the argument."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}; use e.g. 1e-5 (below 1 / number of patients)")
    if noise_multiplier is not None and not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if sample_rate is not None and not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")


def read_dp_settings(raw, *, where: str, required: tuple[str, ...], example: str) -> dict[str, float]:
    """A job's DP mapping (`dp_sgd`, `dp_update`): `required` keys plus exactly one of target_epsilon (noise
    derived) and noise_multiplier, each a finite number > 0, delta < 1. Errors name `where.<key>`."""
    known = (*required, "target_epsilon", "noise_multiplier")
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping ({example}), got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(known)}")
    values = {}
    for key in known:
        if raw.get(key) is None:
            continue
        try:
            values[key] = float(raw[key])  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}: {raw[key]!r} is not a number") from None
        if not (math.isfinite(values[key]) and values[key] > 0):
            raise ValueError(f"{where}.{key}: must be a finite number > 0, got {raw[key]!r}")
    for key in required:
        if key not in values:
            raise ValueError(f"{where}.{key}: missing; e.g. {example}")
    if values.get("delta", 0) >= 1:
        raise ValueError(f"{where}.delta: must be < 1 (e.g. 1.0e-5, below 1 / number of patients)")
    if ("target_epsilon" in values) == ("noise_multiplier" in values):
        raise ValueError(f"{where}: set exactly one of target_epsilon (noise derived) and noise_multiplier")
    return values


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _log_sub(a: float, b: float) -> float:
    """log(exp(a) - exp(b)) for a >= b."""
    if b == -math.inf:
        return a
    if a == b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def _log_erfc(x: float) -> float:
    return math.log(2) + float(special.log_ndtr(-x * math.sqrt(2)))


def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha = log sum_k C(alpha, k) q^k (1-q)^(alpha-k) exp((k^2 - k) / (2 sigma^2))."""
    total = -math.inf
    for k in range(alpha + 1):
        term = math.log(special.binom(alpha, k)) + k * math.log(q) + (alpha - k) * math.log1p(-q)
        total = _log_add(total, term + (k * k - k) / (2 * sigma**2))
    return total


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha: the two convergent series of Mironov et al. 2019, Section 3.3."""
    low, high = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    k = 0
    while True:
        coef = special.binom(alpha, k)
        log_coef, j = math.log(abs(coef)), alpha - k
        term_low = log_coef + k * math.log(q) + j * math.log1p(-q)
        term_high = log_coef + j * math.log(q) + k * math.log1p(-q)
        s_low = term_low + (k * k - k) / (2 * sigma**2) + math.log(0.5) + _log_erfc((k - z0) / (math.sqrt(2) * sigma))
        s_high = term_high + (j * j - j) / (2 * sigma**2) + math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        if coef > 0:
            low, high = _log_add(low, s_low), _log_add(high, s_high)
        else:
            low, high = _log_sub(low, s_low), _log_sub(high, s_high)
        k += 1
        if max(s_low, s_high) < -30:
            return _log_add(low, high)


@lru_cache(maxsize=4096)
def _rdp_one_step(q: float, sigma: float, orders: tuple) -> tuple:
    out = []
    for alpha in orders:
        if q == 1.0:
            out.append(alpha / (2 * sigma**2))  # plain Gaussian mechanism: no subsampling
        elif float(alpha).is_integer():
            out.append(_log_a_integer(q, sigma, int(alpha)) / (alpha - 1))
        else:
            out.append(_log_a_fractional(q, sigma, alpha) / (alpha - 1))
    return tuple(out)


def rdp_subsampled_gaussian(q: float, sigma: float, steps: int, orders=ORDERS) -> np.ndarray:
    """RDP at each order of `steps` compositions of the Gaussian mechanism with Poisson sampling rate q
    and noise std = sigma x sensitivity (q = 1: every record in every step)."""
    check_dp_args(delta=0.5, noise_multiplier=sigma, sample_rate=q)
    return np.asarray(_rdp_one_step(float(q), float(sigma), tuple(orders))) * steps


def epsilon_from_rdp(rdp: np.ndarray, delta: float, orders=ORDERS) -> tuple[float, float]:
    """(epsilon, best order) at `delta` from RDP values (Balle et al. 2020, Theorem 21)."""
    check_dp_args(delta=delta)
    alphas = np.asarray(orders, dtype=float)
    eps = rdp - (math.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    if np.isnan(eps).all():
        return math.inf, math.nan
    best = int(np.nanargmin(eps))
    return max(float(eps[best]), 0.0), float(alphas[best])


class RDPAccountant:
    """Privacy spent by a sequence of (noise multiplier, sample rate, steps) mechanisms, composed in RDP."""

    def __init__(self, orders=ORDERS):
        self.orders = tuple(orders)
        self.history: list[tuple[float, float, int]] = []

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        check_dp_args(delta=0.5, noise_multiplier=noise_multiplier, sample_rate=sample_rate)
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            self.history[-1] = (noise_multiplier, sample_rate, self.history[-1][2] + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    @property
    def steps(self) -> int:
        return sum(s for _, _, s in self.history)

    def _rdp(self, history) -> np.ndarray:
        total = np.zeros(len(self.orders))
        for sigma, q, steps in history:
            total = total + rdp_subsampled_gaussian(q, sigma, steps, self.orders)
        return total

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at `delta` (0 before any step)."""
        return epsilon_from_rdp(self._rdp(self.history), delta, self.orders)[0] if self.history else 0.0

    def epsilon_after(self, delta: float, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon at `delta` if `steps` more steps ran: what a site checks before it trains a round."""
        return epsilon_from_rdp(self._rdp(self.history + [(noise_multiplier, sample_rate, steps)]), delta, self.orders)[
            0
        ]


def noise_for_target(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, tol: float = 0.01
) -> float:
    """The smallest noise multiplier (within `tol` in epsilon) whose `steps` steps at `sample_rate` spend at
    most `target_epsilon` at `delta`."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    check_dp_args(delta=delta, sample_rate=sample_rate)

    def eps(sigma: float) -> float:
        return epsilon_from_rdp(rdp_subsampled_gaussian(sample_rate, sigma, steps), delta)[0]

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"epsilon {target_epsilon} at delta {delta} is out of reach for {steps} steps at sample rate "
                f"{sample_rate:.3g}: raise the target epsilon, or train fewer rounds or epochs"
            )
    while True:
        mid = (low + high) / 2
        if eps(mid) <= target_epsilon:
            high = mid
        else:
            low = mid
        if target_epsilon - eps(high) <= tol or high - low < 1e-6:
            return high
