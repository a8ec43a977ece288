"""Benchmark: our packed CKKS aggregation vs FLARE's stock per-layer HE path vs plaintext FedAvg.

Usage:
    . .venv/bin/activate
    python bench/he.py                # model tables + simulator rounds (a few minutes on 2 cores)
    python bench/he.py --no-rounds    # model table only
    python bench/he.py --repeat 3     # median of 3 runs per path (the machine may be shared)
    python bench/he.py --runs /tmp/r  # keep the simulator runs' logs and metrics.json

Both HE paths use the same CKKS parameters (poly_modulus_degree 8192, coeff_mod_bit_sizes
[60, 40, 40], scale 2^40, contexts from consortium.he.contexts.write_contexts), 3 sites and the same
per-site weights (STEPS, the demo job's local steps per round), and run the real FLARE components
standalone on a real FLContext + Workspace:
  ours   HEEncryptUpdate (site) -> HESumAggregator (server) -> HEDecryptModel (site)
  quantised  the same with he: {pack: quantised, bits: 8, max_sites: 4, max_weight: 36} (he/quant.py): each
         value an 8-bit integer in its layer's range (2 x the largest value of the model the sites started
         from, here the initial model), 4 per CKKS slot; max_weight 36 = the largest site weight (STEPS);
         a second row with bits: 6 (5 per slot)
  stock  nvflare.app_opt.he: HEModelEncryptor (site, weigh_by_local_iter=True) ->
         HEInTimeAccumulateWeightedAggregator (server, class default weigh_by_local_iter=False) ->
         HEModelDecryptor (site; the flat layers are then reshaped, as a site's learner does).
         The same aggregator with weigh_by_local_iter=True (weights applied again in ciphertext) is
         also tried on the same messages and reported as its own row.
  plain  float32 arrays, consortium.aggregators.weighted.weighted_mean on the server.

Columns (seconds, wall clock, one thread):
  encrypt    site: the task-result filter (ours also turns ciphertexts into bytes here; stock leaves
             CKKSVector objects for FOBS to serialize); plain: none
  serialize  site: fobs.dumps of the task result; "MB/site" is the length of those bytes
  aggregate  server, 3 sites: fobs.loads of the 3 messages, accept, aggregate, fobs.dumps of the result
  decrypt    site: fobs.loads of the global model, the task-data filter (plain: fobs.loads only)
  enc+agg+dec  encrypt + aggregate + decrypt (the targets' measure)
  total      encrypt + serialize + aggregate + decrypt, one site's critical path: the fairer measure,
             since ours turns ciphertexts into bytes inside its filter (encrypt) and stock inside FOBS
             (serialize), so enc+agg+dec charges that work to ours only.
  max err    max abs difference from weighted_mean of the plaintext float32 site models.
A warm-up round on a 4-value model runs first, so loading contexts (once per job) is not timed.
The "full round" section runs the demo job in the simulator, plaintext (fedavg_plain) and encrypted
(fedavg), and compares the mean round time of rounds 1.. (round 0 includes data loading); "outside
tasks" is the round time minus the slowest site's task: HE filters, transfer, aggregation, saving.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_opt.he import decomposers as he_decomposers
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
from nvflare.fuel.sec.security_content_service import SecurityContentService
from nvflare.fuel.utils import fobs

from consortium.aggregators.he import HESumAggregator
from consortium.aggregators.weighted import weighted_mean
from consortium.filters.he import CTX_HE_REFERENCE, HEDecryptModel, HEEncryptUpdate
from consortium.he.contexts import write_contexts
from consortium.he.wire import PAYLOAD_KEY
from consortium.jobs import load_job_spec
from consortium.tasks import state_to_numpy
from consortium.tasks.seg2d import build_model

ROOT = Path(__file__).resolve().parents[1]
CKKS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}
SITES = ("hospital-a", "hospital-b", "hospital-c")
STEPS = (36.0, 22.0, 10.0)  # local steps per round of hospital-a/b/c in the demo job (its metrics.json)
MODELS = {"demo UNet": {}, "UNet 28..448": {"channels": (28, 56, 112, 224, 448)}}  # about 0.4 M and 5 M
NOISE = 0.01  # std of the per-site perturbation of the initial weights, so the sites differ
TIMED = ("enc", "ser", "agg", "dec")


@contextlib.contextmanager
def quiet():
    """Silence FLARE's per-layer logs and TenSEAL's C++ warnings (written straight to fd 1)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        os.dup2(saved, 1)
        os.close(saved), os.close(devnull)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


