"""Typed site configs: load YAML, merge `_defaults.yaml`, validate with errors naming file and field."""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from consortium.constants import ENV_SITE_CONFIG_DIR

DEFAULTS_FILE = "_defaults.yaml"
SITE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # FLARE client name rule
ORG_RE = re.compile(r"^[A-Za-z0-9_]+$")  # FLARE org name rule


class ConfigError(ValueError):
    """A config file is invalid; the message names the file, the field and how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    dir: Path  # folder holding the manifest and the DICOM files
    manifest: str = "manifest.csv"
    modality: str = "CT"
    # label value (NIfTI voxel value, DICOM SEG segment number) -> the task's class; values not listed are
    # refused when indexing; 0 is background
    label_map: dict = field(default_factory=lambda: {1: 1})
    # intensity harmonisation this site applies to its own images before training: hu' = hu_scale * hu +
    # hu_offset (the pre-flight suggests both in runs/preflight/harmonisation.json); 0 and 1: off
    hu_offset: float = 0.0
    hu_scale: float = 1.0
    # tabular tasks (heart): which hospital of the shared CSV, and the CSV (None: the packaged copy)
    center: str | None = None
    csv: Path | None = None


@dataclass(frozen=True)
class ResourceConfig:
    num_threads: int = 1
    device: str = "cpu"


ROLES = ("project_admin", "org_admin", "lead", "member")  # FLARE admin roles


@dataclass(frozen=True)
class AuthorizationConfig:
    """Who may run jobs at this site, written into the site's kit as FLARE's local/authorization.json."""

    submit_roles: tuple[str, ...] = ("project_admin", "lead")
    allow_custom_code: bool = False  # jobs that ship code in app/custom ("BYOC") are refused


@dataclass(frozen=True)
class PrivacyConfig:
    """The site's privacy floor, enforced at the site (executor and the kit's local/privacy.json scope)."""

    require_dp: bool = False  # refuse jobs that do not train with DP-SGD here
    max_epsilon: float | None = None  # refuse a round that would take this job's epsilon above it (None: no cap)
    delta: float = 1e-5  # jobs must use this delta or a smaller one
    min_noise_multiplier: float = 0.0  # refuse DP-SGD with less noise than this
    max_clip_norm: float | None = None  # refuse DP-SGD with a larger per-sample clipping bound (None: no cap)


@dataclass(frozen=True)
class SyntheticProfile:
    """How the demo generator simulates this hospital's scanner and cohort (generated data only)."""

    institution: str
    manufacturer: str
    patients: int
    slices_per_patient: int = 2
    noise_hu: float = 15.0
    hu_offset: float = 0.0
    lesion_contrast_hu: float = -40.0
    lesion_radius: tuple[float, float] = (3.0, 6.0)
    lesions_max: int = 2
    prevalence: float = 0.8
    val_fraction: float = 0.25


@dataclass(frozen=True)
class SiteConfig:
    name: str
    org: str
    data: DataConfig
    resources: ResourceConfig
    synthetic: SyntheticProfile | None
    source: Path
    authorization: AuthorizationConfig = AuthorizationConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @property
    def manifest_path(self) -> Path:
        return self.data.dir / self.data.manifest


