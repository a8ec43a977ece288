"""The HE wire format (EncryptedUpdate) with real TenSEAL: encode/decode round trip, the encoded bytes' shape,
refusal of malformed payloads, and a sum of two encoded updates decoding to the sum."""

import numpy as np
import pytest
import tenseal as ts

from consortium.he.contexts import make_contexts
from consortium.he.wire import PAYLOAD_KEY, VERSION_FIELD, EncryptedSum, EncryptedUpdate, is_encrypted


@pytest.fixture(scope="module")
def contexts():
    """(server, client): the server's has no secret key."""
    server, client = make_contexts(8192, [60, 40, 40], 40)
    return ts.context_from(server), ts.context_from(client)


def _params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(0, 0.1, (8, 1, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(0, 0.1, 8).astype(np.float32),
        "head.weight": rng.normal(0, 0.1, (1, 8)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
    }


def test_encode_decode_round_trip(contexts):
    _, client = contexts
    params = _params(0)
    update = EncryptedUpdate.encrypt(client, params, weight=3, encrypt_layers=[r"^conv\.", "steps"])
    encoded = update.encode()
    assert is_encrypted(encoded) and set(encoded) == {PAYLOAD_KEY, "head.weight"}  # the one exposed layer
    assert list(encoded[PAYLOAD_KEY]) == ["chunks", "layout", "weight", "exposed_dtypes"]  # the bytes of before
    assert all(isinstance(c, bytes) for c in encoded[PAYLOAD_KEY]["chunks"])
    decoded = EncryptedUpdate.decode(encoded)
    assert decoded.layout == update.layout and decoded.chunks == update.chunks and decoded.weight == 3.0
    assert decoded.encode().keys() == encoded.keys()
    got = decoded.decrypt(client)
    assert set(got) == set(params) and got["steps"].dtype == np.int64 and int(got["steps"]) == 7
    for name, value in params.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_allclose(got[name], value, atol=1e-4)


def test_malformed_payloads_are_refused_with_a_reason(contexts):
    _, client = contexts
    good = EncryptedUpdate.encrypt(client, _params(1), weight=2).encode()
    inner = good[PAYLOAD_KEY]
    cases = [
        (_params(1), "site-b sent unencrypted weights"),
        ({PAYLOAD_KEY: [1, 2]}, "malformed encrypted update"),
        ({PAYLOAD_KEY: {"chunks": inner["chunks"], "weight": 2.0}}, "expected chunks, layout and weight"),
        ({PAYLOAD_KEY: {**inner, "chunks": []}}, "without ciphertexts"),
        ({PAYLOAD_KEY: {**inner, "chunks": [b""]}}, "empty ones"),
        ({PAYLOAD_KEY: {**inner, "weight": -1.0}}, "aggregation weight -1.0"),
        ({PAYLOAD_KEY: {**inner, "layout": [["w"]]}}, "malformed layer layout"),
        ({PAYLOAD_KEY: {**inner, VERSION_FIELD: 3}}, "format version 3"),
        ({PAYLOAD_KEY: {**inner, VERSION_FIELD: 2}}, "quantised encrypted update with malformed packing fields"),
        ({"b": np.array([np.nan]), PAYLOAD_KEY: inner}, "NaN or Inf"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            EncryptedUpdate.decode(bad, "site-b")


def test_sum_of_two_encoded_updates_decodes_to_the_weighted_sum(contexts):
    server, client = contexts
    a, b = _params(2), _params(3)
    total = EncryptedSum(server)  # the server's context: it adds without a secret key
    for params, weight in [(a, 4), (b, 1)]:
        sent = EncryptedUpdate.encrypt(client, params, weight=weight, encrypt_layers=["conv"]).encode()
        total.add(EncryptedUpdate.decode(sent, "site"))
    assert all(isinstance(v, ts.CKKSVector) for v in total.ciphertexts)
    result = EncryptedUpdate.decode(total.result().encode(), "the server")
    assert result.weight == 5.0
    got = result.decrypt(client)  # the weighted mean: sum of weight * values over the total weight
    for name in a:
        want = (4 * a[name].astype(np.float64) + 1 * b[name]) / 5
        np.testing.assert_allclose(got[name], want, atol=1e-4)


def test_a_different_layout_or_an_unreadable_ciphertext_leaves_the_sum_untouched(contexts):
    server, client = contexts
    total = EncryptedSum(server)
    with pytest.raises(ValueError, match="no site model"):
        total.result()
    total.add(EncryptedUpdate.encrypt(client, _params(4), weight=1))
    other = EncryptedUpdate.encrypt(client, {"w": np.ones(3, np.float32)}, weight=1)
    with pytest.raises(ValueError, match="different layer layout"):
        total.add(other, "site-c")
    good = EncryptedUpdate.encrypt(client, _params(5), weight=1)
    truncated = EncryptedUpdate(tuple(c[:100] for c in good.chunks), good.layout, good.weight)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        total.add(truncated, "site-d")
    assert total.result().weight == 1.0  # only the first update is in the sum


def test_headroom_is_checked_before_encryption(contexts):
    _, client = contexts
    with pytest.raises(ValueError, match="headroom"):
        EncryptedUpdate.encrypt(client, {"w": np.ones(4, np.float32)}, weight=200_000)
