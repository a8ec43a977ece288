"""Packed CKKS encryption of model updates: flatten, weight, encrypt in slot-sized chunks, add, decrypt.

Protocol (one multiplication in total, so CKKS [60, 40, 40] has depth to spare):
  site:   x_i -> encrypt(x_i) * w_i   (the plaintext multiplication rescales the ciphertext to the
                                       lowest modulus level: 0.56x the fresh size for 8192/[60,40,40];
                                       there, sums must stay below 2^19, see HEADROOM)
  server: sum_i enc(w_i x_i)          (additions only; its context has no secret key)
  site:   decrypt(sum) / sum_i w_i    (the total weight travels in plaintext beside the ciphertext)
The wire format of an encrypted update, built from these pieces, is he/wire.py's EncryptedUpdate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

# Model weights are small numbers; CKKS decryption under a different key gives values around 1e9 and more.
MAX_PLAUSIBLE_WEIGHT = 1e6
# ... but at the last level (60-bit modulus, scale 2^40) garbage stays below 2^19 per coefficient, and after the
# division by the sites' total weight its largest value can fall under 1e6 (seen once: a wrong key unnoticed in a
# fresh clone's tests/unit/test_he.py, 2026-12-08). Its typical value does not: garbage's median |value| is, by
# estimate, around 1e5 (coefficients uniform up to 2^19, spread by decoding), a model's weights' far below 1e3.
MAX_PLAUSIBLE_MEDIAN = 1e3
# After the weighting multiplication a ciphertext sits at the last level (60-bit modulus, scale 2^40):
# the *sum over all sites* of weight * value must stay below 2^19 or it wraps around silently. Each
# site keeps its own share under 2^19 / MAX_SITES, so up to MAX_SITES sites can never overflow.
MAX_SITES = 64
HEADROOM = 2**19 / MAX_SITES


@dataclass(frozen=True)
class Layout:
    """Where each encrypted layer sits in the flat vector: (name, shape) in order, and its dtype."""

    layers: tuple[tuple[str, tuple[int, ...]], ...]
    dtypes: tuple[str, ...] | None = None  # numpy dtype strings; None: every layer float32

    @property
    def size(self) -> int:
        return int(sum(np.prod(shape, dtype=np.int64) for _, shape in self.layers))

    def to_wire(self) -> list:
        dtypes = self.dtypes or ("<f4",) * len(self.layers)
        return [[name, list(shape), dtype] for (name, shape), dtype in zip(self.layers, dtypes, strict=True)]

    @classmethod
    def from_wire(cls, wire: list) -> "Layout":
        layers = tuple((str(entry[0]), tuple(int(d) for d in entry[1])) for entry in wire)
        dtypes = tuple(str(entry[2]) if len(entry) > 2 else "<f4" for entry in wire)
        return cls(layers, dtypes)


def split_layers(names, patterns: list[str] | None) -> tuple[list[str], list[str]]:
    """(encrypted, exposed) layer names; `patterns` are regexes of layers to encrypt, None means all."""
    names = list(names)
    if patterns is None:
        return names, []
    compiled = [re.compile(p) for p in patterns]
    encrypted = [n for n in names if any(c.search(n) for c in compiled)]
    return encrypted, [n for n in names if n not in encrypted]


def flatten(params: Mapping[str, np.ndarray], names: list[str]) -> tuple[np.ndarray, Layout]:
    dtypes = tuple(np.asarray(params[n]).dtype.str for n in names)
    arrays = [np.asarray(params[n], dtype=np.float64) for n in names]
    layout = Layout(tuple((n, tuple(a.shape)) for n, a in zip(names, arrays, strict=True)), dtypes)
    flat = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)
    return flat, layout


def unflatten(flat: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Layers back in their shapes and dtypes; integer buffers (e.g. BatchNorm's num_batches_tracked)
    are rounded to the nearest integer, since CKKS returns them with a tiny approximation error."""
    out, offset = {}, 0
    dtypes = layout.dtypes or ("<f4",) * len(layout.layers)
    for (name, shape), dtype in zip(layout.layers, dtypes, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = restore_dtype(flat[offset : offset + n].reshape(shape), np.dtype(dtype))
        offset += n
    return out


def restore_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        return np.rint(values).astype(dtype)
    return values.astype(dtype)


def slot_count(context) -> int:
    """Values one CKKS ciphertext holds: half the polynomial modulus degree."""
    return context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2


def check_headroom(flat: np.ndarray, weight: float) -> None:
    """Refuse an update whose weighted values could make the encrypted sum wrap around (silently wrong)."""
    largest = float(np.abs(flat).max()) * weight if flat.size else 0.0
    if largest >= HEADROOM:
        raise ValueError(
            f"HE: weight {weight} x largest value {largest / weight:.3g} = {largest:.3g} exceeds the CKKS headroom "
            f"{HEADROOM:.0f} (60-bit last level, scale 2^40, up to {MAX_SITES} sites): the encrypted sum would wrap "
            "around. Use fewer local steps per round or larger CKKS coefficient moduli."
        )


def encrypt_weighted(context, flat: np.ndarray, weight: float) -> list:
    """enc(flat) * weight, packed into as few CKKS vectors as the slot count allows."""
    import tenseal as ts

    slots = slot_count(context)
    return [ts.ckks_vector(context, flat[i : i + slots]) * float(weight) for i in range(0, len(flat), slots)]


def encrypt_low(context, slots: np.ndarray) -> list:
    """enc(slots) * 1: the plaintext multiplication drops the ciphertexts to the last level (half the bytes)."""
    return encrypt_weighted(context, slots, 1.0)


_LEVEL_FACTORS: dict[int, float] = {}


def level_factor(context) -> float:
    """What TenSEAL's decryption of a once-multiplied ciphertext returns per unit: 1 + ~6.7e-7 for [60, 40, 40]
    (it records the scale 2^40 where the rescale left 2^80 / q1). Exact enough to divide out (averaged over all
    slots of a value of 2^18, the error is ~1e-15), measured with the secret key, once per context."""
    import tenseal as ts

    key = id(context)
    if key not in _LEVEL_FACTORS:
        probe = np.full(slot_count(context), 2.0**18)
        decrypted = np.asarray((ts.ckks_vector(context, probe) * 1.0).decrypt())
        _LEVEL_FACTORS[key] = float(decrypted.mean() / 2.0**18)
    return _LEVEL_FACTORS[key]


def serialize(vectors: list) -> list[bytes]:
    return [v.serialize() for v in vectors]


def add_encrypted(context, total: list | None, chunks: list[bytes]) -> list:
    """Add one site's serialized ciphertexts to a running list of CKKS vectors (no decryption)."""
    import tenseal as ts

    try:
        vectors = [ts.ckks_vector_from(context, c) for c in chunks]
    except Exception as exc:  # truncated or corrupted ciphertext bytes
        raise ValueError(f"ciphertext cannot be read ({type(exc).__name__}: {exc}); truncated or corrupted") from None
    if total is None:
        return vectors
    if len(total) != len(vectors):
        raise ValueError(f"site sent {len(vectors)} ciphertexts, others sent {len(total)}: different models")
    return [a + b for a, b in zip(total, vectors, strict=True)]


def decrypt(context, chunks: list[bytes], size: int) -> np.ndarray:
    """Decrypt serialized ciphertexts (needs the secret key) into a flat vector of `size` values."""
    import tenseal as ts

    if not context.has_secret_key():
        raise PermissionError("this HE context has no secret key: only hospitals can decrypt")
    values = [np.asarray(ts.ckks_vector_from(context, c).decrypt()) for c in chunks]
    flat = np.concatenate(values) if values else np.zeros(0)
    return flat[:size]
