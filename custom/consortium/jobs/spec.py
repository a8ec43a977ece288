"""The job spec: one experiment's settings, typed and coerced on construction. Its field defaults are the
one set of defaults (the site executor's signature takes them from JOB_DEFAULTS)."""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from consortium.config import ConfigError
from consortium.privacy.settings import AuditSettings, DPSGDSettings, DPUpdateSettings
from consortium.server_opt import ServerOptSettings


@dataclass(frozen=True)
class HESettings:
    """Aggregate CKKS-encrypted updates; `encrypt_layers`: regexes of the layers to encrypt (None: all; the
    others travel in plaintext and each site's log lists them). `pack`: ckks (one float per slot) or quantised
    (he/quant.py: `bits` per value, several per slot, with headroom for `max_sites` sites of weight at most
    `max_weight`; a layer's range is `margin` x its largest global value; docs/encryption.md)."""

    encrypt_layers: tuple[str, ...] | None = None
    quantised: tuple[tuple[str, float], ...] | None = None  # the Packing's settings; None: pack ckks

    @classmethod
    def from_dict(cls, raw, where: str = "he") -> "HESettings":
        keys = {"encrypt_layers", "pack", "bits", "max_sites", "max_weight", "margin"}
        if not isinstance(raw, dict) or set(raw) - keys:
            raise ValueError(f"{where}: expected true, false or a mapping of {sorted(keys)}, got {raw!r}")
        quantised = _packing(raw, where)
        layers = raw.get("encrypt_layers")
        if layers is None:
            return cls(None, quantised)
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(p, str) for p in layers):
            raise ValueError(f"{where}.encrypt_layers: expected a non-empty list of regexes (or null: every layer)")
        for pattern in layers:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{where}.encrypt_layers: {pattern!r} is not a regex ({exc})") from None
        return cls(tuple(layers), quantised)

    def to_dict(self) -> dict:
        """The job file's form (JobSpec(**d) reads it back), also HEEncryptUpdate's arguments."""
        out = {"encrypt_layers": None if self.encrypt_layers is None else list(self.encrypt_layers)}
        return {**out, "pack": "quantised", **dict(self.quantised)} if self.quantised is not None else out


