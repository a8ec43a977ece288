"""FedProx and SCAFFOLD: the local corrections, checked against the papers' formulas on hand-computed cases."""

import numpy as np
import pytest
import torch

from consortium.aggregators.weighted import weighted_mean
from consortium.algorithms import (
    CONTROL_PREFIX,
    FedProx,
    Scaffold,
    ServerMomentum,
    proximal_term,
    split_controls,
    with_controls,
    zero_controls,
)


class Quadratic(torch.nn.Module):
    """One weight w and loss 0.5 * (w - target)^2, so the gradient is w - target."""

    def __init__(self, w0: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([w0]))

    def loss(self, target: float) -> torch.Tensor:
        return 0.5 * (self.w - target).pow(2).sum()


def run_steps(model, algorithm, *, target, lr, steps):
    """The train loop of every task: loss (+ algorithm term), backward, SGD step, algorithm.after_step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(target)
        extra = algorithm.loss_term(model) if algorithm is not None else None
        (loss if extra is None else loss + extra).backward()
        opt.step()
        if algorithm is not None:
            algorithm.after_step(model, lr)


def test_fedprox_with_mu_zero_is_fedavg_on_the_real_task(tiny_sites):
    """Same seed, same data: FedProx(mu=0) trains the seg2d UNet to exactly the weights plain training gives."""
    from consortium.tasks import seg2d

    cfg = next(iter(tiny_sites.values()))
    finals = []
    for use_prox in (False, True):
        torch.manual_seed(0)
        model = seg2d.build_model(channels=(4, 8), num_res_units=0)
        train_loader, _, _ = seg2d.make_loaders(cfg, batch_size=4, seed=0)
        algorithm = FedProx(model, mu=0.0) if use_prox else None
        seg2d.train(model, train_loader, epochs=1, lr=1e-2, algorithm=algorithm)
        finals.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for name in finals[0]:
        assert torch.equal(finals[0][name], finals[1][name]), name


def test_fedprox_gradient_pulls_toward_the_global_model():
    model = Quadratic(2.0)
    prox = FedProx(model, mu=0.5)  # anchor w_global = 2.0
    with torch.no_grad():
        model.w.fill_(3.0)
    term = prox.loss_term(model)
    assert float(term.detach()) == pytest.approx(0.5 * 0.5 * 1.0**2)
    term.backward()
    assert float(model.w.grad) == pytest.approx(0.5 * (3.0 - 2.0))  # mu * (w - w_global)
    # and it shortens a local run: with mu the site ends closer to where it started
    plain, proxed = Quadratic(0.0), Quadratic(0.0)
    run_steps(plain, None, target=4.0, lr=0.1, steps=5)
    run_steps(proxed, FedProx(proxed, mu=1.0), target=4.0, lr=0.1, steps=5)
    assert 0.0 < proxed.w.item() < plain.w.item()


def test_fedprox_refuses_negative_mu():
    with pytest.raises(ValueError, match="mu must be"):
        FedProx(Quadratic(0.0), mu=-0.1)
    assert float(proximal_term(Quadratic(1.0), {"w": torch.tensor([0.0])}, 2.0)) == pytest.approx(1.0)


def test_scaffold_step_correction_and_control_update_by_hand():
    """x = 1, loss 0.5 (w - 3)^2, c = 0.5, c_i = 0.2, lr = 0.1, K = 2 SGD steps:
    step 1: w = 1 - 0.1 * (1 - 3) = 1.2, corrected by -lr (c - c_i) = -0.03 -> 1.17
    step 2: w = 1.17 - 0.1 * (1.17 - 3) = 1.353, corrected -> 1.323
    c_i+ = c_i - c + (x - y) / (K lr) = 0.2 - 0.5 + (1 - 1.323) / 0.2 = -1.915
    (= the mean raw gradient (-2 - 1.83) / 2, as option II of the paper gives)."""
    model = Quadratic(1.0)
    scaffold = Scaffold()
    scaffold.local = {"w": np.array([0.2], dtype=np.float32)}
    scaffold.begin_round(model, {"w": np.array([0.5], dtype=np.float32)})
    run_steps(model, scaffold, target=3.0, lr=0.1, steps=2)
    assert model.w.item() == pytest.approx(1.323, abs=1e-6)
    new_local = scaffold.end_round(model)
    assert float(new_local["w"][0]) == pytest.approx(-1.915, abs=1e-5)
    assert float(scaffold.local["w"][0]) == pytest.approx(-1.915, abs=1e-5)  # kept for the next round


def test_scaffold_first_round_starts_from_zero_local_control():
    model = Quadratic(1.0)
    scaffold = Scaffold()
    scaffold.begin_round(model, {"w": np.zeros(1, dtype=np.float32)})
    run_steps(model, scaffold, target=3.0, lr=0.1, steps=1)  # c = c_i = 0: plain SGD
    assert model.w.item() == pytest.approx(1.2)
    assert float(scaffold.end_round(model)["w"][0]) == pytest.approx(-2.0, abs=1e-5)  # the one gradient


def test_scaffold_refuses_a_model_without_controls():
    with pytest.raises(ValueError, match="no control variate"):
        Scaffold().begin_round(Quadratic(0.0), {})


def test_global_control_is_the_step_weighted_mean_through_the_fedavg_aggregator():
    """Controls travel as model entries, so the server's ordinary weighted mean also averages them."""
    site_a = with_controls({"w": np.array([1.0])}, {"w": np.array([-2.0])})
    site_b = with_controls({"w": np.array([3.0])}, {"w": np.array([4.0])})
    mean = weighted_mean([site_a, site_b], [3.0, 1.0])
    weights, controls = split_controls(mean)
    assert set(mean) == {"w", CONTROL_PREFIX + "w"}
    assert weights["w"][0] == pytest.approx(1.5) and controls["w"][0] == pytest.approx(-0.5)


