"""Site configs from disk: merge `_defaults.yaml`, validate each hospital's file, find one site's config."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from consortium.config.convert import (
    _bool,
    _build,
    _fail,
    _finite,
    _fraction,
    _job_hashes,
    _label_map,
    _merge,
    _non_negative,
    _open_fraction,
    _optional_positive,
    _phrases,
    _positive,
    _radius,
    _roles,
    read_yaml_mapping,
)
from consortium.config.site import (
    ORG_RE,
    SITE_NAME_RE,
    AuthorizationConfig,
    ConfigError,
    DataConfig,
    PrivacyBudget,
    PrivacyConfig,
    ResourceConfig,
    SiteConfig,
    SyntheticProfile,
)
from consortium.constants import ENV_SITE_CONFIG_DIR

DEFAULTS_FILE = "_defaults.yaml"


def parse_site_config(raw: dict, source: Path) -> SiteConfig:
    """Validate one merged site mapping (defaults already applied) into a SiteConfig."""
    raw = dict(raw)
    name = str(raw.pop("site", source.stem))
    if name != source.stem:
        raise _fail(source, "site", f"'{name}' differs from the file name", f"Rename the file to {name}.yaml.")
    if not SITE_NAME_RE.match(name):
        raise _fail(source, "site", f"'{name}' is not a valid FLARE site name", "Use letters, digits, '-', '_'.")
    known = {"org", "data", "resources", "synthetic", "authorization", "privacy", "approved_purposes", "approved_jobs"}
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
    privacy_raw = dict(raw.get("privacy") or {}) if isinstance(raw.get("privacy"), dict) else raw.get("privacy")
    if isinstance(privacy_raw, dict) and privacy_raw.get("budget") is not None:  # the site's total across jobs
        budget_fields = {"epsilon": lambda v: _finite(_positive(float)(v)), "delta": _open_fraction}
        privacy_raw["budget"] = _build(PrivacyBudget, privacy_raw["budget"], source, "privacy.budget", budget_fields)
    privacy = _build(
        PrivacyConfig,
        privacy_raw or {},
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
    approvals = {}
    for key, conv in (("approved_purposes", _phrases), ("approved_jobs", _job_hashes)):
        try:
            approvals[key] = conv(raw[key] if raw.get(key) is not None else [])
        except ValueError as exc:
            fix = "See docs/deployment.md#governance."
            raise _fail(source, key, f"invalid value {raw[key]!r} ({exc})", fix) from None
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
        **approvals,
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
    out["approved_purposes"] = list(cfg.approved_purposes)
    if cfg.approved_jobs:
        out["approved_jobs"] = list(cfg.approved_jobs)
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
