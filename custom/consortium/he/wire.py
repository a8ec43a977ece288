"""The HE wire format: one encrypted model update (a site's, or the server's sum of them) and its params dict.

Filters, the aggregator, the workflows and the model release speak only this type; no other module spells its
keys. Encoded, an update is a params dict: the plaintext (exposed) layers, already weighted, beside one
PAYLOAD_KEY entry {chunks, layout, weight, exposed_dtypes}. The same dict is the server's HE checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from consortium.he import ckks
from consortium.he.ckks import Layout
from consortium.he.contexts import HEContextError

PAYLOAD_KEY = "__he__"  # the one key of an encrypted params dict besides the plaintext (exposed) layers
# Version 1 is the format from before versions were named: it carries no version field, so its bytes are those
# of every earlier run; a later format writes VERSION and an older reader refuses it with a reason.
VERSION = 1
CHUNKS, LAYOUT, WEIGHT, EXPOSED_DTYPES, VERSION_FIELD = "chunks", "layout", "weight", "exposed_dtypes", "version"


def is_encrypted(params) -> bool:
    """Whether a params dict (a task's data, a site's result, a checkpoint) is an encoded EncryptedUpdate."""
    return isinstance(params, Mapping) and PAYLOAD_KEY in params


@dataclass(frozen=True)
class EncryptedUpdate:
    """Packed ciphertexts of weight * values, where each encrypted layer sits in them, the (total) weight to
    divide by after decryption, and the layers a job sends in plaintext (weighted, float64) with their dtypes."""

    chunks: tuple[bytes, ...]
    layout: Layout
    weight: float
    exposed: Mapping[str, np.ndarray] = field(default_factory=dict)
    exposed_dtypes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def encrypt(cls, context, params: Mapping, *, weight: float, encrypt_layers: list[str] | None = None):
        """A site's update: layers matching `encrypt_layers` (None: all) encrypted packed, multiplied by `weight`."""
        names, exposed = ckks.split_layers(params.keys(), encrypt_layers)
        flat, layout = ckks.flatten(params, names)
        ckks.check_headroom(flat, weight)
        chunks = ckks.serialize(ckks.encrypt_weighted(context, flat, weight))
        plain = {n: np.asarray(params[n], dtype=np.float64) * weight for n in exposed}
        return cls(tuple(chunks), layout, float(weight), plain, {n: np.asarray(params[n]).dtype.str for n in exposed})

    def decrypt(self, context) -> dict[str, np.ndarray]:
        """The plaintext model (needs a site's secret key): decrypt the packed sum, divide by the total weight."""
        flat = ckks.decrypt(context, list(self.chunks), self.layout.size) / self.weight
        if flat.size and not (np.isfinite(flat).all() and np.abs(flat).max() < ckks.MAX_PLAUSIBLE_WEIGHT):
            raise HEContextError(
                "decrypting the global model gave garbage: this site's HE key differs from the other sites' "
                "(kits from different provisioning runs?). Give every site a kit from the same provisioning."
            )
        out = ckks.unflatten(flat, self.layout)
        for name, value in self.exposed.items():
            out[name] = ckks.restore_dtype(value / self.weight, np.dtype(self.exposed_dtypes.get(name, "<f4")))
        return out

    def encode(self) -> dict:
        """The params dict that travels (and that the server checkpoints)."""
        payload = {CHUNKS: list(self.chunks), LAYOUT: self.layout.to_wire(), WEIGHT: self.weight}
        payload[EXPOSED_DTYPES] = dict(self.exposed_dtypes)
        return {**self.exposed, PAYLOAD_KEY: payload}

    @classmethod
    def decode(cls, params, who: str = "a site") -> EncryptedUpdate:
        """Read an encoded update, refusing a plaintext, malformed or truncated one with a reason naming `who`."""
        if not is_encrypted(params):
            raise ValueError(f"{who} sent unencrypted weights; every site must run the job's HE filters")
        payload = params[PAYLOAD_KEY]
        check_payload(payload, who)
        try:
            layout = Layout.from_wire(payload[LAYOUT])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"{who} sent an encrypted update with a malformed layer layout ({exc})") from None
        exposed = {n: np.asarray(v, dtype=np.float64) for n, v in params.items() if n != PAYLOAD_KEY}
        if any(not np.all(np.isfinite(v)) for v in exposed.values()):
            raise ValueError(f"{who} sent exposed (unencrypted) layers with NaN or Inf")
        dtypes = {str(n): str(d) for n, d in (payload.get(EXPOSED_DTYPES) or {}).items()}
        return cls(tuple(payload[CHUNKS]), layout, float(payload[WEIGHT]), exposed, dtypes)


def check_payload(payload, who: str) -> None:
    """Refuse a malformed or truncated PAYLOAD_KEY entry with a reason, before it touches a sum."""
    if not isinstance(payload, Mapping) or not {CHUNKS, LAYOUT, WEIGHT} <= set(payload):
        raise ValueError(f"{who} sent a malformed encrypted update (expected {CHUNKS}, {LAYOUT} and {WEIGHT})")
    version = payload.get(VERSION_FIELD, VERSION)
    if version != VERSION:
        raise ValueError(
            f"{who} sent an encrypted update in format version {version!r}; this package reads version {VERSION}. "
            "Install the same consortium package at every site and at the server."
        )
    chunks, weight = payload[CHUNKS], payload[WEIGHT]
    if not isinstance(chunks, (list, tuple)) or not chunks or not all(isinstance(c, bytes) and c for c in chunks):
        raise ValueError(f"{who} sent an encrypted update without ciphertexts, or with empty ones")
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"{who} sent an encrypted update with aggregation weight {weight!r}; it must be > 0")


class EncryptedSum:
    """The server's running sum of EncryptedUpdates under its public context: it adds, it never decrypts."""

    def __init__(self, context) -> None:
        self._context = context
        self._vectors: list | None = None  # CKKS vectors, serialized once when the round's result is taken
        self._layout: Layout | None = None
        self._exposed: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, str] = {}
        self._weight = 0.0

    @property
    def ciphertexts(self) -> list:
        """What the server holds: CKKS vectors only."""
        return list(self._vectors or [])

    def add(self, update: EncryptedUpdate, who: str = "a site") -> None:
        """Add one update; a refused one (other layout, unreadable ciphertext) leaves the sum untouched."""
        if self._layout is not None and update.layout != self._layout:
            raise ValueError(f"{who} sent a model with a different layer layout than the other sites")
        self._vectors = ckks.add_encrypted(self._context, self._vectors, list(update.chunks))  # all or nothing
        self._layout = update.layout
        self._dtypes = dict(update.exposed_dtypes)
        for name, value in update.exposed.items():
            self._exposed[name] = self._exposed.get(name, 0.0) + value
        self._weight += update.weight

    def result(self) -> EncryptedUpdate:
        if self._vectors is None:
            raise ValueError("no site model was accepted this round")
        chunks = tuple(v.serialize() for v in self._vectors)
        return EncryptedUpdate(chunks, self._layout, self._weight, dict(self._exposed), dict(self._dtypes))
