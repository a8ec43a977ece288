"""Shared fixtures: tiny site configs and generated DICOM cohorts in a temp dir."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from consortium.config import load_site_configs

REPO = Path(__file__).resolve().parents[1]


# what every job states (provisioning/consortium.yaml charter): a purpose of the charter and the agreement's version
JOB_GOVERNANCE = 'purpose: lesion segmentation research\nagreement: "1.0"\n'
# the charter's purposes (provisioning/consortium.yaml) the tiny hospitals approved (site config approved_purposes)
APPROVED_PURPOSES = ("lesion segmentation research", "data quality assessment")


def write_site_configs(folder: Path, sites: dict[str, str]) -> Path:
    """Write _defaults.yaml (data under folder/data/<site>) and one YAML per site."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_defaults.yaml").write_text(
        "data:\n  dir: data/{site}\n  manifest: manifest.csv\n  modality: CT\nresources:\n  num_threads: 1\n"
        f"approved_purposes: [{', '.join(APPROVED_PURPOSES)}]\n"
    )
    for name, body in sites.items():
        (folder / f"{name}.yaml").write_text(textwrap.dedent(body))
    return folder


TINY_A = """
org: site_a
synthetic:
  institution: Alpha Hospital
  manufacturer: Acme Medical
  patients: 8
  noise_hu: 8
  lesion_contrast_hu: -60
  lesion_radius: [4.0, 7.0]
  prevalence: 0.9
"""
TINY_B = """
org: site_b
synthetic:
  institution: Beta Clinic
  manufacturer: Borealis Imaging
  patients: 6
  noise_hu: 20
  hu_offset: 20
  lesion_contrast_hu: 50
  lesion_radius: [5.0, 8.0]
  prevalence: 0.6
"""


def make_sites(folder: Path, *, size: int, patients: int | None = None, slices: int = 2, layouts=None) -> dict:
    """Write the two tiny hospitals' configs and generate their data; returns {name: SiteConfig}.

    `layouts`: {site: "slices" | "pacs"}; by default site-b is a PACS-like export (multi-slice series in
    patient/study/series folders, some compressed, mixed sizes and spacings, NIfTI and DICOM SEG labels,
    localizers and one misfit label the index skips) indexed by `data index`, so every test that trains
    on the tiny sites also runs the real-hospital data path."""
    layouts = {"site-b": "pacs"} if layouts is None else layouts
    from consortium.data.synth import generate_site

    bodies = {"site-a": TINY_A, "site-b": TINY_B}
    bodies = {k: v.replace("  patients:", f"  slices_per_patient: {slices}\n  patients:") for k, v in bodies.items()}
    sites = load_site_configs(write_site_configs(folder, bodies))
    for cfg in sites.values():
        generate_site(cfg, seed=0, size=size, patients=patients, layout=layouts.get(cfg.name, "slices"))
    return sites


@pytest.fixture
def tiny_sites(tmp_path):
    """Two small generated hospitals (32 px); returns {name: SiteConfig} with data written."""
    return make_sites(tmp_path / "site_configs", size=32)


@pytest.fixture
def small_sites(tmp_path):
    """Two generated hospitals big enough to learn from in a few rounds (64 px, 10 patients x 4 slices)."""
    return make_sites(tmp_path / "site_configs", size=64, patients=10, slices=4)
