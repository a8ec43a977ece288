"""Typed site configs: load YAML, merge `_defaults.yaml`, validate with errors naming file and field.

site.py holds the dataclasses, convert.py the YAML reading and value converters, load.py the loading."""

from consortium.config.convert import read_yaml_mapping
from consortium.config.load import (
    DEFAULTS_FILE,
    load_site_config,
    load_site_configs,
    parse_site_config,
    require_data_dirs,
    site_config_dict,
)
from consortium.config.site import (
    ORG_RE,
    ROLES,
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

__all__ = [
    "DEFAULTS_FILE",
    "ORG_RE",
    "ROLES",
    "SITE_NAME_RE",
    "AuthorizationConfig",
    "ConfigError",
    "DataConfig",
    "PrivacyBudget",
    "PrivacyConfig",
    "ResourceConfig",
    "SiteConfig",
    "SyntheticProfile",
    "load_site_config",
    "load_site_configs",
    "parse_site_config",
    "read_yaml_mapping",
    "require_data_dirs",
    "site_config_dict",
]