# -- a standalone FLARE participant ---------------------------------------------------------------------


def make_kit(root: Path) -> Path:
    """A workspace root with local/ and startup/ (both contexts, as HEBuilder writes them)."""
    (root / "local").mkdir(parents=True, exist_ok=True)
    write_contexts(root / "startup", CKKS)
    SecurityContentService.initialize(content_folder=str(root / "startup"))  # stock loads contexts through it
    return root


def fl_ctx(root: Path, name: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(root), name), private=True, sticky=False)
    ctx.set_prop(FLContextKey.SECURE_MODE, False, private=True, sticky=False)  # unsigned simulator kit
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    peer = FLContext()  # a site's filters run on results going to (and data coming from) the server
    peer.set_prop(ReservedKey.IDENTITY_NAME, "server", private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def task_result(params: dict, steps: float) -> Shareable:
    """What the consortium executor returns: full weights and the local step count of the round."""
    dxo = DXO(DataKind.WEIGHTS, data=dict(params), meta={FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps})
    result = dxo.to_shareable()
    result.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)  # the server's task cookie, echoed back
    return result


def received(blob: bytes, site: str) -> Shareable:
    """A task result as the server gets it: deserialized, tagged with the sender by the transport."""
    result = fobs.loads(blob)
    result.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    return result


# -- the three paths: encrypt (site), aggregate (server), decrypt (site) ---------------------------------


class Ours:
    name = "ours"

    def __init__(self, root: Path):
        self.root = root
        self.encrypt_filters = {site: HEEncryptUpdate() for site in SITES}
        self.decrypt_filter = HEDecryptModel()
        self.aggregator = HESumAggregator()
        self.server_ctx = fl_ctx(root, "server")
        self.aggregator.handle_event(EventType.START_RUN, self.server_ctx)

    def encrypt(self, site: str, result: Shareable) -> Shareable:
        return self.encrypt_filters[site].process(result, fl_ctx(self.root, site))

    def aggregate(self, results: list[Shareable]) -> Shareable:
        for site, result in zip(SITES, results, strict=True):
            model = FLModelUtils.from_shareable(result, self.server_ctx)
            model.meta["client_name"] = site  # what FLARE's ModelController adds
            self.aggregator.accept_model(model)
        return FLModelUtils.to_shareable(self.aggregator.aggregate_model())

    def decrypt(self, site: str, data: Shareable, shapes: dict) -> dict:
        return from_shareable(self.decrypt_filter.process(data, fl_ctx(self.root, site))).data


class Quantised(Ours):
    """Ours with the quantised packing; the sites' reference (the model the round started from) is `reference`."""

    name = "quantised"

    def __init__(self, root: Path, bits: int = 8):
        super().__init__(root)
        self.settings = {"pack": "quantised", "bits": bits, "max_sites": 4, "max_weight": max(STEPS)}
        self.encrypt_filters = {site: HEEncryptUpdate(**self.settings) for site in SITES}
        self.reference: dict | None = None

    def encrypt(self, site: str, result: Shareable) -> Shareable:
        ctx = fl_ctx(self.root, site)
        ctx.set_prop(CTX_HE_REFERENCE, self.reference, private=True, sticky=False)  # as HEDecryptModel leaves it
        return self.encrypt_filters[site].process(result, ctx)


