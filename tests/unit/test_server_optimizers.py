"""FedAdam, FedYogi, FedAdagrad stepped at the sites equal the textbook server step (Reddi et al. 2021, Alg. 2)."""

import numpy as np
import pytest

from consortium.executors.server_step import ServerStateMissing, SiteServerStep, load, save
from consortium.server_opt import ServerOptSettings, pseudo_gradient, start, step


def textbook_server(name, x0, site_models_per_round, weights, *, eta, b1, b2, tau):
    """The server of Algorithm 2, on one flat vector, written from the paper: it holds x, m, v and steps them
    with the weighted mean of the sites' x_i - x."""
    x = np.array(x0, dtype=np.float64)
    m, v = np.zeros_like(x), np.full_like(x, tau**2)  # m_{-1} = 0, v_{-1} = tau^2
    history = [x.copy()]
    for train in site_models_per_round:
        locals_ = [site(x) for site in train]
        delta = sum(p * (xi - x) for p, xi in zip(weights, locals_, strict=True)) / sum(weights)
        m = b1 * m + (1 - b1) * delta
        if name == "adagrad":
            v = v + delta**2
        elif name == "adam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
        history.append(x.copy())
    return history


def local_trainer(seed):
    """A deterministic stand-in for a site's local training: a few gradient steps on its own quadratic."""
    target = np.random.default_rng(seed).normal(size=6)
    return lambda x: x - 0.3 * (x - target) + 0.01 * np.sin(x * (seed + 1))


@pytest.mark.parametrize("name", ["adam", "yogi", "adagrad"])
def test_site_side_step_equals_textbook_server_over_rounds(name):
    raw = {"name": name, "lr": 0.05, "beta1": 0.9, "tau": 1e-3} | ({} if name == "adagrad" else {"beta2": 0.95})
    settings = ServerOptSettings.from_dict(raw)
    b2 = 0.95 if name != "adagrad" else None
    trainers, weights, rounds = [local_trainer(s) for s in range(3)], [3.0, 1.0, 2.0], 6
    x0 = np.random.default_rng(9).normal(size=6).astype(np.float32)
    expected = textbook_server(name, x0, [trainers] * rounds, weights, eta=0.05, b1=0.9, b2=b2, tau=1e-3)

    state = start(settings, 0, {"w": x0})
    for r in range(rounds):  # the consortium: sites send w_i - w_t, the server averages, each site steps
        sent = [pseudo_gradient({"w": t(state.w["w"]).astype(np.float64)}, state) for t in trainers]
        aggregate = {"w": sum(p * s["w"] for p, s in zip(weights, sent, strict=True)) / sum(weights)}
        state = step(settings, state, aggregate)
        np.testing.assert_allclose(state.w["w"], expected[r + 1], rtol=0, atol=1e-12)
        assert state.round == r + 1
    assert np.abs(expected[-1] - expected[0]).max() > 0.02  # the model moved


def test_two_sites_fed_the_same_aggregates_hold_identical_models(tmp_path):
    settings = {"name": "yogi", "lr": 0.01}
    x0 = {
        "a.weight": np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32),
        "a.bias": np.zeros(3, np.float32),
    }
    sites = [SiteServerStep(settings), SiteServerStep(settings)]
    root = [tmp_path / "site-a", tmp_path / "site-b"]

    def task(params, number, aggregate_of=None):
        from nvflare.app_common.abstract.fl_model import FLModel

        meta = {"run_chain": ["job1"]} | ({} if aggregate_of is None else {"aggregate_of_round": aggregate_of})
        return FLModel(params=params, current_round=number, meta=meta)

    models = [s.global_model(task(x0, 0), x0, root=str(r), job_id="job1") for s, r in zip(sites, root, strict=True)]
    rng = np.random.default_rng(2)
    for number in range(1, 5):
        aggregate = {k: (rng.normal(size=v.shape) * 1e-3).astype(np.float32) for k, v in x0.items()}
        models = [s.global_model(task(aggregate, number, number - 1), aggregate, root=str(r), job_id="job1")
                  for s, r in zip(sites, root, strict=True)]  # fmt: skip
        for k in x0:
            assert models[0][k].dtype == np.float32 and np.array_equal(models[0][k], models[1][k])
        assert sites[0].report() == sites[1].report()
    assert not np.array_equal(models[0]["a.weight"], x0["a.weight"])

    # a restarted site goes on from its disk; one that missed an aggregate refuses, saying so
    restarted = SiteServerStep(settings)
    aggregate = {k: np.full(v.shape, 1e-3, np.float32) for k, v in x0.items()}
    again = restarted.global_model(task(aggregate, 5, 4), aggregate, root=str(root[0]), job_id="job1")
    ahead = sites[1].global_model(task(aggregate, 5, 4), aggregate, root=str(root[1]), job_id="job1")
    assert all(np.array_equal(again[k], ahead[k]) for k in x0)
    with pytest.raises(ServerStateMissing, match="update of round 7, but this site holds the global model of round 6"):
        restarted.global_model(task(aggregate, 7, 6), aggregate, root=str(root[0]), job_id="job1")
    with pytest.raises(ServerStateMissing, match="holds no state"):
        SiteServerStep(settings).global_model(task(aggregate, 2, 1), aggregate, root=str(tmp_path / "new"), job_id="j")


