"""The HE wire format: one encrypted model update (a site's, or the server's sum of them) and its params dict.

Filters, the aggregator, the workflows and the model release speak only this type; no other module spells its
keys. Encoded, an update is a params dict: the plaintext (exposed) layers, already weighted, beside one
PAYLOAD_KEY entry {chunks, layout, weight, exposed_dtypes}. The same dict is the server's HE checkpoint.
The quantised packing (he/quant.py) writes version 2 and a QUANT field {packing, ranges}: integers packed
several per slot, with the layers' quantisation ranges in plaintext beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from consortium.he import ckks, quant
from consortium.he.ckks import Layout
from consortium.he.contexts import HEContextError

PAYLOAD_KEY = "__he__"  # the one key of an encrypted params dict besides the plaintext (exposed) layers
# Version 1 is the format from before versions were named: it carries no version field, so its bytes are those
# of every earlier run; a later format writes VERSION and an older reader refuses it with a reason.
VERSION = 1
QUANTISED_VERSION = 2  # the quantised packing: older readers refuse it instead of decrypting garbage
CHUNKS, LAYOUT, WEIGHT, EXPOSED_DTYPES, VERSION_FIELD = "chunks", "layout", "weight", "exposed_dtypes", "version"
QUANT = "quant"


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
    packing: quant.Packing | None = None  # None: one float per slot (weight x value); else quantised integers
    ranges: tuple[float, ...] | None = None  # quantised: each encrypted layer's range, the same at every site
    sites: int = 1  # how many site updates this sum holds (the quantised digits have headroom for max_sites)

    @classmethod
    def encrypt(cls, context, params: Mapping, *, weight: float, encrypt_layers: list[str] | None = None):
        """A site's update: layers matching `encrypt_layers` (None: all) encrypted packed, multiplied by `weight`."""
        names, exposed = ckks.split_layers(params.keys(), encrypt_layers)
        flat, layout = ckks.flatten(params, names)
        ckks.check_headroom(flat, weight)
        chunks = ckks.serialize(ckks.encrypt_weighted(context, flat, weight))
        plain = {n: np.asarray(params[n], dtype=np.float64) * weight for n in exposed}
        return cls(tuple(chunks), layout, float(weight), plain, {n: np.asarray(params[n]).dtype.str for n in exposed})

    @classmethod
    def encrypt_quantised(cls, context, params: Mapping, *, weight: float, packing: quant.Packing,
                          reference: Mapping | None = None, encrypt_layers: list[str] | None = None,
                          rng: np.random.Generator | None = None) -> tuple["EncryptedUpdate", int]:  # fmt: skip
        """(update, values clipped): a site's update quantised to integers in its layers' ranges and packed
        `packing.per_slot` per CKKS slot. The ranges come from `reference` (the global model this round started
        from: the same at every site, so the sums line up); without one (a site's own model, never summed) from
        the update itself."""
        if weight > packing.max_weight:
            raise ValueError(
                f"HE: this site's aggregation weight {weight} exceeds he.max_weight {packing.max_weight}; the "
                "quantised sum could overflow. Raise he.max_weight in the job to the largest weight a site has."
            )
        names, exposed = ckks.split_layers(params.keys(), encrypt_layers)
        flat, layout = ckks.flatten(params, names)
        source = reference if reference is not None and all(n in reference for n in names) else params
        least = [float(packing.qmax) if np.issubdtype(np.dtype(d), np.integer) else 0.0 for d in layout.dtypes]
        reference_values = [np.asarray(source[n], dtype=np.float64) for n in names]
        layer_ranges = quant.ranges(reference_values, packing.margin, least)
        sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in layout.layers]
        step = quant.steps(layer_ranges, sizes, packing.qmax)
        q, clipped = quant.quantise(flat * (weight / packing.max_weight), step, packing.qmax,
                                    rng or np.random.default_rng())  # fmt: skip
        slots = quant.pack(q, packing.base, packing.per_slot)
        chunks = ckks.serialize(ckks.encrypt_low(context, slots))
        plain = {n: np.asarray(params[n], dtype=np.float64) * weight for n in exposed}
        dtypes = {n: np.asarray(params[n]).dtype.str for n in exposed}
        return cls(tuple(chunks), layout, float(weight), plain, dtypes, packing, tuple(layer_ranges)), clipped

    def decrypt(self, context) -> dict[str, np.ndarray]:
        """The plaintext model (needs a site's secret key): decrypt the packed sum, divide by the total weight."""
        if self.packing is not None:
            flat = self._decrypt_quantised(context)
        else:
            flat = ckks.decrypt(context, list(self.chunks), self.layout.size) / self.weight
        magnitude = np.abs(flat)
        if flat.size and not (np.isfinite(flat).all() and magnitude.max() < ckks.MAX_PLAUSIBLE_WEIGHT
                              and np.median(magnitude) < ckks.MAX_PLAUSIBLE_MEDIAN):  # fmt: skip
            raise HEContextError(
                "decrypting the global model gave garbage: this site's HE key differs from the other sites' "
                "(kits from different provisioning runs?). Give every site a kit from the same provisioning."
            )
        out = ckks.unflatten(flat, self.layout)
        for name, value in self.exposed.items():
            out[name] = ckks.restore_dtype(value / self.weight, np.dtype(self.exposed_dtypes.get(name, "<f4")))
        return out

    def _decrypt_quantised(self, context) -> np.ndarray:
        packing = self.packing
        slots_needed = -(-self.layout.size // packing.per_slot)
        slots = ckks.decrypt(context, list(self.chunks), slots_needed) / ckks.level_factor(context)
        try:
            q = quant.unpack(slots, packing.base, packing.per_slot, self.layout.size)
        except ValueError:
            q = None
        if q is None:
            raise HEContextError(
                "decrypting the global model gave garbage: this site's HE key differs from the other sites' "
                "(kits from different provisioning runs?). Give every site a kit from the same provisioning."
            )
        sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in self.layout.layers]
        step = quant.steps(list(self.ranges), sizes, packing.qmax)
        return q * step * (packing.max_weight / self.weight)

    def encode(self) -> dict:
        """The params dict that travels (and that the server checkpoints)."""
        payload = {CHUNKS: list(self.chunks), LAYOUT: self.layout.to_wire(), WEIGHT: self.weight}
        payload[EXPOSED_DTYPES] = dict(self.exposed_dtypes)
        if self.packing is not None:
            payload[VERSION_FIELD] = QUANTISED_VERSION
            payload[QUANT] = {"packing": self.packing.to_wire(), "ranges": list(self.ranges), "sites": self.sites}
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
        packing, ranges, sites = _quant_fields(payload, layout, who)
        return cls(tuple(payload[CHUNKS]), layout, float(payload[WEIGHT]), exposed, dtypes, packing, ranges, sites)


