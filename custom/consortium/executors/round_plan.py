"""One round of local training at a site, before and after the training loop: how long it trains, with which
correction, whether its result may leave, and the update that leaves. A mixin of SiteTrainer
(executors/trainer.py), which holds the state it reads (model, loaders, algorithm state, settings)."""

from __future__ import annotations

import math

import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AlgorithmConstants

from consortium import constants as C
from consortium.algorithms import WEIGHTINGS, FedProx, with_controls
from consortium.governance.gate import approval_meta


def check_finite(model: torch.nn.Module, loss: float) -> None:
    """Refuse to send an update with NaN or Inf (a diverged local run): the round goes on without it."""
    bad = [name for name, value in model.state_dict().items() if not bool(torch.isfinite(value).all())]
    if bad or not math.isfinite(loss):
        where = f"{len(bad)} layer(s), e.g. {bad[0]}" if bad else "the loss"
        raise ValueError(
            f"local training diverged: NaN or Inf in {where} (loss {loss}); the update was not sent. "
            "Lower the job's lr, or check this site's data for NaN pixels"
        )


class RoundPlan:
    """Needs SiteTrainer's model, train_loader, algorithm, local_epochs/local_steps, weighting, `training`
    (executors/training.py) and the optional _momentum, _server_step and _scaffold."""

    def _epochs(self) -> int:
        """Passes over the data this round: local_epochs, or enough to take local_steps steps."""
        if self.local_steps is None:
            return self.local_epochs
        return -(-self.local_steps // max(len(self.train_loader), 1))

    def _weight(self, steps: int) -> float:
        """This site's aggregation weight (job setting `weighting`)."""
        if self.weighting == "steps":
            return steps
        if self.weighting == "samples":
            return len(self.train_loader.dataset)
        if self.weighting == "uniform":
            return 1
        raise ValueError(f"weighting {self.weighting!r}: use one of {', '.join(WEIGHTINGS)}")

    def _round_algorithm(self, incoming: FLModel, controls: dict):
        """This round's local-training correction: None (FedAvg), FedProx or SCAFFOLD."""
        if self.algorithm == "scaffold":
            self._scaffold.begin_round(self.model, controls)
            return self._scaffold
        if self.algorithm == "fedprox":
            # mu comes with the task, by FLARE's FedAvg contract (its `fedprox_mu`); absent means mu = 0
            return FedProx(self.model, float((incoming.meta or {}).get(AlgorithmConstants.FEDPROX_MU) or 0.0))
        return None

    def _update(self, steps: int, metrics: dict, fl_ctx: FLContext) -> FLModel:
        """What leaves the site after training: its local model (self.local_params) as the job's algorithm
        wants it sent, its metrics, and the aggregation weight and privacy/approval facts in the meta."""
        # the local model, plus FedAvgM's term beta * (w_t - w_{t-1}) if the job has server momentum
        params = self._momentum.outgoing(self.local_params) if self._momentum is not None else self.local_params
        if self._server_step is not None:  # a server-optimizer job sends w_i - w_t and its w_t's fingerprint
            params = self._server_step.outgoing(params)
            metrics.update(self._server_step.report())
        if self._scaffold is not None:  # c_i travels with the weights: averaged (and encrypted) like them
            params = with_controls(params, self._scaffold.end_round(self.model))
        return FLModel(
            params=params,
            params_type=ParamsType.FULL,
            metrics=metrics,
            # the aggregation weight (FLARE's convention: NUM_STEPS_CURRENT_ROUND); HE sites encrypt weight x model
            meta={
                FLMetaKey.NUM_STEPS_CURRENT_ROUND: self._weight(steps),
                **({C.META_PSEUDO_GRADIENT: True} if self._server_step is not None else {}),
                **self.training.report(),  # the site's PrivacyGuard (local/privacy.json) checks these
                **approval_meta(fl_ctx),  # what this site's kit approved the job by (governance/gate.py)
            },
        )
