"""Lost sites and bad updates: round bookkeeping, refusals that leave the sum untouched, survivors' weights
(plaintext and HE) checked against hand-computed values, NaN guards, the DP ledger and resume checks."""

import math

import numpy as np
import pytest
import tenseal as ts
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium.aggregators.he import check_payload
from consortium.aggregators.weighted import WeightedSum
from consortium.executors.round_plan import check_finite
from consortium.filters.he import decrypt_global
from consortium.he.contexts import CLIENT_CONTEXT
from consortium.privacy import ledger
from consortium.workflows.checkpoint import ResumeError, continued_history
from consortium.workflows.rounds import Attendance, RoundOutcome, too_few
from tests.unit.test_he import _aggregate, _encrypt, _sites, kit  # noqa: F401  (kit is a fixture)


def test_a_lost_site_is_awaited_once_then_offered_but_not_awaited_until_it_takes_the_task():
    att, sites = Attendance(), ["a", "b", "c"]
    assert att.awaited(sites, picked={"a", "b", "c"}, responded={"a"}) == ["b", "c"]
    r1 = RoundOutcome(0, sites)
    r1.contribute("a"), r1.contribute("b"), r1.drop("c", "no result within the round timeout (60 s)")
    att.close(r1, picked={"a", "b", "c"})
    assert att.absent == {"c": 0} and att.present(sites) == ["a", "b"]
    assert r1.summary() == "2 of 3 sites contributed (c dropped: no result within the round timeout (60 s))"
    # next round: c never takes the task, so the round ends once a and b answered
    assert att.awaited(sites, picked={"a", "b"}, responded={"a", "b"}) == []
    r2 = RoundOutcome(1, sites)
    r2.contribute("a"), r2.contribute("b")
    att.close(r2, picked={"a", "b"})
    assert r2.record() == {"targets": sites, "contributed": ["a", "b"], "dropped": {}, "not_awaited": ["c"]}
    # c is back and takes the task: it is awaited, and present again once it contributed
    assert att.awaited(sites, picked={"a", "b", "c"}, responded={"a", "b"}) == ["c"]
    r3 = RoundOutcome(2, sites)
    for s in sites:
        r3.contribute(s)
    att.close(r3, picked=set(sites))
    assert att.absent == {} and r3.record()["not_awaited"] == []


def test_too_few_contributors_end_the_job_with_who_and_why():
    outcome = RoundOutcome(4, ["a", "b", "c"])
    outcome.contribute("a")
    outcome.drop("b", "task 'train' failed: ValueError: x")
    outcome.drop("a", "late")  # a contribution is never turned into a drop
    reason = too_few(outcome, 2)
    assert reason.startswith("round 5: only 1 site(s) contributed (a), fewer than the job's min_clients 2")
    assert "b dropped: task 'train' failed" in reason and too_few(outcome, 1) is None


def _model(params, weight, name):
    return FLModel(params=params, params_type=ParamsType.FULL, meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: weight})


def test_refused_plaintext_update_leaves_the_sum_untouched_and_survivors_keep_their_weights():
    acc = WeightedSum()
    acc.add({"w": np.array([1.0, 2.0]), "b": np.array([0.0])}, 1)
    for bad, match in [
        ({"w": np.array([1.0, np.nan]), "b": np.array([1.0])}, "NaN or Inf"),
        ({"w": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0])}, "shape"),
        ({"w": np.array([5.0, 5.0]), "b": "truncated"}, "not numeric"),
    ]:
        with pytest.raises(ValueError, match=match):
            acc.add(bad, 2)
    acc.add({"w": np.array([3.0, 6.0]), "b": np.array([4.0])}, 3)
    out = acc.mean()  # (1*1 + 3*3)/4 = 2.5, (2 + 18)/4 = 5, 12/4 = 3: the refused updates left no trace
    np.testing.assert_allclose(out["w"], [2.5, 5.0]) and np.testing.assert_allclose(out["b"], [3.0])


def test_he_sum_of_the_surviving_sites_decrypts_to_their_weighted_mean(kit):  # noqa: F811
    sites, steps = _sites()
    survivors = [0, 2]  # the second hospital was lost this round
    encrypted = [_encrypt(kit, sites[i], steps[i]) for i in survivors]
    _, result = _aggregate(kit, encrypted)
    got = decrypt_global(ts.context_from((kit / "startup" / CLIENT_CONTEXT).read_bytes()), result.params)
    w0, w2 = steps[0], steps[2]
    for name in sites[0]:
        want = (w0 * sites[0][name] + w2 * sites[2][name]) / (w0 + w2)
        assert float(np.abs(got[name] - want).max()) < 1e-4


