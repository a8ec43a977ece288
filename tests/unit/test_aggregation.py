"""FedAvg math: weighted by local steps, checked against hand-computed values."""

import numpy as np
import pytest
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium.aggregators.weighted import WeightedAverage, weighted_mean


def test_weighted_mean_hand_computed():
    a = {"w": np.array([1.0, 2.0]), "b": np.array([0.0])}
    b = {"w": np.array([3.0, 6.0]), "b": np.array([4.0])}
    out = weighted_mean([a, b], [1, 3])
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5, (0 + 12)/4 = 3
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], [3.0])
    assert out["w"].dtype == np.float32


def _site(params, steps, name):
    return FLModel(
        params=params,
        params_type=ParamsType.FULL,
        meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps, "client_name": name},
    )


def test_aggregator_uses_local_steps_and_resets():
    agg = WeightedAverage()
    agg.accept_model(_site({"w": np.array([0.0])}, 9, "a"))
    agg.accept_model(_site({"w": np.array([10.0])}, 3, "b"))
    assert agg.aggregate_model().params["w"][0] == pytest.approx(2.5)  # 3*10/12
    agg.accept_model(_site({"w": np.array([7.0])}, 1, "c"))
    assert agg.aggregate_model().params["w"][0] == pytest.approx(7.0)  # nothing left from the last round


def test_bad_contributions_refused():
    agg = WeightedAverage()
    with pytest.raises(ValueError, match="NUM_STEPS_CURRENT_ROUND"):
        agg.accept_model(FLModel(params={"w": np.zeros(1)}, params_type=ParamsType.FULL, meta={}))
    with pytest.raises(ValueError, match="positive"):
        agg.accept_model(_site({"w": np.zeros(1)}, 0, "a"))
    agg.accept_model(_site({"w": np.zeros(1)}, 1, "a"))
    with pytest.raises(ValueError, match="layers differ"):
        agg.accept_model(_site({"v": np.zeros(1)}, 1, "b"))
    with pytest.raises(ValueError, match="no site model"):
        WeightedAverage().aggregate_model()
