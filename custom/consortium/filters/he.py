"""Site-side HE filters: encrypt the weighted update on its way out, decrypt the global model on its way in."""

from __future__ import annotations

import re

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from consortium.he.ckks import (
    PAYLOAD_KEY,
    Layout,
    decrypt,
    encrypt_weighted,
    flatten,
    restore_dtype,
    serialize,
    split_layers,
    unflatten,
)
from consortium.he.contexts import CLIENT_CONTEXT, HEContextError, load_context

# Model weights are small numbers; CKKS decryption under a different key gives values around 1e9 and more.
MAX_PLAUSIBLE_WEIGHT = 1e6
# After the weighting multiplication a ciphertext sits at the last level (60-bit modulus, scale 2^40):
# the *sum over all sites* of weight * value must stay below 2^19 or it wraps around silently. Each
# site keeps its own share under 2^19 / MAX_SITES, so up to MAX_SITES sites can never overflow.
MAX_SITES = 64
HEADROOM = 2**19 / MAX_SITES


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
    """

    def __init__(self, encrypt_layers: list[str] | None = None):
        super().__init__()
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
        encrypted, exposed = split_layers(dxo.data.keys(), self.encrypt_layers)
        if exposed:
            self.log_info(fl_ctx, f"HE: {len(exposed)} layer(s) sent in plaintext by job setting: {exposed}")
        flat, layout = flatten(dxo.data, encrypted)
        largest = float(np.abs(flat).max()) * weight if flat.size else 0.0
        if largest >= HEADROOM:
            raise ValueError(
                f"HEEncryptUpdate: weight {weight} x largest value {largest / weight:.3g} = {largest:.3g} exceeds the "
                f"CKKS headroom {HEADROOM:.0f} (60-bit last level, scale 2^40, up to {MAX_SITES} sites): the encrypted "
                "sum would wrap around. Use fewer local steps per round or larger CKKS coefficient moduli."
            )
        payload = {name: np.asarray(dxo.data[name], dtype=np.float64) * weight for name in exposed}
        chunks = serialize(encrypt_weighted(self._site.context(fl_ctx), flat, weight))
        exposed_dtypes = {name: np.asarray(dxo.data[name]).dtype.str for name in exposed}
        payload[PAYLOAD_KEY] = {
            "chunks": chunks,
            "layout": layout.to_wire(),
            "weight": float(weight),
            "exposed_dtypes": exposed_dtypes,
        }
        dxo.data = payload
        return dxo.update_shareable(shareable)


class HEDecryptModel(Filter):
    """Task-data filter: turn the server's encrypted sum into the plaintext global model at this site."""

    def __init__(self):
        super().__init__()
        self._site = _SiteContext()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        dxo = from_shareable(shareable)
        he = dxo.data.get(PAYLOAD_KEY) if isinstance(dxo.data, dict) else None
        if he is None:
            return shareable  # the initial model is plaintext: nothing has been aggregated yet
        params = decrypt_global(self._site.context(fl_ctx), dxo.data)
        dxo.data = params
        return dxo.update_shareable(shareable)


def decrypt_global(context, params: dict) -> dict[str, np.ndarray]:
    """Plaintext model from an encrypted global model: decrypt the packed sum, divide by the total weight."""
    he = params[PAYLOAD_KEY]
    layout = Layout.from_wire(he["layout"])
    total = float(he["weight"])
    flat = decrypt(context, he["chunks"], layout.size) / total
    if flat.size and not (np.isfinite(flat).all() and np.abs(flat).max() < MAX_PLAUSIBLE_WEIGHT):
        raise HEContextError(
            "decrypting the global model gave garbage: this site's HE key differs from the other sites' "
            "(kits from different provisioning runs?). Give every site a kit from the same provisioning."
        )
    out = unflatten(flat, layout)
    for name, value in params.items():
        if name != PAYLOAD_KEY:  # exposed layers arrive as weighted sums (float64); their dtype travels in meta
            dtype = np.dtype(he.get("exposed_dtypes", {}).get(name, "<f4"))
            out[name] = restore_dtype(np.asarray(value, dtype=np.float64) / total, dtype)
    return out