def _packing(raw: dict, where: str) -> tuple | None:
    """The quantised packing's settings, checked by building the Packing (bits range, digits that fit a slot)."""
    from consortium.he.quant import Packing

    pack = raw.get("pack", "ckks")
    if pack not in ("ckks", "quantised"):
        raise ValueError(f"{where}.pack: {pack!r}; use ckks (one float per slot) or quantised (he/quant.py)")
    extra = sorted({"bits", "max_sites", "max_weight", "margin"} & set(raw))
    if pack == "ckks":
        if extra:
            raise ValueError(f"{where}: {extra} apply only with pack: quantised")
        return None
    settings = {k: raw[k] for k in extra}
    for key in ("bits", "max_sites"):
        if key in settings and (isinstance(settings[key], bool) or not isinstance(settings[key], int)):
            raise ValueError(f"{where}.{key}: expected a whole number, got {settings[key]!r}")
    for key in ("max_weight", "margin"):
        if key in settings:
            if isinstance(settings[key], bool) or not isinstance(settings[key], (int, float)):
                raise ValueError(f"{where}.{key}: expected a number, got {settings[key]!r}")
            settings[key] = float(settings[key])
    packing = Packing(**settings)  # ValueError naming he.<setting>
    return tuple(sorted(packing.to_wire().items()))


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str = ""
    # what the job is for, one of the charter's purposes (provisioning/consortium.yaml charter.purposes), and the
    # version of the data-sharing agreement it runs under (charter.agreement.version); every job states both and
    # each hospital's kit checks them against its own approvals (docs/deployment.md#governance)
    purpose: str | None = None
    agreement: str | None = None
    task: str = "seg2d"
    rounds: int = 10
    local_epochs: int = 2
    local_steps: int | None = None  # if set: exactly this many steps per round at every site (cycling its data)
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    batch_size: int = 8
    seed: int = 0
    min_clients: int = 2
    # job file: `he: true` (every layer), `he: {encrypt_layers: [regex, ...]}`, or false; the server never holds
    # a decryption key
    he: HESettings | None = None
    algorithm: str = "fedavg"  # fedavg | fedprox | scaffold (local-training correction for non-IID sites)
    prox_mu: float = 0.0  # FedProx proximal coefficient (algorithm: fedprox); 0 is FedAvg
    finetune_epochs: int = 0  # after training, each site fine-tunes the global model locally (personalization)
    weighting: str = "steps"  # a site's aggregation weight: its local steps (FedAvg), "uniform" or "samples"
    server_momentum: float = 0.0  # FedAvgM's beta, applied at the sites (algorithms.ServerMomentum); 0: none
    # FedAdam / FedYogi / FedAdagrad (Reddi et al. 2021), stepped at every site on the same aggregate (server_opt.py):
    # {name: adam | yogi | adagrad, lr, beta1: 0.9, beta2: 0.99, tau: 0.001}; None: the plain average (FedAvg)
    server_optimizer: ServerOptSettings | None = None
    cross_site: bool = True  # end with FLARE's cross-site evaluation: every model on every site's data
    # after training each site also trains the initial model alone (same epochs and schedule); cross-site
    # evaluation then scores the shared model against each site's own: "better than training alone?"
    # None: on, except in DP jobs (that model is not DP and leaves the site); true with DP is refused
    train_alone: bool | None = None
    # seconds a round (and each evaluation task) waits for a site before going on without it
    round_timeout: int = 600
    # DP-SGD at every site: {target_epsilon (whole job, per site) | noise_multiplier, delta, max_grad_norm}
    dp_sgd: DPSGDSettings | None = None
    # Gaussian noise on each site's update: {clip_norm, delta, target_epsilon | noise_multiplier}
    dp_update: DPUpdateSettings | None = None
    # tabular tasks: z-score the features with the global mean/std from FLARE's federated statistics (federated),
    # each site's own (local), or not at all (none); None: the task's default (heart: federated; seg2d: none)
    standardise: str | None = None
    # a state dict the hospitals trust to start from (e.g. `consortium pretrain`'s public start), instead of a
    # random initial model; relative paths are from the working directory. Shipped in the job, checked by hash.
    pretrained: str | None = None
    # the job ends with a membership-inference audit at every site (privacy/audit.py); only scores leave a site:
    # `audit: false`, `audit: true` or `audit: {references: 2, epochs: 2}` (privacy/settings.py AuditSettings)
    audit: AuditSettings | None = AuditSettings()

    def __post_init__(self):
        """Coerce every field to its declared type (YAML gives "1e-3" as a string) and parse the DP and HE
        mappings into their settings; errors name the field (load_job_spec adds the file)."""
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, _coerce(f.type, value))
            except (TypeError, ValueError) as exc:
                if f.type in _SETTINGS and isinstance(value, dict):  # the parser names the key: dp_sgd.delta
                    raise ConfigError(f"field {exc}") from None
                raise ConfigError(f"field '{f.name}': {value!r} is not a valid {f.type} ({exc})") from None

    @property
    def alone(self) -> bool:
        """Whether sites also train alone: train_alone, or by default whenever the job has no DP."""
        return self.train_alone if self.train_alone is not None else not (self.dp_sgd or self.dp_update)

    @property
    def round_budget(self) -> str:
        """A site's training per round, in words: "12 local steps" or "2 local epochs"."""
        return f"{self.local_steps} local steps" if self.local_steps else f"{self.local_epochs} local epochs"

    def to_dict(self) -> dict:
        """Plain data (JSON-able) from which JobSpec(**d) rebuilds this spec: the simulator worker's copy."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in out.items()}

    def with_overrides(self, source: Path | str, **changes) -> "JobSpec":
        """This spec with `changes` (None: keep the job's value), coerced and validated like the job file:
        the one path every command-line override takes, so `--rounds 0` or `--lr -1` is refused, not ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = {f.name for f in fields(JobSpec)}
        unknown = sorted(set(changes) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{source}: override '{unknown[0]}': not a job field (allowed: {allowed})")
        if not changes:
            return self
        try:
            spec = replace(self, **changes)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return spec.validate(Path(source))

    def validate(self, source: Path) -> "JobSpec":
        """Refuse settings that do not fit together (or the task), naming the file and field."""
        from consortium.jobs.checks import validate

        validate(self, source)
        return self


JOB_DEFAULTS = {f.name: f.default for f in fields(JobSpec) if f.default is not MISSING}


def _whole(value) -> int:
    """An integer setting: 8 or "8", never 7.5 (which int() would silently truncate) or true."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"expected a whole number, got {value!r}")
    return int(value)


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _he(value) -> HESettings | None:
    if isinstance(value, HESettings) or value is None:
        return value
    if isinstance(value, bool):
        return HESettings() if value else None
    return HESettings.from_dict(value)


def _audit(value) -> AuditSettings | None:
    if isinstance(value, AuditSettings) or value is None:
        return value
    if isinstance(value, bool):
        return AuditSettings() if value else None
    return AuditSettings.from_dict(value)


def _settings(cls):
    def parse(value):
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError("expected a mapping of settings")
        return cls.from_dict(value)

    return parse


_SETTINGS = {
    "DPSGDSettings | None": _settings(DPSGDSettings),
    "DPUpdateSettings | None": _settings(DPUpdateSettings),
    "ServerOptSettings | None": _settings(ServerOptSettings),
}
_SETTINGS["AuditSettings | None"] = _audit  # also true / false
_KINDS = {"int": _whole, "float": float, "str": str, "bool": _flag, "HESettings | None": _he, **_SETTINGS}


def _coerce(kind: str, value):
    optional = kind.endswith(" | None") and kind not in _KINDS
    if optional and value is None:
        return None
    return _KINDS[kind.removesuffix(" | None") if optional else kind](value)
