"""Site-side HE filters: encrypt the weighted update on its way out, decrypt the global model on its way in.

Thin adapters between FLARE's DXO and he/wire.py's EncryptedUpdate, which owns the format and the checks."""

from __future__ import annotations

import re

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from consortium.he.contexts import CLIENT_CONTEXT, load_context
from consortium.he.quant import Packing
from consortium.he.wire import EncryptedUpdate, is_encrypted

CTX_HE_REFERENCE = "consortium.he_reference"  # the plaintext model this task brought: the quantisation ranges


class _SiteContext:
    def __init__(self) -> None:
        self._context = None

    def context(self, fl_ctx: FLContext):
        if self._context is None:
            self._context = load_context(fl_ctx, CLIENT_CONTEXT)
        return self._context


class HEEncryptUpdate(Filter):
    """Task-result filter: multiply the site's weights by its local steps and encrypt them packed.

    `encrypt_layers`: regexes of layer names to encrypt (None: all). Layers not matched travel in
    plaintext (already weighted) and are listed in the site log, so exposure is explicit.
    `pack`: ckks (one float per slot) or quantised (he/quant.py's Packing: bits, max_sites, max_weight, margin).
    """

    def __init__(self, encrypt_layers: list[str] | None = None, pack: str = "ckks", bits: int = 8, max_sites: int = 4,
                 max_weight: float = 1.0, margin: float = 2.0):  # fmt: skip
        super().__init__()
        if pack not in ("ckks", "quantised"):
            raise ValueError(f"HEEncryptUpdate: pack {pack!r}; use ckks (one float per slot) or quantised")
        self.pack, self.bits, self.max_sites, self.max_weight, self.margin = pack, bits, max_sites, max_weight, margin
        self.packing = Packing(bits, max_sites, max_weight, margin) if pack == "quantised" else None  # checks them
        if encrypt_layers is not None:
            if not encrypt_layers:
                raise ValueError("HEEncryptUpdate: encrypt_layers is empty; use None to encrypt every layer")
            for pattern in encrypt_layers:
                re.compile(pattern)  # refuse a bad pattern at construction
        self.encrypt_layers = encrypt_layers
        self._site = _SiteContext()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # an error reply carries no weights
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS or not isinstance(dxo.data, dict):
            raise ValueError(f"HEEncryptUpdate expects model weights, got data kind {dxo.data_kind}")
        weight = dxo.get_meta_prop(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
        if not weight or weight <= 0:
            raise ValueError("HEEncryptUpdate: the update carries no positive NUM_STEPS_CURRENT_ROUND weight")
        context = self._site.context(fl_ctx)
        if self.packing is None:
            update = EncryptedUpdate.encrypt(context, dxo.data, weight=weight, encrypt_layers=self.encrypt_layers)
        else:
            reference = fl_ctx.get_prop(CTX_HE_REFERENCE)  # None for a task without a model (submit_model)
            update, clipped = EncryptedUpdate.encrypt_quantised(
                context, dxo.data, weight=weight, packing=self.packing, reference=reference,
                encrypt_layers=self.encrypt_layers,
            )  # fmt: skip
            if clipped:
                margin = self.packing.margin
                self.log_warning(fl_ctx, f"HE quantised: {clipped} value(s) beyond their layer's range "
                                         f"({margin} x the global model's largest) were clipped")  # fmt: skip
        if update.exposed:
            self.log_info(fl_ctx, f"HE: {len(update.exposed)} layer(s) sent in plaintext by job setting: "
                                  f"{list(update.exposed)}")  # fmt: skip
        dxo.data = update.encode()
        return dxo.update_shareable(shareable)


class HEDecryptModel(Filter):
    """Task-data filter: turn the server's encrypted sum into the plaintext global model at this site."""

    def __init__(self):
        super().__init__()
        self._site = _SiteContext()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable  # refused on arrival (the site's audit trail): no model, the executor replies the error
        dxo = from_shareable(shareable)
        if not is_encrypted(dxo.data):  # the initial model is plaintext: nothing has been aggregated yet
            fl_ctx.set_prop(CTX_HE_REFERENCE, dxo.data, private=True, sticky=False)
            return shareable
        dxo.data = decrypt_global(self._site.context(fl_ctx), dxo.data)
        fl_ctx.set_prop(CTX_HE_REFERENCE, dxo.data, private=True, sticky=False)  # HEEncryptUpdate's ranges
        return dxo.update_shareable(shareable)


def decrypt_global(context, params: dict) -> dict[str, np.ndarray]:
    """Plaintext model from an encoded encrypted global model (the server's sum), with a site's secret key."""
    return EncryptedUpdate.decode(params, "the server").decrypt(context)
