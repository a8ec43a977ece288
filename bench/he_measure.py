"""Measuring one HE path of bench/he.py: the sites' models, one timed round (encrypt, serialize, aggregate,
decrypt), bytes on the wire, and the error against the plaintext weighted mean."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from he_paths import CKKS, SITES, STEPS, quiet, received, task_result, timed
from nvflare.apis.dxo import from_shareable
from nvflare.fuel.utils import fobs

from consortium.he.wire import PAYLOAD_KEY
from consortium.tasks import state_to_numpy

NOISE = 0.01  # std of the per-site perturbation of the initial weights, so the sites differ
TIMED = ("enc", "ser", "agg", "dec")


def site_models(model: torch.nn.Module, seed: int = 0) -> list[dict]:
    """The model's own initial weights plus small per-site noise, float32, one dict per site."""
    base = initial(model)
    rng = np.random.default_rng(seed)
    return [{k: (v + rng.normal(0, NOISE, v.shape)).astype(np.float32) for k, v in base.items()} for _ in SITES]


def initial(model: torch.nn.Module) -> dict:
    """The model every site started from (the quantised packing's reference for its ranges)."""
    return state_to_numpy(model)


def send(path, sites: list[dict]) -> tuple[list[bytes], list[float], list[float]]:
    """Each site filters and serializes its task result: (messages, encrypt seconds, serialize seconds)."""
    blobs, enc, ser = [], [], []
    for site, params, steps in zip(SITES, sites, STEPS, strict=True):
        out, t_enc = timed(path.encrypt, site, task_result(params, steps))
        blob, t_ser = timed(fobs.dumps, out)
        blobs.append(blob), enc.append(t_enc), ser.append(t_ser)
    return blobs, enc, ser


def serve(path, blobs: list[bytes]) -> bytes:
    """Server: receive the sites' messages, aggregate, serialize the global model."""
    return fobs.dumps(path.aggregate([received(blob, site) for blob, site in zip(blobs, SITES, strict=True)]))


def measure(path, sites: list[dict]) -> dict:
    """One round of `path` for 3 sites; the global model is decrypted at the first site."""
    shapes = {k: v.shape for k, v in sites[0].items()}
    with quiet():
        blobs, enc, ser = send(path, sites)
        global_blob, t_agg = timed(serve, path, blobs)
        out, t_dec = timed(lambda: path.decrypt(SITES[0], fobs.loads(global_blob), shapes))
    return {
        "enc": float(np.mean(enc)),
        "ser": float(np.mean(ser)),
        "agg": t_agg,
        "dec": t_dec,
        "bytes": float(np.mean([len(b) for b in blobs])),
        "out": out,
        "blobs": blobs,
    }


def measure_repeated(path, sites: list[dict], repeat: int) -> dict:
    """Median of `repeat` runs for every timing; sizes and outputs from the last run."""
    runs = [measure(path, sites) for _ in range(repeat)]
    return {**runs[-1], **{k: float(np.median([r[k] for r in runs])) for k in TIMED}}


def try_aggregate(path, blobs: list[bytes]) -> dict:
    """Aggregate already-sent messages with another server configuration; report a failure instead of raising."""
    start = time.perf_counter()
    try:
        with quiet():
            serve(path, blobs)
        return {"agg": time.perf_counter() - start, "failure": None}
    except Exception as exc:  # noqa: BLE001 - the failure is the result
        return {"agg": time.perf_counter() - start, "failure": f"{type(exc).__name__}: {exc}"}


def warm_up(paths: list) -> None:
    """One round on a 4-value model: contexts are loaded once per job, not per round."""
    tiny = [{"w": np.full(4, 0.1 * (i + 1), dtype=np.float32)} for i in range(len(SITES))]
    for path in paths:
        measure(path, tiny)


def stock_wire(blob: bytes) -> tuple[int, int, int]:
    """(ciphertexts, ciphertext bytes, context bytes) in one stock site message: FLARE's CKKSVector
    decomposer serializes the vector's context (public and relinearization keys) beside every layer."""
    with quiet():
        data = from_shareable(fobs.loads(blob)).data
    vectors = [v for v in data.values() if hasattr(v, "context")]
    ct = sum(len(v.serialize()) for v in vectors)
    contexts = sum(len(v.context().serialize()) for v in vectors)
    return sum(math.ceil(v.size() / (CKKS["poly_modulus_degree"] // 2)) for v in vectors), ct, contexts


def quantised_error(r: dict, want: dict, settings: dict) -> str:
    """Where the quantised packing's largest error is, against its bound n x step x max_weight / total weight
    (exceeded only where a site's value was clipped to its layer's range)."""
    with quiet():
        payload = from_shareable(fobs.loads(r["blobs"][0])).data[PAYLOAD_KEY]
    qmax = 2 ** (settings["bits"] - 1) - 1
    scale = len(SITES) * settings["max_weight"] / sum(STEPS) / qmax
    worst = max(
        ((float(np.abs(np.asarray(r["out"][name], dtype=np.float64) - want[name]).max()), name, rng * scale)
         for (name, _, _), rng in zip(payload["layout"], payload["quant"]["ranges"], strict=True)),
    )  # fmt: skip
    over = sum(
        float(np.abs(np.asarray(r["out"][name], dtype=np.float64) - want[name]).max()) > rng * scale
        for (name, _, _), rng in zip(payload["layout"], payload["quant"]["ranges"], strict=True)
    )
    return (f"largest error {worst[0]:.2g} in {worst[1]} (its bound {worst[2]:.2g}); {over} of "
            f"{len(payload['layout'])} layers over their bound (values clipped to the range)")  # fmt: skip


def max_error(out: dict, want: dict) -> float:
    return max(float(np.abs(np.asarray(out[k], dtype=np.float64) - want[k]).max()) for k in want)
