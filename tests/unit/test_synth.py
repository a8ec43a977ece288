"""Generated cohorts: real DICOM, deterministic from a seed, and non-IID as the site profiles document."""

import numpy as np
import pandas as pd
import pydicom
import pytest

from consortium.config import load_site_configs
from consortium.data.synth import generate_site
from tests.conftest import REPO


def _load(cfg):
    df = pd.read_csv(cfg.manifest_path)
    out = []
    for row in df.itertuples():
        ds = pydicom.dcmread(cfg.data.dir / row.image)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out.append((ds, hu, np.load(cfg.data.dir / row.label)))
    return df, out


def test_dicom_tags_and_hu(tiny_sites):
    df, slices = _load(tiny_sites["site-a"])
    ds, hu, mask = slices[0]
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
    assert ds.Modality == "CT" and ds.Manufacturer == "Acme Medical" and ds.InstitutionName == "Alpha Hospital"
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
    assert ds.PatientID == df.patient_id[0] and "Alpha" not in ds.PatientID  # pseudonymous
    assert len({s.SOPInstanceUID for s, _, _ in slices}) == len(slices)
    assert hu.min() >= -1024 and hu.max() > 500  # air and bone in Hounsfield units
    assert mask.shape == hu.shape and set(np.unique(mask)) <= {0, 1}
    other = pydicom.dcmread(tiny_sites["site-b"].data.dir / pd.read_csv(tiny_sites["site-b"].manifest_path).image[0])
    assert other.InstitutionName == "Beta Clinic" and other.StudyInstanceUID != ds.StudyInstanceUID


def test_deterministic_from_seed(tiny_sites, tmp_path):
    cfg = tiny_sites["site-a"]
    _, first = _load(cfg)
    generate_site(cfg, seed=0, size=32)
    _, again = _load(cfg)
    assert all(
        np.array_equal(a[1], b[1]) and a[0].SOPInstanceUID == b[0].SOPInstanceUID
        for a, b in zip(first, again, strict=True)
    )
    generate_site(cfg, seed=1, size=32)
    _, other = _load(cfg)
    assert not np.array_equal(first[0][1], other[0][1])


def test_split_is_by_patient(tiny_sites):
    df = pd.read_csv(tiny_sites["site-a"].manifest_path)
    assert set(df.split) == {"train", "val"}
    assert not set(df[df.split == "train"].patient_id) & set(df[df.split == "val"].patient_id)


@pytest.fixture(scope="module")
def demo_cohorts(tmp_path_factory):
    """The repository's three hospital profiles, generated small into a temp dir."""
    from dataclasses import replace

    root = tmp_path_factory.mktemp("demo")
    stats = {}
    for name, cfg in load_site_configs(REPO / "site_configs").items():
        cfg = replace(cfg, data=replace(cfg.data, dir=root / name))
        df, slices = _load_after(cfg)
        lesion = [hu[m > 0].mean() - np.median(hu[(m == 0) & (hu > 20) & (hu < 110)]) for _, hu, m in slices if m.any()]
        stats[name] = {
            "patients": df.patient_id.nunique(),
            "contrast": float(np.mean(lesion)),
            "area": float(np.mean([m.sum() for _, _, m in slices if m.any()])),
            "prevalence": float(np.mean([m.any() for _, _, m in slices])),
            "noise": float(np.mean([hu[:4, :4].std() for _, hu, _ in slices])),  # air corner: scanner noise only
        }
    return stats


def _load_after(cfg):
    generate_site(cfg, seed=0, size=64)
    return _load(cfg)


def test_sites_are_non_iid_as_documented(demo_cohorts):
    a, b, c = demo_cohorts["hospital-a"], demo_cohorts["hospital-b"], demo_cohorts["hospital-c"]
    assert a["patients"] > b["patients"] > c["patients"]  # different site sizes
    assert a["contrast"] < -20 and b["contrast"] < -10 and c["contrast"] > 20  # hypo- vs hyperdense lesions
    assert a["area"] < b["area"] < c["area"]  # lesion size grows a -> c
    assert a["prevalence"] > b["prevalence"] > c["prevalence"] - 0.15
    assert a["noise"] < b["noise"] < c["noise"]  # scanner noise
