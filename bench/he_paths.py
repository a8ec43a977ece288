"""The HE paths bench/he.py compares, each run as real FLARE components on a standalone FLContext and Workspace:
ours (HEEncryptUpdate -> HESumAggregator -> HEDecryptModel), ours quantised, FLARE's stock HE filters and
aggregator, and plain float32 FedAvg; plus the site/server helpers they share."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
from nvflare.fuel.sec.security_content_service import SecurityContentService
from nvflare.fuel.utils import fobs

from consortium.aggregators.he import HESumAggregator
from consortium.aggregators.weighted import weighted_mean
from consortium.filters.he import CTX_HE_REFERENCE, HEDecryptModel, HEEncryptUpdate
from consortium.he.contexts import write_contexts

CKKS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}
SITES = ("hospital-a", "hospital-b", "hospital-c")
STEPS = (36.0, 22.0, 10.0)  # local steps per round of hospital-a/b/c in the demo job (its metrics.json)


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


# -- the paths: encrypt (site), aggregate (server), decrypt (site) ---------------------------------


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
