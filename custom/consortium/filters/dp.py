"""Site filters for differential privacy: a Gaussian mechanism on a site's update, and the site's privacy guard.

Order in a job with HE (FLARE applies a site's scope filters first, then the job's filters in job order):
  task data:   HEDecryptModel -> KeepGlobalModel         (remember the plaintext model the site received)
  task result: PrivacyGuard (site scope) -> GaussianUpdateFilter -> HEEncryptUpdate   (noise before encryption)
"""

from __future__ import annotations

import math

import numpy as np
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants

from consortium import constants as C
from consortium.he.wire import PAYLOAD_KEY
from consortium.privacy import ledger, spending
from consortium.privacy.accountant import RDPAccountant, check_dp_args
from consortium.privacy.settings import DPUpdateSettings

CTX_RECEIVED_MODEL = "consortium_dp_received_model"  # FLContext prop: the task's plaintext global weights
CTX_RUN_CHAIN = "consortium_dp_run_chain"  # FLContext prop: job ids of this run (resumed jobs continue accounting)
CTX_ROUND = "consortium_dp_round"  # FLContext prop: the task's round (0-based), for the site's spending ledger
LEDGER_SUFFIX = ".update"  # the update filter's ledger beside DP-SGD's: <job id>.update.json


def clip_update(update: dict[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale the whole update (all layers together) to L2 norm <= clip_norm; returns (clipped, original norm)."""
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * scale for k, v in update.items()}, norm


def _weights(shareable: Shareable, who: str) -> tuple:
    dxo = from_shareable(shareable)
    if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, dict):
        raise ValueError(f"{who} expects model weights (DataKind.WEIGHTS), got {dxo.data_kind}")
    if PAYLOAD_KEY in dxo.data:
        raise ValueError(
            f"{who} got encrypted weights: it must see plaintext. Put it after HEDecryptModel on task data and "
            "before HEEncryptUpdate on task results"
        )
    return dxo, dxo.data


class KeepGlobalModel(Filter):
    """Task-data filter: remember the plaintext model a task brings, for GaussianUpdateFilter (tasks without a
    model pass through; GaussianUpdateFilter refuses to run if it then finds none)."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # refused on arrival (the site's audit trail): no model to keep
        if from_shareable(shareable).data_kind != DataKind.WEIGHTS:
            return shareable
        _, params = _weights(shareable, "KeepGlobalModel")
        received = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
        fl_ctx.set_prop(CTX_RECEIVED_MODEL, received, private=True, sticky=False)
        chain = from_shareable(shareable).get_meta_prop(C.META_RUN_CHAIN) or [fl_ctx.get_job_id()]
        fl_ctx.set_prop(CTX_RUN_CHAIN, list(chain), private=True, sticky=False)
        fl_ctx.set_prop(CTX_ROUND, shareable.get_header(AppConstants.CURRENT_ROUND), private=True, sticky=False)
        return shareable


class GaussianUpdateFilter(Filter):
    """Task-result filter: clip the site's update (its weights minus the model it received) to L2 norm
    `clip_norm`, add Gaussian noise of std `noise_multiplier x clip_norm` to every coordinate, and account.

    Sensitivity is 2 x clip_norm (two clipped updates differ by at most that, whatever changed in the site's
    data), so each round is a Gaussian mechanism with multiplier noise_multiplier / 2, composed over rounds
    in RDP. `seed` is for tests only; None draws the noise seed from the OS. For `submit_model` the filter
    sends the last model it released, already noised: re-sending it costs no privacy.
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float, seed: int | None = None):
        super().__init__()
        for name, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"GaussianUpdateFilter: {name} must be a finite number > 0, got {value!r}")
        try:
            check_dp_args(delta=delta)
        except ValueError as exc:
            raise ValueError(f"GaussianUpdateFilter: {exc}") from None
        if seed is not None and not (isinstance(seed, int) and seed >= 0):
            raise ValueError(f"GaussianUpdateFilter: seed must be None (OS entropy) or an int >= 0, got {seed!r}")
        self.clip_norm, self.noise_multiplier, self.delta, self.seed = clip_norm, noise_multiplier, delta, seed
        self.accountant = RDPAccountant()
        self._rng = np.random.default_rng(seed)
        self._released: dict | None = None

    @classmethod
    def from_settings(cls, settings: DPUpdateSettings, *, rounds: int) -> "GaussianUpdateFilter":
        """From a job's parsed `dp_update`: a target epsilon over the job's rounds fixes the noise."""
        noise = settings.noise_for(rounds)  # its errors name dp_update already
        try:
            return cls(clip_norm=settings.clip_norm, noise_multiplier=noise, delta=settings.delta)
        except ValueError as exc:
            raise ValueError(f"dp_update: {exc}") from None

    @property
    def noise_std(self) -> float:
        return self.noise_multiplier * self.clip_norm

    def privatize(self, local: dict, received: dict) -> tuple[dict[str, np.ndarray], float]:
        """received + clip(local - received) + N(0, noise_std^2); returns (noised weights, update norm)."""
        if set(local) != set(received):
            raise ValueError(
                f"GaussianUpdateFilter: the result's layers differ from the received model's "
                f"({sorted(set(local) ^ set(received))[:3]} ...)"
            )
        for name, value in local.items():
            if not np.issubdtype(np.asarray(value).dtype, np.floating):
                raise ValueError(f"GaussianUpdateFilter: layer {name} is not floating point; cannot add noise")
        update = {k: np.asarray(local[k], dtype=np.float64) - received[k] for k in local}
        clipped, norm = clip_update(update, self.clip_norm)
        noised = {
            k: (received[k] + clipped[k] + self._rng.normal(0.0, self.noise_std, size=clipped[k].shape)).astype(
                np.asarray(local[k]).dtype
            )
            for k in local
        }
        self.accountant.step(noise_multiplier=self.noise_multiplier / 2, sample_rate=1.0)
        return noised, norm

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # an error or refusal carries no weights
        dxo, local = _weights(shareable, "GaussianUpdateFilter")
        received = fl_ctx.get_prop(CTX_RECEIVED_MODEL)
        if received is None:  # submit_model brings no model: send the last released (noised) model again
            if self._released is None:
                raise ValueError(
                    "GaussianUpdateFilter: no received global model in this task's context and nothing released "
                    "yet. Add consortium.filters.dp.KeepGlobalModel as a task-data filter of the same tasks."
                )
            dxo.data = dict(self._released)
            return dxo.update_shareable(shareable)
        root = ledger.site_root(fl_ctx)
        chain = [j + LEDGER_SUFFIX for j in (fl_ctx.get_prop(CTX_RUN_CHAIN) or [fl_ctx.get_job_id()])]
        if not self.accountant.history:  # a resumed job, or this site restarted: what was spent still counts
            prior = ledger.load_prior(root, chain)
            if prior:
                self.accountant.history = list(prior[1])
        noised, norm = self.privatize(local, received)
        ledger.save(root, chain[-1], self.accountant.history)  # on this site's disk before the result leaves
        epsilon = self.accountant.epsilon(self.delta)
        round_index = fl_ctx.get_prop(CTX_ROUND)
        spending.append(root, {  # the site's ledger across jobs (privacy.spending), also before the result leaves
            "kind": spending.ROUND, "job": fl_ctx.get_job_id(), "chain": [j[: -len(LEDGER_SUFFIX)] for j in chain],
            "round": None if round_index is None else int(round_index) + 1, "mechanism": "dp_update",
            "epsilon": float(epsilon), "delta": float(self.delta), "accountant": self.accountant.last_method,
            "noise": float(self.noise_multiplier), "sample_rate": 1.0, "steps": int(self.accountant.steps),
        })  # fmt: skip
        metrics = dict(dxo.get_meta_prop(MetaKey.INITIAL_METRICS) or {})
        metrics[C.METRIC_DP_UPDATE_EPSILON] = epsilon
        dxo.set_meta_prop(MetaKey.INITIAL_METRICS, metrics)
        self.log_info(
            fl_ctx,
            f"DP update filter: update norm {norm:.3g} clipped to {self.clip_norm:g}, noise std {self.noise_std:.3g}; "
            f"epsilon {epsilon:.2f} at delta {self.delta:g} after {self.accountant.steps} round(s)",
        )
        dxo.data = self._released = noised
        return dxo.update_shareable(shareable)


class PrivacyGuard(Filter):
    """The site's own task-result filter (its kit's local/privacy.json scope): a result carrying a model leaves
    the site only if it was trained under the site's floor, whatever executor or filters the job configured.

    Evidence is the DP-SGD accounting the site's executor attaches (dp_epsilon, dp_delta in the result's meta).
    Anything that is not a metrics-only result is checked (deny by default)."""

    def __init__(self, require_dp: bool = False, max_epsilon: float | None = None, delta: float = 1e-5):
        super().__init__()
        if not isinstance(require_dp, bool):
            raise ValueError(f"PrivacyGuard: require_dp must be true or false, got {require_dp!r}")
        if max_epsilon is not None and not (isinstance(max_epsilon, (int, float)) and max_epsilon > 0):
            raise ValueError(f"PrivacyGuard: max_epsilon must be None or > 0, got {max_epsilon!r}")
        try:
            check_dp_args(delta=delta)
        except ValueError as exc:
            raise ValueError(f"PrivacyGuard: {exc}") from None
        self.require_dp, self.max_epsilon, self.delta = require_dp, max_epsilon, delta

    def problem(self, meta: dict) -> str | None:
        """Why a model result with this meta may not leave the site, or None."""
        epsilon, delta = meta.get(C.METRIC_DP_EPSILON), meta.get(C.METRIC_DP_DELTA)
        if epsilon is None or delta is None:
            return "it was not trained with DP-SGD, and this site requires DP" if self.require_dp else None
        if delta > self.delta:
            return f"its DP-SGD delta {delta:g} is above this site's {self.delta:g}"
        if self.max_epsilon is not None and epsilon > self.max_epsilon:
            return f"its epsilon {epsilon:.2f} is above this site's max_epsilon {self.max_epsilon:g}"
        return None

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        dxo = from_shareable(shareable)
        if dxo.data_kind == DataKind.METRICS:
            return shareable
        problem = self.problem(dxo.meta or {})
        if problem is None:
            return shareable
        message = (
            f"site {fl_ctx.get_identity_name()}: its privacy policy (local/privacy.json) stopped a model leaving "
            f"the site: {problem}. Fix: run a job with dp_sgd within the site's privacy: settings."
        )
        self.log_error(fl_ctx, message)
        reply = make_reply(ReturnCode.EARLY_TERMINATION)
        reply.set_header(C.HEADER_SITE_REFUSED, message)
        return reply
