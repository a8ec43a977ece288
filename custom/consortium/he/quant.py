"""Quantised packing (`he: {pack: quantised}`): fixed-point integers, several per CKKS slot, for ~4x fewer bytes.

A site turns each value x of a layer into a signed integer q = stochastic_round(w/max_weight * x / step), |q| <= qmax,
where step = range / qmax and the layer's range is the same at every site (from the global model the round started
from: margin x its largest magnitude). It packs `per_slot` integers into one number P = sum_j q_j B^j (balanced
digits in base B = 2 max_sites qmax + 1) and encrypts P * 2^-FRACTION_BITS. The server adds ciphertexts: a digit
of the sum is the sum of at most max_sites digits, so it never leaves (-B/2, B/2) and the digits stay separable.
A site decrypts, rounds to the integer sum, reads the digits and multiplies by step * max_weight / total weight.

Precision (CKKS 8192 / [60, 40, 40], scale 2^40; tests/unit/test_he_quant.py checks it): after the one plaintext
multiplication (by 1, to drop to the 60-bit last level: half the bytes) a slot holds |v| < 2^19, and decryption
errs by under 4e-8 (2^-24.6) for up to 16 sites once TenSEAL's scale bookkeeping (a fixed factor 1 + 6.7e-7: it
records 2^40 where the rescale left 2^80 / q1) is divided out. With FRACTION_BITS 22 (unit 2.4e-7, rounding fails
at half of it) |P| < 2^41: about 42 bits per slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRACTION_BITS = 22  # the packed integer P travels as P * 2^-22: a unit is ~6x the worst CKKS error measured
LIMIT_BITS = 41  # |P| < 2^41, so |P| * 2^-22 < 2^19: what the last level (60-bit modulus, scale 2^40) holds
MIN_RANGE = 1.0  # a layer whose global values are all 0 (a fresh bias) is quantised in [-1, 1]
BITS_RANGE = (2, 16)


@dataclass(frozen=True)
class Packing:
    """How a job quantises and packs: value `bits` (sign included), at most `max_sites` summands, a site's
    aggregation weight at most `max_weight`, and a layer's range `margin` x its largest global magnitude."""

    bits: int = 8
    max_sites: int = 4
    max_weight: float = 1.0
    margin: float = 2.0

    def __post_init__(self):
        lo, hi = BITS_RANGE
        if not isinstance(self.bits, int) or not lo <= self.bits <= hi:
            raise ValueError(f"he.bits: {self.bits!r} is out of range; use a whole number from {lo} to {hi}")
        if not isinstance(self.max_sites, int) or self.max_sites < 1:
            raise ValueError(f"he.max_sites: {self.max_sites!r}; use the number of sites of the consortium (>= 1)")
        if not self.max_weight > 0 or not math.isfinite(self.max_weight):
            raise ValueError(f"he.max_weight: {self.max_weight!r}; use the largest aggregation weight a site has")
        if not self.margin >= 1 or not math.isfinite(self.margin):
            raise ValueError(f"he.margin: {self.margin!r}; use a factor >= 1 (range = margin x largest value)")
        if self.per_slot < 1:
            raise ValueError(
                f"he: bits {self.bits} with max_sites {self.max_sites} needs digits of {math.log2(self.base):.1f} "
                f"bits, more than the {LIMIT_BITS + 1} bits a CKKS slot holds exactly; use fewer bits or sites"
            )

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def base(self) -> int:
        """Digits in (-B/2, B/2): the sum of max_sites values in [-qmax, qmax] always fits one digit."""
        return 2 * self.max_sites * self.qmax + 1

    @property
    def per_slot(self) -> int:
        """Values per CKKS slot: the most digits whose packed number stays below 2^LIMIT_BITS."""
        k = 0
        while (self.base ** (k + 1) - 1) // 2 < 2**LIMIT_BITS:
            k += 1
        return k

    def to_wire(self) -> dict:
        return {"bits": self.bits, "max_sites": self.max_sites, "max_weight": self.max_weight, "margin": self.margin}

    @classmethod
    def from_wire(cls, wire: dict) -> "Packing":
        return cls(int(wire["bits"]), int(wire["max_sites"]), float(wire["max_weight"]), float(wire["margin"]))


def ranges(reference: list[np.ndarray], margin: float, least: list[float] | None = None) -> list[float]:
    """A layer's range from the model every site received: margin x its largest magnitude (MIN_RANGE if that is
    0), and at least `least` (an integer buffer's is qmax, a step of 1, so a count from 0 survives its first round)."""
    out = []
    for i, values in enumerate(reference):
        largest = float(np.abs(values).max()) if values.size else 0.0
        out.append(max(margin * largest if largest > 0 else MIN_RANGE, least[i] if least else 0.0))
    return out


def steps(layer_ranges: list[float], sizes: list[int], qmax: int) -> np.ndarray:
    """The quantisation step of every value of the flat vector (its layer's range / qmax)."""
    return np.repeat(np.asarray(layer_ranges, dtype=np.float64) / qmax, sizes)


def quantise(flat: np.ndarray, step: np.ndarray, qmax: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(integers, how many values were clipped): stochastic rounding, E[q] = x / step for |x| <= qmax step."""
    scaled = flat / step
    clipped = int(np.count_nonzero(np.abs(scaled) > qmax))
    scaled = np.clip(scaled, -qmax, qmax)
    low = np.floor(scaled)
    q = low + (rng.random(scaled.shape) < (scaled - low))
    return q.astype(np.int64), clipped


def pack(q: np.ndarray, base: int, per_slot: int) -> np.ndarray:
    """Slot values (float64, exact): groups of `per_slot` integers as balanced base-`base` digits, x 2^-F."""
    padded = np.zeros(-(-q.size // per_slot) * per_slot, dtype=np.int64)
    padded[: q.size] = q
    digits = padded.reshape(-1, per_slot)
    packed = np.zeros(digits.shape[0], dtype=np.int64)
    for j in reversed(range(per_slot)):  # Horner: exact in int64 (|P| < 2^41)
        packed = packed * base + digits[:, j]
    return np.ldexp(packed.astype(np.float64), -FRACTION_BITS)


def unpack(slots: np.ndarray, base: int, per_slot: int, size: int) -> np.ndarray:
    """Integers back from (decrypted, summed) slot values: round to P, then peel off balanced digits."""
    scaled = np.ldexp(np.asarray(slots, dtype=np.float64), FRACTION_BITS)
    if scaled.size and np.abs(scaled).max() >= 2.0**LIMIT_BITS:
        raise ValueError("quantised HE: a decrypted slot exceeds the packing's range (wrong key or corrupted sum)")
    packed = np.rint(scaled).astype(np.int64)
    half = base // 2
    digits = np.empty((packed.size, per_slot), dtype=np.int64)
    for j in range(per_slot):
        digit = (packed + half) % base - half  # balanced: in [-half, half]
        digits[:, j] = digit
        packed = (packed - digit) // base
    return digits.reshape(-1)[:size]