def test_state_round_trips_through_disk(tmp_path):
    settings = ServerOptSettings.from_dict({"name": "adam", "lr": 0.1})
    state = step(settings, start(settings, 0, {"w": np.ones(3, np.float32)}), {"w": np.full(3, 0.5)})
    save(str(tmp_path), "j2", state)
    loaded = load(str(tmp_path), ["j1", "j2"])
    assert loaded.round == 1 and loaded.fingerprint() == state.fingerprint()
    assert all(np.array_equal(getattr(loaded, p)["w"], getattr(state, p)["w"]) for p in ("w", "m", "v"))
    assert load(str(tmp_path), ["other"]) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "sgd", "lr": 1}, "server_optimizer.name: 'sgd' is not one of adam, yogi, adagrad"),
        ({"name": "adam"}, "server_optimizer.lr: required"),
        ({"name": "adam", "lr": 0}, "server_optimizer.lr: 0 must be a number > 0"),
        ({"name": "adam", "lr": 0.1, "tau": 0}, "server_optimizer.tau: 0 must be a number > 0"),
        ({"name": "adam", "lr": 0.1, "tau": -1e-3}, "server_optimizer.tau"),
        ({"name": "yogi", "lr": 0.1, "beta1": 1.0}, "server_optimizer.beta1: 1.0 must be >= 0 and < 1"),
        ({"name": "yogi", "lr": 0.1, "beta2": -0.1}, "server_optimizer.beta2"),
        ({"name": "adagrad", "lr": 0.1, "beta2": 0.9}, "server_optimizer.beta2: adagrad has no second-moment"),
        ({"name": "adam", "lr": "fast"}, "server_optimizer.lr"),
        ({"name": "adam", "lr": 0.1, "eps": 1}, "server_optimizer.eps: unknown key"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        ServerOptSettings.from_dict(raw)


def test_ckks_keeps_the_demo_models_averaged_update_precise():
    """Under HE the sites decrypt the sum of small differences: CKKS's absolute error must stay far below them."""
    import tenseal as ts

    from consortium.he.contexts import DEFAULT_PARAMS, make_contexts
    from consortium.he.wire import EncryptedSum, EncryptedUpdate
    from consortium.tasks import get_task, state_to_numpy

    server, client = (ts.context_from(c) for c in make_contexts(**DEFAULT_PARAMS))
    shapes = state_to_numpy(get_task("seg2d").build_model())
    rng = np.random.default_rng(0)
    updates = [{k: (rng.normal(size=v.shape) * 1e-3).astype(np.float32) for k, v in shapes.items()} for _ in range(3)]
    total = EncryptedSum(server)
    for update in updates:
        total.add(EncryptedUpdate.decode(EncryptedUpdate.encrypt(client, update, weight=1.0).encode()))
    decrypted = total.result().decrypt(client)
    err = max(float(np.abs(decrypted[k] - sum(u[k].astype(np.float64) for u in updates) / 3).max()) for k in shapes)
    print(f"CKKS max abs error on the demo UNet's averaged update (values ~1e-3): {err:.2e}")
    assert err < 1e-5, err  # updates are ~1e-3; the step amplifies an error by at most lr / tau
