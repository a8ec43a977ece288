"""HE with real TenSEAL: the server cannot decrypt, it only ever holds ciphertext, and the encrypted
aggregate equals plaintext FedAvg within CKKS precision."""

import numpy as np
import pytest
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium.aggregators.he import HESumAggregator
from consortium.aggregators.weighted import weighted_mean
from consortium.filters.he import HEDecryptModel, HEEncryptUpdate, decrypt_global
from consortium.he.ckks import decrypt
from consortium.he.contexts import CLIENT_CONTEXT, SERVER_CONTEXT, HEContextError, write_contexts
from consortium.he.wire import PAYLOAD_KEY


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A workspace whose startup/ holds a server and a client context, as HEBuilder writes them."""
    root = tmp_path_factory.mktemp("kit")
    write_contexts(root / "startup")
    return root


def _fl_ctx(root, name="site-a"):
    (root / "local").mkdir(exist_ok=True)  # a FLARE workspace needs local/ and startup/
    (root / "startup").mkdir(exist_ok=True)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(root), name), private=True, sticky=False)
    return fl_ctx


def _sites(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (16, 1, 3, 3), "conv.bias": (16,), "head.weight": (1, 16, 1, 1), "big": (3, 5000)}
    return [{k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)], [36, 22, 10]


def _encrypt(kit, params, steps, layers=None):
    dxo = DXO(DataKind.WEIGHTS, data=dict(params), meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps})
    out = HEEncryptUpdate(encrypt_layers=layers).process(dxo.to_shareable(), _fl_ctx(kit))
    from nvflare.apis.dxo import from_shareable

    return from_shareable(out)


def _aggregate(kit, encrypted):
    agg = HESumAggregator()
    agg.fl_ctx = _fl_ctx(kit, "server")
    for i, dxo in enumerate(encrypted):
        agg.accept_model(FLModel(params=dxo.data, params_type=ParamsType.FULL, meta={"client_name": f"s{i}"}))
    return agg, agg.aggregate_model()


def test_server_context_cannot_decrypt(kit):
    server = ts.context_from((kit / "startup" / SERVER_CONTEXT).read_bytes())
    client = ts.context_from((kit / "startup" / CLIENT_CONTEXT).read_bytes())
    assert not server.has_secret_key() and client.has_secret_key()
    chunk = (ts.ckks_vector(client, [1.0, 2.0]) * 3.0).serialize()
    with pytest.raises(PermissionError):
        decrypt(server, [chunk], 2)
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server, chunk).decrypt()  # TenSEAL itself refuses too
    assert np.allclose(decrypt(client, [chunk], 2), [3.0, 6.0], atol=1e-4)


def test_encrypted_aggregate_equals_plaintext_fedavg(kit):
    sites, steps = _sites()
    encrypted = [_encrypt(kit, p, w) for p, w in zip(sites, steps, strict=True)]
    agg, result = _aggregate(kit, encrypted)
    client = ts.context_from((kit / "startup" / CLIENT_CONTEXT).read_bytes())
    got = decrypt_global(client, result.params)
    want = weighted_mean(sites, steps)
    err = max(float(np.abs(got[k] - want[k]).max()) for k in want)
    print(f"max abs error HE vs plaintext FedAvg: {err:.2e}")
    assert err < 1e-4


def test_server_receives_and_stores_only_ciphertext(kit):
    sites, steps = _sites(1)
    encrypted = [_encrypt(kit, p, w) for p, w in zip(sites, steps, strict=True)]
    sent = encrypted[0].data
    assert set(sent) == {PAYLOAD_KEY}  # nothing in plaintext when every layer is encrypted
    assert all(isinstance(c, bytes) for c in sent[PAYLOAD_KEY]["chunks"])
    n_values = sum(a.size for a in sites[0].values())
    assert len(sent[PAYLOAD_KEY]["chunks"]) == -(-n_values // 4096)  # packed: ceil(values / slots)
    for chunk in sent[PAYLOAD_KEY]["chunks"]:  # the plaintext values are nowhere in the bytes
        assert sites[0]["conv.bias"].tobytes()[:16] not in chunk
    agg = HESumAggregator()
    agg.fl_ctx = _fl_ctx(kit, "server")
    agg.accept_model(FLModel(params=sent, params_type=ParamsType.FULL, meta={"client_name": "s0"}))
    assert all(isinstance(v, ts.CKKSVector) for v in agg._sum.ciphertexts)  # what it holds: CKKS vectors
    stored = agg.aggregate_model().params
    assert set(stored) == {PAYLOAD_KEY} and all(isinstance(c, bytes) for c in stored[PAYLOAD_KEY]["chunks"])
    assert stored[PAYLOAD_KEY]["weight"] == steps[0]


def test_selective_encryption_exposes_only_the_named_layers(kit):
    sites, steps = _sites(2)
    encrypted = [_encrypt(kit, p, w, layers=[r"^conv\.", "big"]) for p, w in zip(sites, steps, strict=True)]
    assert set(encrypted[0].data) == {PAYLOAD_KEY, "head.weight"}
    _, result = _aggregate(kit, encrypted)
    client = ts.context_from((kit / "startup" / CLIENT_CONTEXT).read_bytes())
    got, want = decrypt_global(client, result.params), weighted_mean(sites, steps)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) < 1e-4


def test_decrypt_filter_restores_plain_model_and_passes_plaintext_through(kit):
    sites, steps = _sites(3)
    _, result = _aggregate(kit, [_encrypt(kit, p, w) for p, w in zip(sites, steps, strict=True)])
    from nvflare.apis.dxo import from_shareable

    incoming = DXO(DataKind.WEIGHTS, data=result.params).to_shareable()
    out = from_shareable(HEDecryptModel().process(incoming, _fl_ctx(kit)))
    assert set(out.data) == set(sites[0]) and out.data["big"].dtype == np.float32
    initial = DXO(DataKind.WEIGHTS, data=sites[0]).to_shareable()  # round 0: plaintext initial model
    assert from_shareable(HEDecryptModel().process(initial, _fl_ctx(kit))).data["big"] is not None


def test_clear_errors(kit, tmp_path):
    with pytest.raises(ValueError, match="expects model weights"):
        HEEncryptUpdate().process(DXO(DataKind.METRICS, data={"dice": 0.5}).to_shareable(), _fl_ctx(kit))
    with pytest.raises(ValueError, match="empty"):
        HEEncryptUpdate(encrypt_layers=[])
    sites, _ = _sites()
    with pytest.raises(HEContextError, match="HEBuilder"):  # a consortium provisioned without HE
        _encrypt(tmp_path, sites[0], 5)
    agg = HESumAggregator()
    agg.fl_ctx = _fl_ctx(kit, "server")
    with pytest.raises(ValueError, match="unencrypted"):
        agg.accept_model(FLModel(params=sites[0], params_type=ParamsType.FULL, meta={"client_name": "s0"}))
    secret = tmp_path / "leaky"
    write_contexts(secret / "startup")
    (secret / "startup" / SERVER_CONTEXT).write_bytes((secret / "startup" / CLIENT_CONTEXT).read_bytes())
    agg = HESumAggregator()
    agg.fl_ctx = _fl_ctx(secret, "server")
    enc = _encrypt(secret, sites[0], 5)
    with pytest.raises(HEContextError, match="secret key"):
        agg.accept_model(FLModel(params=enc.data, params_type=ParamsType.FULL, meta={"client_name": "s0"}))


def test_mismatched_key_is_reported(kit, tmp_path):
    other = tmp_path / "other"
    write_contexts(other / "startup")  # a second provisioning run: same parameters, different keys
    sites, steps = _sites(4)
    _, result = _aggregate(kit, [_encrypt(kit, p, w) for p, w in zip(sites, steps, strict=True)])
    wrong = ts.context_from((other / "startup" / CLIENT_CONTEXT).read_bytes())
    with pytest.raises(HEContextError, match="key differs"):
        decrypt_global(wrong, result.params)


def test_weighted_values_beyond_ckks_headroom_are_refused(kit):
    """A layer of ones weighted by 200,000 steps would wrap around silently at the last CKKS level."""
    with pytest.raises(ValueError, match="headroom"):
        _encrypt(kit, {"w": np.ones(10, np.float32)}, 200_000)
    assert set(_encrypt(kit, {"w": np.ones(10, np.float32)}, 5_000).data) == {PAYLOAD_KEY}


@pytest.mark.parametrize("layers", [None, [r"^conv\.", "big"]])
def test_integer_buffers_keep_their_dtype(kit, layers):
    """A BatchNorm's num_batches_tracked (int64) comes back as int64 with its exact value, whether encrypted
    or exposed; float layers come back float32."""
    import torch

    bn = torch.nn.BatchNorm2d(4)
    bn.num_batches_tracked.fill_(7)
    state = {f"bn.{k}": v.numpy().copy() for k, v in bn.state_dict().items()}
    sites, steps = _sites(4)
    sites = [{**s, **state} for s in sites]
    encrypted = [_encrypt(kit, p, w, layers=layers) for p, w in zip(sites, steps, strict=True)]
    _, result = _aggregate(kit, encrypted)
    client = ts.context_from((kit / "startup" / CLIENT_CONTEXT).read_bytes())
    got = decrypt_global(client, result.params)
    assert got["bn.num_batches_tracked"].dtype == np.int64 and int(got["bn.num_batches_tracked"]) == 7
    assert got["bn.running_var"].dtype == np.float32 and got["big"].dtype == np.float32
    bn.load_state_dict({k[3:]: torch.as_tensor(got[k]) for k in state})  # loads into the module as is
