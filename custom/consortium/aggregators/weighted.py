"""Weighted mean of site models (FedAvg): pure math plus a thin FLARE ModelAggregator wrapper."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator


class WeightedSum:
    """Running sum of weight * params in float64, so results do not depend on arrival order rounding."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, params: Mapping[str, np.ndarray], weight: float) -> None:
        if not np.isfinite(weight) or weight <= 0:
            raise ValueError(f"aggregation weight must be a positive number, got {weight!r}")
        if self.sums and set(params) != set(self.sums):
            diff = sorted(set(params) ^ set(self.sums))[:3]
            raise ValueError(f"model layers differ between sites (e.g. {diff}); all sites must run the same task")
        terms = {}  # checked in full before anything is added: a refused update leaves the sum untouched
        for name, value in params.items():
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"layer {name!r} is not numeric ({type(value).__name__})") from None
            if name in self.sums and array.shape != self.sums[name].shape:
                raise ValueError(f"layer {name!r} has shape {array.shape}, other sites sent {self.sums[name].shape}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"layer {name!r} contains NaN or Inf")
            terms[name] = array * weight
        for name, term in terms.items():
            self.sums[name] = self.sums[name] + term if name in self.sums else term
        self.total_weight += weight
        self.count += 1

    def mean(self, dtype=np.float32) -> dict[str, np.ndarray]:
        if not self.count:
            raise ValueError("no site model was accepted this round")
        return {name: (value / self.total_weight).astype(dtype) for name, value in self.sums.items()}


def weighted_mean(models: list[Mapping[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """sum_i w_i * m_i / sum_i w_i, layer by layer."""
    acc = WeightedSum()
    for params, weight in zip(models, weights, strict=True):
        acc.add(params, weight)
    return acc.mean()


def steps_weight(model: FLModel) -> float:
    """A site's aggregation weight: the number of local steps it reported for this round."""
    steps = (model.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
    if steps is None:
        site = (model.meta or {}).get("client_name", "a site")
        raise ValueError(f"{site} sent no {FLMetaKey.NUM_STEPS_CURRENT_ROUND}; it must run the consortium executor")
    return float(steps)


class WeightedAverage(ModelAggregator):
    """FedAvg aggregator: weights each site's full model by its local step count."""

    def __init__(self) -> None:
        super().__init__()
        self._acc = WeightedSum()

    def accept_model(self, model: FLModel) -> None:
        if model.params_type not in (None, ParamsType.FULL):
            raise ValueError(f"WeightedAverage expects full weights, got {model.params_type}")
        self._acc.add(model.params, steps_weight(model))

    def aggregate_model(self) -> FLModel:
        result = FLModel(params=self._acc.mean(), params_type=ParamsType.FULL)
        self.reset_stats()
        return result

    def reset_stats(self) -> None:
        self._acc = WeightedSum()
