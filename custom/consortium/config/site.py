"""Typed site configs: one frozen dataclass per section of a hospital's file (site_configs/<site>.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

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
class PrivacyBudget:
    """The site's total (epsilon, delta) across all jobs, composed by the ledger in its workspace (docs/privacy.md:
    Budgets across jobs): a job whose planned spend exceeds what is left is refused before it trains."""

    epsilon: float
    delta: float


@dataclass(frozen=True)
class PrivacyConfig:
    """The site's privacy floor, enforced at the site (executor and the kit's local/privacy.json scope)."""

    require_dp: bool = False  # refuse jobs that do not train with DP-SGD here
    max_epsilon: float | None = None  # refuse a round that would take this job's epsilon above it (None: no cap)
    delta: float = 1e-5  # jobs must use this delta or a smaller one
    min_noise_multiplier: float = 0.0  # refuse DP-SGD with less noise than this
    max_clip_norm: float | None = None  # refuse DP-SGD with a larger per-sample clipping bound (None: no cap)
    budget: PrivacyBudget | None = None  # total over all jobs at this site (None: no cross-job cap)


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
    # governance (docs/deployment.md#governance): the charter's purposes this hospital approved, and optionally the
    # exact jobs (`consortium job hash NAME`); its kit refuses every other job when it is deployed there
    approved_purposes: tuple[str, ...] = ()
    approved_jobs: tuple[str, ...] = ()

    @property
    def manifest_path(self) -> Path:
        return self.data.dir / self.data.manifest


