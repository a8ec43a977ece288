"""A job's DP requests as typed settings, parsed once when the job loads (JobSpec) and rebuilt by the site
components from the same mapping (`to_dict()` into the exported job, `from_dict()` at the site)."""

from __future__ import annotations

import re
from dataclasses import dataclass


def _read(raw, *, where: str, required: tuple[str, ...], example: str) -> dict[str, float]:
    from consortium.privacy.accountant import read_dp_settings  # loads opacus: only for jobs with DP

    return read_dp_settings(raw, where=where, required=required, example=example)


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
        values = _read(raw, where=where, required=("delta", "max_grad_norm"),
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
        return cls(**_read(raw, where=where, required=("clip_norm", "delta"),
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
