"""Reading config files and converting their values: YAML with one-line errors, mappings into dataclasses
refusing unknown keys, and the value converters whose errors name the field."""

from __future__ import annotations

import copy
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from consortium.config.site import ROLES, ConfigError


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




def _phrases(value) -> tuple[str, ...]:
    """A list of phrases on one line each (a hospital's approved purposes), none twice."""
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list, e.g. [lesion segmentation research]")
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip() or "\n" in item:
            raise ValueError(f"{item!r} is not a phrase on one line")
        if " ".join(item.split()) in out:
            raise ValueError(f"{item!r} is listed twice")
        out.append(" ".join(item.split()))
    return tuple(out)


def _job_hashes(value) -> tuple[str, ...]:
    """A list of job hashes (SHA-256, 64 hex digits) as `consortium job hash NAME` prints them."""
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of job hashes (`consortium job hash NAME` prints one)")
    out = []
    for item in value:
        text = str(item).strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError(f"{item!r} is not a job hash (64 hex digits; `consortium job hash NAME` prints one)")
        out.append(text)
    return tuple(dict.fromkeys(out))
