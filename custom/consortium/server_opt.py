"""Adaptive server optimizers (FedAdagrad, FedAdam, FedYogi; Reddi et al. 2021): settings and the server step.

Pure numpy, float64. The step runs at every site on the same aggregate (executors/server_step.py), because
under HE only the sites can read it; being deterministic, it leaves every site with the same global model.
With Delta_t = sum_i p_i (w_i - w_t), the sites' averaged pseudo-gradient (p_i: normalised weights):
    m_t = b1 m_{t-1} + (1 - b1) Delta_t
    v_t = v_{t-1} + Delta_t^2                                      (adagrad)
    v_t = b2 v_{t-1} + (1 - b2) Delta_t^2                          (adam)
    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)   (yogi)
    w_{t+1} = w_t + lr m_t / (sqrt(v_t) + tau)
with m_{-1} = 0 and v_{-1} = tau^2 (Algorithm 2 of the paper: v_{-1} >= tau^2; no bias correction). Entries
that are not floating point (integer buffers) take the plain average: w_{t+1} = w_t + Delta_t, rounded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

OPTIMIZERS = ("adam", "yogi", "adagrad")


@dataclass(frozen=True)
class ServerOptSettings:
    """The job's `server_optimizer: {name, lr, beta1, beta2, tau}`; lr is the server learning rate eta."""

    name: str
    lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    @classmethod
    def from_dict(cls, raw, where: str = "server_optimizer") -> "ServerOptSettings":
        """Parse and check the job's mapping; every error names `where`.key and says what is allowed."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a mapping {{name: adam|yogi|adagrad, lr: ...}}, got {raw!r}")
        unknown = sorted(set(raw) - {"name", "lr", "beta1", "beta2", "tau"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key (allowed: name, lr, beta1, beta2, tau)")
        if raw.get("name") not in OPTIMIZERS:
            raise ValueError(f"{where}.name: {raw.get('name')!r} is not one of {', '.join(OPTIMIZERS)}")
        if "lr" not in raw:
            raise ValueError(f"{where}.lr: required (the server learning rate eta, e.g. 0.01)")
        if raw["name"] == "adagrad" and "beta2" in raw:
            raise ValueError(f"{where}.beta2: adagrad has no second-moment decay; remove beta2")
        values = {}
        for key in ("lr", "beta1", "beta2", "tau"):
            if key in raw:
                value = raw[key]
                try:
                    values[key] = float(value) if not isinstance(value, bool) else math.nan
                except (TypeError, ValueError):
                    values[key] = math.nan
        settings = cls(name=raw["name"], **values)
        checks = [
            (settings.lr > 0 and math.isfinite(settings.lr), "lr", "must be a number > 0 (try 0.01)"),
            (settings.tau > 0 and math.isfinite(settings.tau), "tau", "must be a number > 0 (try 0.001)"),
            (0 <= settings.beta1 < 1, "beta1", "must be >= 0 and < 1 (try 0.9)"),
            (0 <= settings.beta2 < 1, "beta2", "must be >= 0 and < 1 (try 0.99)"),
        ]
        for ok, key, problem in checks:
            if not ok:
                raise ValueError(f"{where}.{key}: {raw.get(key)!r} {problem}")
        return settings

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.name == "adagrad":
            out.pop("beta2")
        return out

    def describe(self) -> str:
        """`adam (lr 0.01, beta1 0.9, beta2 0.99, tau 0.001)`."""
        return f"{self.name} ({', '.join(f'{k} {v:g}' for k, v in self.to_dict().items() if k != 'name')})"


@dataclass
class ServerOptState:
    """What every site keeps: the global model w_t of round `round` and the moments m, v (float64)."""

    round: int
    w: dict[str, np.ndarray]
    m: dict[str, np.ndarray]
    v: dict[str, np.ndarray]

    def fingerprint(self) -> str:
        """A short SHA-256 of w_t: equal at two sites exactly when they hold the same global model."""
        digest = hashlib.sha256()
        for name in sorted(self.w):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.w[name], dtype=np.float64).tobytes())
        return digest.hexdigest()[:16]


def _floating(value) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def start(settings: ServerOptSettings, round_number: int, weights: Mapping[str, np.ndarray]) -> ServerOptState:
    """The state at the initial model w_0: m = 0, v = tau^2 for every floating-point entry."""
    w = {k: np.array(v, dtype=np.float64) for k, v in weights.items()}
    floats = [k for k in weights if _floating(weights[k])]
    m = {k: np.zeros_like(w[k]) for k in floats}
    v = {k: np.full_like(w[k], settings.tau**2) for k in floats}
    return ServerOptState(round=int(round_number), w=w, m=m, v=v)


def step(settings: ServerOptSettings, state: ServerOptState, delta: Mapping[str, np.ndarray]) -> ServerOptState:
    """The server step with the averaged pseudo-gradient `delta` of round state.round: the state of the next."""
    if set(delta) != set(state.w):
        diff = sorted(set(delta) ^ set(state.w))[:3]
        raise ValueError(f"server optimizer: the aggregate's layers differ from the global model's (e.g. {diff})")
    b1, b2, lr, tau = settings.beta1, settings.beta2, settings.lr, settings.tau
    w, m, v = {}, {}, {}
    for name, current in state.w.items():
        d = np.asarray(delta[name], dtype=np.float64)
        if d.shape != current.shape:
            raise ValueError(
                f"server optimizer: layer {name!r} of the aggregate has shape {d.shape}, not {current.shape}"
            )
        if name not in state.m:  # an integer buffer: the plain average
            w[name] = np.rint(current + d)
            continue
        m[name] = b1 * state.m[name] + (1 - b1) * d
        d2 = d * d
        if settings.name == "adagrad":
            v[name] = state.v[name] + d2
        elif settings.name == "adam":
            v[name] = b2 * state.v[name] + (1 - b2) * d2
        else:  # yogi
            v[name] = state.v[name] - (1 - b2) * d2 * np.sign(state.v[name] - d2)
        w[name] = current + lr * m[name] / (np.sqrt(v[name]) + tau)
    return ServerOptState(round=state.round + 1, w=w, m=m, v=v)


def as_model(state: ServerOptState, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """w_t in the dtypes of `like` (the model the site received): what it loads, evaluates and trains from."""
    return {k: state.w[k].astype(np.asarray(like[k]).dtype) for k in state.w}


def pseudo_gradient(local: Mapping[str, np.ndarray], state: ServerOptState) -> dict[str, np.ndarray]:
    """What a site sends: w_i - w_t, in the local model's dtypes."""
    return {k: (np.asarray(v, dtype=np.float64) - state.w[k]).astype(np.asarray(v).dtype) for k, v in local.items()}