def test_malformed_encrypted_updates_are_refused_with_a_reason():
    good = {"chunks": [b"x"], "layout": [], "weight": 2.0}
    check_payload(good, "s")
    for bad, match in [
        ([1, 2], "malformed"),
        ({**good, "chunks": []}, "without ciphertexts"),
        ({**good, "chunks": [b""]}, "empty"),
        ({**good, "weight": float("nan")}, "weight"),
        ({**good, "weight": 0}, "weight"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_payload(bad, "site-c")


def test_a_diverged_update_is_not_sent():
    model = torch.nn.Linear(2, 1)
    check_finite(model, 0.5)
    with pytest.raises(ValueError, match="NaN or Inf in the loss"):
        check_finite(model, math.nan)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf in 1 layer.*weight.*not sent"):
        check_finite(model, 0.5)


def test_privacy_ledger_continues_from_the_latest_job_this_site_trained_in(tmp_path):
    root = str(tmp_path)
    assert ledger.load_prior(root, ["j1", "j2"]) is None  # never trained in j1: nothing spent
    ledger.save(root, "j1", [(1.1, 0.25, 6)])
    assert ledger.load_prior(root, ["j1", "j2", "j3"]) == ("j1", [(1.1, 0.25, 6)])  # skipped j2
    ledger.save(root, "j2", [(1.1, 0.25, 10)])
    assert ledger.load_prior(root, ["j1", "j2", "j3"]) == ("j2", [(1.1, 0.25, 10)])
    assert ledger.load_prior(root, ["j3"]) is None  # a new run never reads another run's ledger
    ledger.save(root, "j3", [(1.1, 0.25, 14)])  # this site trained in j3, was restarted and rejoined j3
    assert ledger.load_prior(root, ["j1", "j2", "j3"]) == ("j3", [(1.1, 0.25, 14)])


def test_resume_keeps_the_rounds_and_refuses_other_settings():
    old = {"meta": {"task": "seg2d", "rounds": 6, "lr": 0.003, "run_chain": ["j1"]}, "rounds": [{"round": 0}]}
    old["refused"] = {"c": {"round": 0, "reason": "floor"}}
    new = {"meta": {"task": "seg2d", "rounds": 6, "lr": 0.003}, "rounds": [], "final": {}}
    merged = continued_history(old, new, "j2")
    assert merged["rounds"] == [{"round": 0}] and merged["meta"]["run_chain"] == ["j1", "j2"]
    assert merged["resumed"] == [{"job": "j2", "from_job": "j1", "after_round": 1}] and "c" in merged["refused"]
    with pytest.raises(ResumeError, match="lr: 0.003 before, 0.01 now"):
        continued_history(old, {**new, "meta": {**new["meta"], "lr": 0.01}}, "j2")


def test_the_checkpoint_keeps_ciphertext_bytes_as_bytes_and_resumes_from_them(tmp_path):
    """The server's one write per round: ciphertext chunks are stored as bytes (pickle protocol 4), not through
    latin-1 text (torch's default protocol 2: 1.5x the bytes, several times slower), and read back unchanged.
    The plaintext global model file keeps the default protocol: torch.load(weights_only=True) reads it."""
    import os

    from consortium import constants as C
    from consortium.he.wire import PAYLOAD_KEY
    from consortium.workflows import checkpoint

    chunks = [os.urandom(100_000) for _ in range(20)]  # 2 MB of incompressible "ciphertext"
    params = {PAYLOAD_KEY: {"chunks": chunks, "layout": [["w", [4], "<f4"]], "weight": 3.0}}
    checkpoint.save(str(tmp_path), params=params, round_number=4)
    assert os.path.getsize(tmp_path / C.CHECKPOINT_FILE) < 1.05 * sum(map(len, chunks))
    checkpoint.write_history(str(tmp_path), {"task": "seg2d", "num_rounds": 6, "rounds": [{"round": 4}]})

    class Workspace:  # what checkpoint.load asks of FLARE's Workspace
        def get_run_dir(self, job_id):
            return str(tmp_path)

    state = checkpoint.load(Workspace(), "j1")
    assert state["round"] == 4 and state["params"][PAYLOAD_KEY]["chunks"] == chunks
    checkpoint.save_global_model({"w": np.ones(3, dtype=np.float32)}, str(tmp_path / C.GLOBAL_MODEL_FILE))
    assert torch.load(tmp_path / C.GLOBAL_MODEL_FILE, weights_only=True)["w"].tolist() == [1.0, 1.0, 1.0]