class Stock:
    name = "stock"

    def __init__(self, root: Path, server_weighs: bool = False):
        self.root = root
        self.server_ctx = fl_ctx(root, "server")
        self.encrypt_filters = {site: HEModelEncryptor(weigh_by_local_iter=True) for site in SITES}
        for site, filt in self.encrypt_filters.items():
            filt.handle_event(EventType.START_RUN, fl_ctx(root, site))
        self.decrypt_filter = HEModelDecryptor()
        self.decrypt_filter.handle_event(EventType.START_RUN, fl_ctx(root, SITES[0]))
        self.aggregator = HEInTimeAccumulateWeightedAggregator(
            expected_data_kind=DataKind.WEIGHTS, weigh_by_local_iter=server_weighs
        )
        self.aggregator.handle_event(EventType.START_RUN, self.server_ctx)

    def encrypt(self, site: str, result: Shareable) -> Shareable:
        return self.encrypt_filters[site].process(result, fl_ctx(self.root, site))

    def aggregate(self, results: list[Shareable]) -> Shareable:
        for site, result in zip(SITES, results, strict=True):
            if not self.aggregator.accept(result, self.server_ctx):
                raise RuntimeError(f"stock aggregator refused the result of {site}")
        return self.aggregator.aggregate(self.server_ctx)

    def decrypt(self, site: str, data: Shareable, shapes: dict) -> dict:
        flat = from_shareable(self.decrypt_filter.process(data, fl_ctx(self.root, site))).data
        return {k: np.asarray(v, dtype=np.float32).reshape(shapes[k]) for k, v in flat.items()}


class Plain:
    name = "plain"

    def encrypt(self, site: str, result: Shareable) -> Shareable:
        return result

    def aggregate(self, results: list[Shareable]) -> Shareable:
        dxos = [from_shareable(r) for r in results]
        weights = [d.get_meta_prop(FLMetaKey.NUM_STEPS_CURRENT_ROUND) for d in dxos]
        return DXO(DataKind.WEIGHTS, data=weighted_mean([d.data for d in dxos], weights)).to_shareable()

    def decrypt(self, site: str, data: Shareable, shapes: dict) -> dict:
        return from_shareable(data).data


# -- measuring --------------------------------------------------------------------------------------------


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


# -- tables -----------------------------------------------------------------------------------------------

W = 44  # label column
HEADER = (
    f"{'path':{W}s} {'encrypt':>8s} {'serialize':>9s} {'MB/site':>8s} {'aggregate':>9s} "
    f"{'decrypt':>8s} {'enc+agg+dec':>11s} {'total':>8s} {'max err':>8s}"
)


def core(r: dict) -> float:
    """encrypt + aggregate + decrypt"""
    return r["enc"] + r["agg"] + r["dec"]


def total(r: dict) -> float:
    """encrypt + serialize + aggregate + decrypt"""
    return sum(r[k] for k in TIMED)


def row(label: str, r: dict, err: float | None) -> str:
    cells = [f"{r['enc']:8.3f}", f"{r['ser']:9.3f}", f"{r['bytes'] / 1e6:8.2f}"]
    if r.get("failure"):
        return f"{label:{W}s} {' '.join(cells)}  FAILED after {r['agg']:.2f} s: {r['failure']}"
    cells += [f"{r['agg']:9.3f}", f"{r['dec']:8.3f}", f"{core(r):11.3f}", f"{total(r):8.3f}", f"{err:8.1e}"]
    return f"{label:{W}s} {' '.join(cells)}"


