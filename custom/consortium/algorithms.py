"""Local-training corrections for non-IID sites (FedProx, SCAFFOLD) and FedAvg's server momentum.

A task's `train(..., algorithm=...)` calls two hooks and nothing else:
- `loss_term(model)`: a tensor added to the batch loss before `backward()` (or None);
- `after_step(model, lr)`: runs after each `optimizer.step()`.
Plain FedAvg passes `algorithm=None`. The server side needs no change for either algorithm:
- FedProx's mu travels in the task's meta (FLARE's own `fedprox_mu` contract of its FedAvg controller);
- SCAFFOLD's control variates travel as extra entries of the model (`CONTROL_PREFIX` + parameter name),
  so they are averaged exactly like the weights, and encrypted with them when HE is on.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

ALGORITHMS = ("fedavg", "fedprox", "scaffold")
# A site's aggregation weight: its local steps this round (FedAvg as published), 1 for every site, or the
# size of its training split (FLamby's FedAvg).
WEIGHTINGS = ("steps", "uniform", "samples")
CONTROL_PREFIX = "scaffold_c::"  # model entries that carry SCAFFOLD control variates, never model weights


def proximal_term(model: torch.nn.Module, anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """mu/2 * ||w - w_global||^2 over the trainable parameters (Li et al. 2020, eq. 2)."""
    total = None
    for name, param in model.named_parameters():
        if param.requires_grad and name in anchor:
            term = (param - anchor[name]).pow(2).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("FedProx: no trainable parameter of the model matches the global model")
    return 0.5 * mu * total


class FedProx:
    """Adds the proximal term that keeps local training near the global model it started from."""

    def __init__(self, model: torch.nn.Module, mu: float):
        if not (mu >= 0 and np.isfinite(mu)):
            raise ValueError(f"FedProx: mu must be a finite number >= 0, got {mu!r}")
        self.mu = float(mu)
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        if self.mu == 0.0:
            return None  # mu = 0 is exactly FedAvg: no term, no extra compute
        return proximal_term(model, self.anchor, self.mu)

    def after_step(self, model: torch.nn.Module, lr: float) -> None:
        pass


def split_controls(params: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """(model weights, control variates keyed by parameter name) from a received model."""
    weights = {k: v for k, v in params.items() if not k.startswith(CONTROL_PREFIX)}
    controls = {k[len(CONTROL_PREFIX) :]: v for k, v in params.items() if k.startswith(CONTROL_PREFIX)}
    return weights, controls


def with_controls(weights: Mapping[str, np.ndarray], controls: Mapping[str, np.ndarray]) -> dict:
    return {**weights, **{CONTROL_PREFIX + k: v for k, v in controls.items()}}


def zero_controls(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The initial control variates: zeros shaped like every trainable parameter."""
    return {n: np.zeros(tuple(p.shape), dtype=np.float32) for n, p in model.named_parameters() if p.requires_grad}


class Scaffold:
    """SCAFFOLD (Karimireddy et al. 2020) at one site, option II for the control-variate update.

    Each local step is followed by the correction  w <- w - lr * (c - c_i)  (FLARE's PTScaffoldHelper
    applies it the same way, after the optimizer's step). After K steps from the global model x to y_i:
        c_i+ = c_i - c + (x - y_i) / (K * lr)
    The site sends c_i+ with its weights; the server's weighted mean of the c_i+ is the next global c.
    """

    def __init__(self) -> None:
        self.local: dict[str, np.ndarray] | None = None  # c_i, kept by the site across rounds
        self._global: dict[str, torch.Tensor] = {}
        self._start: dict[str, torch.Tensor] = {}
        self._diff: dict[str, torch.Tensor] = {}
        self._lrs: list[float] = []

    def begin_round(self, model: torch.nn.Module, global_controls: Mapping[str, np.ndarray]) -> None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = sorted(set(names) - set(global_controls))
        if missing:
            raise ValueError(
                f"SCAFFOLD: the global model carries no control variate for {missing[:3]}; "
                "the server must run a scaffold job (algorithm: scaffold) for every site"
            )
        if self.local is None:
            self.local = {n: np.zeros_like(np.asarray(global_controls[n], dtype=np.float32)) for n in names}
        self._global = {n: torch.as_tensor(np.asarray(global_controls[n], dtype=np.float32)) for n in names}
        self._diff = {n: self._global[n] - torch.as_tensor(self.local[n]) for n in names}
        self._start = {n: p.detach().clone() for n, p in model.named_parameters() if n in self._diff}
        self._lrs = []

    def loss_term(self, model: torch.nn.Module) -> None:
        return None

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, lr: float) -> None:
        for name, param in model.named_parameters():
            diff = self._diff.get(name)
            if diff is not None:
                param.sub_(lr * diff.to(param.device))
        self._lrs.append(lr)

    @torch.no_grad()
    def end_round(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """Update c_i from this round's steps; returns the new c_i to send to the server."""
        steps = len(self._lrs)
        if steps == 0:
            return dict(self.local)  # no step taken: nothing learned about the drift
        # with a constant lr this is K * lr; with a schedule inside the round it is the sum of step sizes
        scale = float(sum(self._lrs))
        current = dict(model.named_parameters())
        new_local = {}
        for name, start in self._start.items():
            moved = (start - current[name].detach().cpu()) / scale
            new_local[name] = (torch.as_tensor(self.local[name]) - self._global[name] + moved).numpy()
        self.local = new_local
        return dict(new_local)


class ServerMomentum:
    """FedAvg with server momentum (FedAvgM, Hsu et al. 2019), computed at the sites: the server only adds.

    FedAvgM updates the global model w with m_t = beta * m_{t-1} + avg_i(w_i - w_t) and w_{t+1} = w_t + m_t,
    which is the same as w_{t+1} = avg_i(w_i) + beta * (w_t - w_{t-1}). Every site received w_t and w_{t-1},
    so each adds beta * (w_t - w_{t-1}) to the model it sends; as the aggregation weights are normalised, the
    server's weighted average of what the sites send is exactly the FedAvgM model. With HE nothing changes at
    the server (no ciphertext multiplication), and under DP-SGD the term is post-processing of global models.
    """

    def __init__(self, beta: float):
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"server_momentum must be in [0, 1), got {beta!r}")
        self.beta = float(beta)
        self._previous: tuple[int, dict[str, np.ndarray]] | None = None
        self._term: dict[str, np.ndarray] | None = None

    def receive(self, round_number: int, weights: Mapping[str, np.ndarray]) -> bool:
        """Record the global model of `round_number`; False if the previous round's model is unknown here
        (then this round's model is sent without the momentum term)."""
        previous, self._term = self._previous, None
        self._previous = (round_number, {k: np.array(v, dtype=np.float64) for k, v in weights.items()})
        if round_number == 0:
            return True  # w_{-1} = w_0: no momentum yet, at every site alike
        if previous is None or previous[0] != round_number - 1:
            return False
        current = self._previous[1]
        self._term = {
            k: self.beta * (current[k] - previous[1][k])
            for k in current
            if k in previous[1] and np.issubdtype(np.asarray(weights[k]).dtype, np.floating)
        }
        return True

    def outgoing(self, local: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model to send: the locally trained weights plus this round's momentum term."""
        if not self._term:
            return dict(local)
        out = {}
        for k, v in local.items():
            v = np.asarray(v)
            out[k] = (v + self._term[k]).astype(v.dtype) if k in self._term else v
        return out