def _quant_fields(payload, layout: Layout, who: str):
    """(packing, ranges, sites) of a version-2 payload; (None, None, 1) for the float packing."""
    if payload.get(VERSION_FIELD, VERSION) != QUANTISED_VERSION:
        return None, None, 1
    try:
        fields_ = payload[QUANT]
        packing = quant.Packing.from_wire(fields_["packing"])
        ranges = tuple(float(r) for r in fields_["ranges"])
        sites = int(fields_["sites"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{who} sent a quantised encrypted update with malformed packing fields ({exc})") from None
    if len(ranges) != len(layout.layers) or not all(np.isfinite(r) and r > 0 for r in ranges) or sites < 1:
        raise ValueError(f"{who} sent a quantised encrypted update whose ranges do not match its layers")
    return packing, ranges, sites


def check_payload(payload, who: str) -> None:
    """Refuse a malformed or truncated PAYLOAD_KEY entry with a reason, before it touches a sum."""
    if not isinstance(payload, Mapping) or not {CHUNKS, LAYOUT, WEIGHT} <= set(payload):
        raise ValueError(f"{who} sent a malformed encrypted update (expected {CHUNKS}, {LAYOUT} and {WEIGHT})")
    version = payload.get(VERSION_FIELD, VERSION)
    if version not in (VERSION, QUANTISED_VERSION):
        raise ValueError(
            f"{who} sent an encrypted update in format version {version!r}; this package reads versions "
            f"{VERSION} and {QUANTISED_VERSION}. "
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
        self._packing: tuple | None = None  # (packing, ranges) of the quantised updates summed so far
        self._sites = 0

    @property
    def ciphertexts(self) -> list:
        """What the server holds: CKKS vectors only."""
        return list(self._vectors or [])

    def add(self, update: EncryptedUpdate, who: str = "a site") -> None:
        """Add one update; a refused one (other layout, unreadable ciphertext) leaves the sum untouched."""
        if self._layout is not None and update.layout != self._layout:
            raise ValueError(f"{who} sent a model with a different layer layout than the other sites")
        packing = (update.packing, update.ranges)
        if self._layout is not None and packing != self._packing:
            raise ValueError(
                f"{who} sent an update packed differently from the other sites' (packing or quantisation ranges "
                "differ: a different job setting, or a site that started the round from another global model)"
            )
        if update.packing is not None and self._sites + update.sites > update.packing.max_sites:
            raise ValueError(
                f"{who}: more than he.max_sites = {update.packing.max_sites} site updates this round; the quantised "
                "sum would overflow its digits. Raise he.max_sites in the job to the number of sites."
            )
        self._vectors = ckks.add_encrypted(self._context, self._vectors, list(update.chunks))  # all or nothing
        self._layout, self._packing = update.layout, packing
        self._sites += update.sites
        self._dtypes = dict(update.exposed_dtypes)
        for name, value in update.exposed.items():
            self._exposed[name] = self._exposed.get(name, 0.0) + value
        self._weight += update.weight

    def result(self) -> EncryptedUpdate:
        if self._vectors is None:
            raise ValueError("no site model was accepted this round")
        chunks = tuple(v.serialize() for v in self._vectors)
        packing, ranges = self._packing
        return EncryptedUpdate(chunks, self._layout, self._weight, dict(self._exposed), dict(self._dtypes),
                               packing, ranges, self._sites)  # fmt: skip
