"""A job's DP requests as typed settings, parsed once when the job loads (JobSpec) and rebuilt by the site
components from the same mapping (`to_dict()` into the exported job, `from_dict()` at the site)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


def read_dp_settings(raw, *, where: str, required: tuple[str, ...], example: str) -> dict[str, float]:
    """A job's DP mapping (`dp_sgd`, `dp_update`): `required` keys plus exactly one of target_epsilon (noise
    derived) and noise_multiplier, each a finite number > 0, delta < 1. Errors name `where.<key>`."""
    known = (*required, "target_epsilon", "noise_multiplier")
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping ({example}), got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(known)}")
    values = {}
    for key in known:
        if raw.get(key) is None:
            continue
        try:
            values[key] = float(raw[key])  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}: {raw[key]!r} is not a number") from None
        if not (math.isfinite(values[key]) and values[key] > 0):
            raise ValueError(f"{where}.{key}: must be a finite number > 0, got {raw[key]!r}")
    for key in required:
        if key not in values:
            raise ValueError(f"{where}.{key}: missing; e.g. {example}")
    if values.get("delta", 0) >= 1:
        raise ValueError(f"{where}.delta: must be < 1 (e.g. 1.0e-5, below 1 / number of patients)")
    if ("target_epsilon" in values) == ("noise_multiplier" in values):
        raise ValueError(f"{where}: set exactly one of target_epsilon (noise derived) and noise_multiplier")
    return values


# Opacus's secure_mode (a cryptographically secure generator for its noise) needs torchcsprng
SECURE_MODE_REFUSED = (
    "not offered: Opacus's secure_mode needs torchcsprng, whose last release (0.2.1, 2021) ships wheels only "
    "for CPython 3.6-3.9 built against torch 1.8.1 and no source, so it does not install with Python 3.11 and "
    "torch 2.13 (docs/privacy.md). The sampling and noise of this project's DP-SGD come from a torch generator "
    "seeded from the OS (os.urandom), never from the job's seed; remove secure_mode (or set it to false)"
)


@dataclass(frozen=True)
class DPSGDSettings:
    """A job's DP-SGD request: a target epsilon for the whole job (noise derived) or a fixed noise multiplier."""

    delta: float
    max_grad_norm: float
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    # which weights DP-SGD trains: "all", "decoder" (the task's DECODER_PARAMS pattern) or a regex over parameter
    # names; the rest stay as the job's initial model (e.g. a public start). Fewer trained weights, less noise.
    trainable: str = "all"

    @classmethod
    def from_dict(cls, raw, where: str = "dp_sgd") -> "DPSGDSettings":
        """Parse and validate; errors name `where.<key>` and how to fix it."""
        raw = dict(raw) if isinstance(raw, dict) else raw
        trainable = raw.pop("trainable", "all") if isinstance(raw, dict) else "all"
        if isinstance(raw, dict) and raw.pop("secure_mode", False) is not False:
            raise ValueError(f"{where}.secure_mode: {SECURE_MODE_REFUSED}")
        values = read_dp_settings(raw, where=where, required=("delta", "max_grad_norm"),
                       example="target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0")  # fmt: skip
        if not isinstance(trainable, str) or not trainable:
            raise ValueError(f"{where}.trainable: {trainable!r}; use all, decoder, or a regex of parameter names")
        if trainable not in ("all", "decoder"):
            try:
                re.compile(trainable)
            except re.error as exc:
                raise ValueError(f"{where}.trainable: {trainable!r} is not a regex ({exc})") from None
        return cls(**values, trainable=trainable)

    def to_dict(self) -> dict:
        """The job-file mapping (trainable only when not "all"): what the exported job and the run record hold."""
        key = "target_epsilon" if self.target_epsilon is not None else "noise_multiplier"
        out = {"delta": self.delta, "max_grad_norm": self.max_grad_norm, key: getattr(self, key)}
        return out if self.trainable == "all" else {**out, "trainable": self.trainable}


@dataclass(frozen=True)
class DPUpdateSettings:
    """A job's Gaussian noise on each site's update: clip norm, delta, and a target epsilon or noise multiplier."""

    clip_norm: float
    delta: float
    target_epsilon: float | None = None
    noise_multiplier: float | None = None

    @classmethod
    def from_dict(cls, raw, where: str = "dp_update") -> "DPUpdateSettings":
        """Parse and validate; errors name `where.<key>`."""
        return cls(**read_dp_settings(raw, where=where, required=("clip_norm", "delta"),
                           example="clip_norm: 1.0, delta: 1.0e-5, target_epsilon: 8"))  # fmt: skip

    def to_dict(self) -> dict:
        key = "target_epsilon" if self.target_epsilon is not None else "noise_multiplier"
        return {"clip_norm": self.clip_norm, "delta": self.delta, key: getattr(self, key)}

    def noise_for(self, rounds: int, where: str = "dp_update") -> float:
        """The update's noise multiplier: the fixed one, or the one that spends target_epsilon over `rounds`
        (one Gaussian mechanism per round at sensitivity 2 x clip_norm: multiplier = 2 x the unit sigma)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        from consortium.privacy.accountant import noise_for_target

        try:
            return 2 * noise_for_target(target_epsilon=self.target_epsilon, delta=self.delta, sample_rate=1.0,
                                        steps=rounds)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class AuditSettings:
    """The membership-inference audit every job ends with (privacy/audit.py): each site attacks the final
    global model with its training patients against its validation patients; `references` reference models
    (complementary pairs; 0: the loss attack alone), each trained `epochs` passes over half the site's patients
    (with the job's DP-SGD when it has one), calibrate the stronger attack. Job file: `audit: false`,
    `audit: true` (these defaults) or `audit: {references: 2, epochs: 2}`."""

    references: int = 2
    epochs: int = 2

    @classmethod
    def from_dict(cls, raw, where: str = "audit") -> "AuditSettings":
        example = "audit: {references: 2, epochs: 2}, audit: true or audit: false"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected {example}; got {raw!r}")
        unknown = sorted(set(raw) - {"references", "epochs"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: references, epochs")
        values = {**cls().to_dict(), **raw}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}.{key}: expected a whole number, got {value!r}")
        if values["references"] < 0 or values["references"] % 2:
            raise ValueError(f"{where}.references: reference models come in complementary pairs: 0, 2, 4, ...; "
                             f"got {values['references']}")  # fmt: skip
        if values["epochs"] < 1:
            raise ValueError(f"{where}.epochs: must be >= 1 (passes of each reference model), got {values['epochs']}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {"references": self.references, "epochs": self.epochs}