def bench_model(paths: dict, label: str, model: torch.nn.Module, repeat: int) -> dict:
    """Run the three paths on one model, print its table; return the ratios the targets need."""
    sites = site_models(model)
    want = {k: v.astype(np.float64) for k, v in weighted_mean(sites, list(STEPS)).items()}
    n_params = sum(v.size for v in sites[0].values())
    paths["quantised"].reference = paths["quantised6"].reference = initial(model)
    names = ("ours", "quantised", "quantised6", "stock", "plain")
    res = {name: measure_repeated(paths[name], sites, repeat) for name in names}
    weighted = {**res["stock"], **try_aggregate(paths["stock_weighted"](), res["stock"]["blobs"])}
    err = {name: max_error(r["out"], want) for name, r in res.items()}
    print(f"\n{label}: {n_params / 1e6:.2f} M parameters in {len(sites[0])} tensors, {len(SITES)} sites")
    print(HEADER)
    print(row("ours (packed, weight in ciphertext)", res["ours"], err["ours"]))
    print(row("ours quantised (8 bits, 4 per slot)", res["quantised"], err["quantised"]))
    print(row("ours quantised (6 bits, 5 per slot)", res["quantised6"], err["quantised6"]))
    print(row("stock (aggregator weigh_by_local_iter=False)", res["stock"], err["stock"]))
    print(row("stock (aggregator weigh_by_local_iter=True)", weighted, None))
    print(row("plain (float32 arrays, FOBS)", res["plain"], err["plain"]))
    n_ct, ct_bytes, ctx_bytes = stock_wire(res["stock"]["blobs"][0])
    ours_ct = math.ceil(n_params / (CKKS["poly_modulus_degree"] // 2))
    print(
        f"  ciphertexts per site: ours {ours_ct}, stock {n_ct}; stock message = {ct_bytes / 1e6:.1f} MB "
        f"ciphertext + {ctx_bytes / 1e6:.1f} MB of context copies (one per layer)"
    )
    ours, stock, plain = res["ours"], res["stock"], res["plain"]
    ratios = {"bytes": ours["bytes"] / stock["bytes"], "speedup": core(stock) / core(ours), "err": err["ours"]}
    fp32 = 4 * n_params  # the update's float32 bytes (integer buffers counted as 4 bytes too)
    ratios["quantised_fp32"] = res["quantised"]["bytes"] / fp32
    ratios["quantised6_fp32"] = res["quantised6"]["bytes"] / fp32
    ratios["quantised_err"] = err["quantised"]
    for name, bits in (("quantised", 8), ("quantised6", 6)):
        print(f"  quantised {bits} bits: " + quantised_error(res[name], want, paths[name].settings))
    print(
        f"  bytes per site / fp32 bytes of the update ({fp32 / 1e6:.2f} MB): ours {ours['bytes'] / fp32:.2f}x, "
        f"quantised 8 bits {ratios['quantised_fp32']:.2f}x, 6 bits {ratios['quantised6_fp32']:.2f}x, "
        f"stock {stock['bytes'] / fp32:.1f}x, plain message "
        f"{plain['bytes'] / fp32:.2f}x"
    )
    print(
        f"  our bytes / stock bytes = {ratios['bytes']:.2f}; stock / ours: enc+agg+dec {ratios['speedup']:.2f}x, "
        f"total {total(stock) / total(ours):.2f}x; ours / plain: total {total(ours) / total(plain):.0f}x, "
        f"bytes {ours['bytes'] / plain['bytes']:.1f}x"
    )
    return ratios


# -- full rounds in the simulator -------------------------------------------------------------------------


def simulate(job: str, runs: Path, home: Path, rounds: int) -> list[dict]:
    """Run `job` in the FLARE simulator; the per-round records of its metrics.json."""
    cmd = [sys.executable, "-m", "consortium.cli", "--jobs", str(ROOT / "jobs"), "--site-configs"]
    cmd += [str(ROOT / "site_configs"), "--runs", str(runs), "simulate", job, "--rounds", str(rounds)]
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads((runs / job / "metrics.json").read_text())["rounds"]


def round_stats(records: list[dict]) -> dict:
    """Means over rounds 1.. (round 0 includes data loading): round, slowest site's task and training."""
    later = records[1:]
    task = [max(s["task_seconds"] for s in r["sites"].values()) for r in later]
    train = [max(s["train_seconds"] for s in r["sites"].values()) for r in later]
    return {
        "all": [r["seconds"] for r in records],
        "round": float(np.mean([r["seconds"] for r in later])),
        "task": float(np.mean(task)),
        "train": float(np.mean(train)),
    }


def full_rounds(plain_job: str, he_job: str, rounds: int, tmp: Path) -> float:
    """Print the mean round time (rounds 1..) of the plaintext and the encrypted job; return HE / plain."""
    for job, he in ((plain_job, False), (he_job, True)):
        if load_job_spec(job, ROOT / "jobs").he != he:
            raise SystemExit(f"job {job} has he: {not he}; pass --plain-job / --he-job")
    print(f"\nfull round (simulator, {rounds} rounds, 3 sites, demo UNet; means of rounds 1..{rounds - 1})")
    print(f"  {'job':14s} {'round s':>8s} {'slowest task':>12s} {'its training':>12s} {'outside tasks':>13s}  rounds")
    stats = {}
    for job in (plain_job, he_job):
        st = stats[job] = round_stats(simulate(job, tmp / "runs", tmp / "home", rounds))
        print(
            f"  {job:14s} {st['round']:8.2f} {st['task']:12.2f} {st['train']:12.2f} {st['round'] - st['task']:13.2f}  "
            + ", ".join(f"{s:.2f}" for s in st["all"])
        )
    ratio = stats[he_job]["round"] / stats[plain_job]["round"]
    print(f"  encrypted / plaintext round time = {ratio:.2f}x  (outside tasks: filters, transfer, aggregation)")
    return ratio


def check(label: str, value: float, ok: bool) -> None:
    print(f"  {label:58s} {value:10.3g}   {'met' if ok else 'NOT met'}")


def bench_models(root: Path, repeat: int) -> dict:
    """The model tables; returns each model's ratios."""
    print(f"CKKS {CKKS}; sites {dict(zip(SITES, STEPS, strict=True))} (weights = local steps); times in seconds")
    paths = {"ours": Ours(root), "quantised": Quantised(root), "quantised6": Quantised(root, bits=6),
             "stock": Stock(root), "plain": Plain()}  # fmt: skip
    paths["quantised"].reference = paths["quantised6"].reference = {"w": np.full(4, 0.2, dtype=np.float32)}
    warm_up(list(paths.values()))  # the same instances run the benchmark
    paths["stock_weighted"] = lambda: Stock(root, server_weighs=True)  # a fresh one per try: a failure leaves state
    summary = {}
    for label, kwargs in MODELS.items():
        torch.manual_seed(0)
        summary[label] = bench_model(paths, label, build_model(**kwargs), repeat)
    return summary


def targets(summary: dict, round_ratio: float | None) -> None:
    demo = summary["demo UNet"]
    print("\ntargets")
    check("our bytes <= 0.5x stock (demo UNet)", demo["bytes"], demo["bytes"] <= 0.5)
    for label, r in summary.items():
        check(f"our enc+agg+dec >= 1.5x faster than stock ({label})", r["speedup"], r["speedup"] >= 1.5)
    if round_ratio is not None:
        check("HE round <= 1.5x plaintext round", round_ratio, round_ratio <= 1.5)
    for label, r in summary.items():
        check(f"our max abs error <= 1e-4 ({label})", r["err"], r["err"] <= 1e-4)
    for label, r in summary.items():
        for key, bits in (("quantised_fp32", 8), ("quantised6_fp32", 6)):
            check(f"quantised {bits} bits: bytes <= 2x the fp32 update ({label})", r[key], r[key] <= 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rounds", action="store_true", help="skip the full-round simulator comparison")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; timings are medians")
    parser.add_argument("--rounds", type=int, default=3, help="simulator rounds (the first is not counted)")
    parser.add_argument("--plain-job", default="fedavg_plain", help="plaintext job (he: false)")
    parser.add_argument("--he-job", default="fedavg", help="encrypted job (he: true)")
    parser.add_argument("--runs", type=Path, help="keep the simulator runs (logs, metrics) here; default: temporary")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common_decomposers.register(), he_decomposers.register()
    with tempfile.TemporaryDirectory(prefix="he-bench-") as tmp:  # the kit holds a secret key: removed at exit
        summary = bench_models(make_kit(Path(tmp) / "kit"), args.repeat)
        rounds_dir = args.runs or Path(tmp) / "rounds"
        round_ratio = None if args.no_rounds else full_rounds(args.plain_job, args.he_job, args.rounds, rounds_dir)
    targets(summary, round_ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