def _fail(source: Path, field: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{source}: field '{field}': {problem}. {fix}")


def _build(cls, raw: Any, source: Path, prefix: str, converters: dict | None = None):
    """Build dataclass `cls` from a mapping, refusing unknown keys and missing required ones."""
    if not isinstance(raw, dict):
        raise _fail(source, prefix, f"expected a mapping, got {type(raw).__name__}", "Indent the keys below it.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise _fail(source, f"{prefix}.{unknown[0]}", "unknown key", f"Allowed keys: {', '.join(sorted(known))}.")
    values = {}
    for name, value in raw.items():
        conv = (converters or {}).get(name)
        try:
            values[name] = conv(value) if conv else value
        except (TypeError, ValueError) as exc:
            fix = "See the comments in site_configs/_defaults.yaml and the README."
            raise _fail(source, f"{prefix}.{name}", f"invalid value {value!r} ({exc})", fix) from None
    try:
        return cls(**values)
    except TypeError as exc:
        raise _fail(source, prefix, str(exc), "Add the missing key.") from None


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file's top-level mapping; a syntax error is one line naming the file, line and column."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at top level")
    return raw


def _positive(kind):
    def conv(value):
        if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise ValueError("expected a whole number")  # int(2.5) would silently truncate
        value = kind(value)
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    return conv


def _fraction(value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _roles(value):
    roles = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise ValueError(f"unknown role(s) {bad}; FLARE roles are {', '.join(ROLES)}")
    return roles


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _optional_positive(value):
    return None if value is None else _positive(float)(value)


def _open_fraction(value):
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError("must be between 0 and 1 (exclusive), e.g. 1.0e-5")
    return value


def _non_negative(value):
    value = float(value)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _radius(value):
    lo, hi = (float(v) for v in value)
    if not 0 < lo <= hi:
        raise ValueError("must be [min, max] with 0 < min <= max")
    return (lo, hi)


def _finite(value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _label_map(value) -> dict:
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a mapping of label value to class, e.g. {1: 1, 2: 1}")
    out = {}
    for k, v in value.items():
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (k, v)):
            raise ValueError(f"{k!r}: {v!r} is not a non-negative integer label value -> non-negative integer class")
        out[k] = v
    return out


def parse_site_config(raw: dict, source: Path) -> SiteConfig:
    """Validate one merged site mapping (defaults already applied) into a SiteConfig."""
    raw = dict(raw)
    name = str(raw.pop("site", source.stem))
    if name != source.stem:
        raise _fail(source, "site", f"'{name}' differs from the file name", f"Rename the file to {name}.yaml.")
    if not SITE_NAME_RE.match(name):
        raise _fail(source, "site", f"'{name}' is not a valid FLARE site name", "Use letters, digits, '-', '_'.")
    known = {"org", "data", "resources", "synthetic", "authorization", "privacy"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(source, unknown[0], "unknown key", f"Allowed top-level keys: site, {', '.join(sorted(known))}.")
    org = raw.get("org")
    if not isinstance(org, str) or not ORG_RE.match(org):
        raise _fail(source, "org", f"{org!r} is not a valid FLARE org", "Use letters, digits and '_' only.")
    data_raw = dict(raw.get("data") or {})
    if "dir" not in data_raw:
        raise _fail(source, "data.dir", "missing", "Set the folder holding the manifest and DICOM files.")
    data_dir = Path(os.path.expanduser(str(data_raw["dir"]).format(site=name)))
    data_raw["dir"] = data_dir if data_dir.is_absolute() else (source.parent / data_dir).resolve()
    if data_raw.get("csv"):
        csv = Path(os.path.expanduser(str(data_raw["csv"])))
        data_raw["csv"] = csv if csv.is_absolute() else (source.parent / csv).resolve()
    data = _build(DataConfig, data_raw, source, "data",
                  {"label_map": _label_map, "hu_offset": _finite, "hu_scale": _positive(float)})  # fmt: skip
    resources = _build(ResourceConfig, raw.get("resources") or {}, source, "resources", {"num_threads": _positive(int)})
    if resources.device not in ("cpu", "cuda") and not resources.device.startswith("cuda:"):
        raise _fail(source, "resources.device", f"{resources.device!r} unknown", "Use 'cpu', 'cuda' or 'cuda:N'.")
    authorization = _build(
        AuthorizationConfig,
        raw.get("authorization") or {},
        source,
        "authorization",
        {"submit_roles": _roles, "allow_custom_code": _bool},
    )
    privacy = _build(
        PrivacyConfig,
        raw.get("privacy") or {},
        source,
        "privacy",
        {
            "require_dp": _bool,
            "max_epsilon": _optional_positive,
            "delta": _open_fraction,
            "min_noise_multiplier": _non_negative,
            "max_clip_norm": _optional_positive,
        },
    )
    synthetic = None
    if raw.get("synthetic") is not None:
        synthetic = _build(
            SyntheticProfile,
            raw["synthetic"],
            source,
            "synthetic",
            {
                "patients": _positive(int),
                "slices_per_patient": _positive(int),
                "noise_hu": float,
                "hu_offset": float,
                "lesion_contrast_hu": float,
                "lesion_radius": _radius,
                "lesions_max": _positive(int),
                "prevalence": _fraction,
                "val_fraction": _fraction,
            },
        )
    return SiteConfig(
        name=name,
        org=org,
        data=data,
        resources=resources,
        synthetic=synthetic,
        source=source,
        authorization=authorization,
        privacy=privacy,
    )


def site_config_dict(cfg: SiteConfig) -> dict:
    """The resolved config as plain YAML-able data (absolute data path), as a site's kit carries it."""
    out = {"site": cfg.name, "org": cfg.org}
    out["data"] = {"dir": str(cfg.data.dir), "manifest": cfg.data.manifest, "modality": cfg.data.modality}
    if cfg.data.label_map != {1: 1}:
        out["data"]["label_map"] = dict(cfg.data.label_map)
    if (cfg.data.hu_offset, cfg.data.hu_scale) != (0.0, 1.0):
        out["data"].update(hu_offset=cfg.data.hu_offset, hu_scale=cfg.data.hu_scale)
    if cfg.data.center is not None:
        out["data"]["center"] = cfg.data.center
    if cfg.data.csv is not None:
        out["data"]["csv"] = str(cfg.data.csv)
    out["resources"] = asdict(cfg.resources)
    auth = asdict(cfg.authorization)
    out["authorization"] = {**auth, "submit_roles": list(auth["submit_roles"])}
    out["privacy"] = asdict(cfg.privacy)
    if cfg.synthetic is not None:
        syn = asdict(cfg.synthetic)
        out["synthetic"] = {**syn, "lesion_radius": list(syn["lesion_radius"])}
    return out


def load_site_configs(config_dir: str | Path) -> dict[str, SiteConfig]:
    """Load every `<site>.yaml` in `config_dir` merged over `_defaults.yaml`, sorted by site name."""
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigError(f"site config folder {config_dir} does not exist; point --site-configs at it")
    defaults_path = config_dir / DEFAULTS_FILE
    defaults = read_yaml_mapping(defaults_path) if defaults_path.exists() else {}
    sites: dict[str, SiteConfig] = {}
    for path in sorted(config_dir.glob("*.y*ml")):
        if path.name.startswith("_"):
            continue
        cfg = parse_site_config(_merge(defaults, read_yaml_mapping(path)), path)
        if cfg.name in sites:
            raise ConfigError(f"{path}: site '{cfg.name}' is also defined in {sites[cfg.name].source}")
        sites[cfg.name] = cfg
    if not sites:
        raise ConfigError(f"{config_dir}: no site configs (<site>.yaml) found")
    return dict(sorted(sites.items()))


def load_site_config(site: str, config_dir: str | Path | None = None) -> SiteConfig:
    """Resolve one site's config from an explicit folder, else from $CONSORTIUM_SITE_CONFIGS."""
    config_dir = config_dir or os.environ.get(ENV_SITE_CONFIG_DIR)
    if not config_dir:
        raise ConfigError(f"site '{site}' has no config: set {ENV_SITE_CONFIG_DIR} to the folder holding {site}.yaml")
    sites = load_site_configs(config_dir)
    if site not in sites:
        raise ConfigError(f"site '{site}' has no config in {config_dir}; add {site}.yaml (known: {', '.join(sites)})")
    return sites[site]


def require_data_dirs(sites: dict[str, SiteConfig]) -> None:
    """Refuse to start sites whose data folder is missing, naming the config file and field."""
    for cfg in sites.values():
        if not cfg.data.dir.is_dir():
            hint = "run `consortium data synth`" if cfg.synthetic else "point it at the folder with your DICOM files"
            raise _fail(cfg.source, "data.dir", f"folder {cfg.data.dir} does not exist", f"Fix: {hint}.")