def test_zero_controls_cover_trainable_parameters_only():
    from consortium.tasks import seg2d

    model = seg2d.build_model(channels=(4, 8), num_res_units=0)
    controls = zero_controls(model)
    assert set(controls) == {n for n, p in model.named_parameters()}
    assert all(not v.any() for v in controls.values())


def test_server_momentum_at_the_sites_equals_textbook_fedavgm():
    """Sites adding beta * (w_t - w_{t-1}) to what they send, averaged by the ordinary weighted mean, give
    FedAvgM's m_t = beta * m_{t-1} + avg_i(w_i - w_t), w_{t+1} = w_t + m_t (Hsu et al. 2019), every round."""
    rng = np.random.default_rng(0)
    beta, weights = 0.6, [3.0, 1.0, 2.0]
    w = {"conv": rng.normal(size=(2, 3)), "bias": rng.normal(size=4)}
    reference, velocity = {k: v.copy() for k, v in w.items()}, {k: np.zeros_like(v) for k, v in w.items()}
    sites = [ServerMomentum(beta) for _ in weights]
    for t in range(5):
        local = [{k: v + rng.normal(size=v.shape) for k, v in w.items()} for _ in weights]  # local training
        assert all(site.receive(t, w) for site in sites)
        w = weighted_mean([site.outgoing(m) for site, m in zip(sites, local, strict=True)], weights)
        fedavg = weighted_mean(local, weights)
        for k in reference:
            velocity[k] = beta * velocity[k] + (fedavg[k] - reference[k])
            reference[k] = reference[k] + velocity[k]
            np.testing.assert_allclose(w[k], reference[k], rtol=0, atol=1e-6)  # float32 aggregation
    assert not np.allclose(w["conv"], fedavg["conv"])  # the momentum did change the model


def test_server_momentum_without_the_previous_model_sends_the_local_model_and_says_so():
    site = ServerMomentum(0.5)
    local = {"w": np.array([2.0], dtype=np.float32)}
    assert site.receive(3, {"w": np.array([1.0])}) is False  # joined at round 3: no w_2 here
    sent = site.outgoing(local)
    assert sent["w"].dtype == np.float32 and sent["w"][0] == 2.0
    assert site.receive(4, {"w": np.array([1.5])}) is True
    assert site.outgoing(local)["w"][0] == pytest.approx(2.0 + 0.5 * (1.5 - 1.0))


@pytest.mark.parametrize("beta", [-0.1, 1.0, float("nan")])
def test_server_momentum_refuses_beta_outside_zero_one(beta):
    with pytest.raises(ValueError, match="server_momentum must be in"):
        ServerMomentum(beta)


def test_fedprox_mu_travels_with_every_round_of_the_consortium_workflow():
    """ConsortiumFedAvg runs its own rounds, so it must set FLARE's `fedprox_mu` task meta itself (FLARE's FedAvg.run
    does); without it every site trained with mu = 0, and the FedProx jobs were FedAvg."""
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.app_constant import AlgorithmConstants

    from consortium.aggregators.weighted import WeightedAverage
    from consortium.workflows.fedavg import ConsortiumFedAvg

    def round_meta(**kwargs):
        workflow = ConsortiumFedAvg(task="heart", seed=0, num_rounds=2, aggregator=WeightedAverage(), **kwargs)
        model = FLModel(params={}, meta={AlgorithmConstants.FEDPROX_MU: 0.5})  # a stale value is not kept
        workflow._round_meta(model)
        return model.meta

    assert round_meta(fedprox_mu=0.1)[AlgorithmConstants.FEDPROX_MU] == 0.1
    assert AlgorithmConstants.FEDPROX_MU not in round_meta()
