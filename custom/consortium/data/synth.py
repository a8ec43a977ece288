"""Generate a deterministic, non-IID hospital cohort of CT slices with lesion masks.

Each slice shows a body outline, a spine, an abdominal organ with a few contrast-filled vessels
(unlabelled distractors) and zero or more lesions in the organ (the label). Hospitals differ by
their `synthetic` profile in site_configs/: scanner calibration offset and noise, lesion contrast
(hypo- or hyperdense), lesion size, prevalence and cohort size. See docs/data.md.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from consortium.config import SiteConfig, SyntheticProfile
from consortium.data.dicom_io import SliceMeta, stable_uid, write_ct_slice

AIR_HU, FAT_HU, TISSUE_HU, ORGAN_HU, VESSEL_HU, BONE_HU = -1000.0, -90.0, 35.0, 60.0, 170.0, 700.0


def _ellipse(shape, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    y, x = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    return ((x * c + y * s) / rx) ** 2 + ((-x * s + y * c) / ry) ** 2 <= 1.0


def _smooth_field(rng: np.random.Generator, size: int, scale: int = 8) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: coarse noise upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (scale + 1, scale + 1))
    grid = np.linspace(0, scale, size)
    i0 = np.clip(grid.astype(int), 0, scale - 1)
    f = grid - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def synth_slice(rng: np.random.Generator, profile: SyntheticProfile, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One slice: (HU image float32, lesion mask uint8), both `size` x `size`."""
    k = size / 64.0  # geometry is specified for 64 px and scales with the image
    shape = (size, size)
    hu = np.full(shape, AIR_HU, np.float32)
    cy, cx = size / 2 + rng.normal(0, 1.5 * k), size / 2 + rng.normal(0, 1.5 * k)
    ry, rx = rng.uniform(22, 26) * k, rng.uniform(27, 31) * k
    hu[_ellipse(shape, cy, cx, ry, rx)] = FAT_HU
    body = _ellipse(shape, cy, cx, ry - 2.5 * k, rx - 2.5 * k)
    hu[body] = TISSUE_HU + 10 * _smooth_field(rng, size)[body]
    hu[_ellipse(shape, cy + ry * 0.6, cx, 3.5 * k, 4.0 * k)] = BONE_HU
    oy, ox = cy - rng.uniform(0, 5) * k, cx - rng.uniform(6, 11) * k
    organ = _ellipse(shape, oy, ox, rng.uniform(11, 14) * k, rng.uniform(13, 17) * k, rng.uniform(-0.5, 0.5)) & body
    hu[organ] = ORGAN_HU + 8 * _smooth_field(rng, size, 6)[organ]
    inside = np.argwhere(organ)
    for _ in range(rng.integers(2, 5)):  # vessels: bright, small, round, not labelled
        vy, vx = inside[rng.integers(len(inside))]
        hu[_ellipse(shape, vy, vx, rng.uniform(1.2, 2.2) * k, rng.uniform(1.2, 2.2) * k) & organ] = VESSEL_HU
    mask = np.zeros(shape, bool)
    if rng.random() < profile.prevalence:
        for _ in range(rng.integers(1, profile.lesions_max + 1)):
            ly, lx = inside[rng.integers(len(inside))]
            r = rng.uniform(*profile.lesion_radius) * k
            lesion = _ellipse(shape, ly, lx, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, np.pi)) & organ
            hu[lesion] = ORGAN_HU + profile.lesion_contrast_hu + 6 * _smooth_field(rng, size, 4)[lesion]
            mask |= lesion
    tissue = hu > AIR_HU + 1
    hu[tissue] += profile.hu_offset  # scanner calibration drift
    hu += rng.normal(0, profile.noise_hu, shape).astype(np.float32)  # scanner noise
    return np.clip(hu, -1024, 3000), mask.astype(np.uint8)


def site_seed(seed: int, site: str) -> int:
    """Per-site seed that depends on the site's name, not its position in the consortium."""
    return (seed * 1_000_003 + zlib.crc32(site.encode())) % (2**32)


def generate_site(
    cfg: SiteConfig, *, seed: int = 0, size: int = 64, patients: int | None = None, layout: str = "slices"
) -> pd.DataFrame:
    """Write one hospital's DICOM slices, label masks and manifest; return the manifest.

    layout "slices": one file per slice and a .npy mask each, listed in a manifest written here; "pacs": a
    PACS-like export with NIfTI and DICOM SEG labels (data/pacs_synth.py), indexed by `data index`."""
    if layout not in ("slices", "pacs"):
        raise ValueError(f"layout {layout!r}: use 'slices' or 'pacs'")
    profile = cfg.synthetic
    if profile is None:
        raise ValueError(f"{cfg.source}: site '{cfg.name}' has no 'synthetic' section; it uses its own data")
    n_patients = patients or profile.patients
    out = cfg.data.dir
    rng = np.random.default_rng(site_seed(seed, cfg.name))
    n_val = max(1, round(n_patients * profile.val_fraction))
    val_ids = set(rng.permutation(n_patients)[:n_val].tolist())
    signed = zlib.crc32(profile.manufacturer.encode()) % 2 == 1  # vendors store pixels differently
    rows = []
    meta = {"site": cfg.name, "seed": seed, "manufacturer": profile.manufacturer,
            "institution": profile.institution, "signed": signed}  # fmt: skip
    for p in range(n_patients):
        pid = f"{cfg.name[:1].upper()}{zlib.crc32(cfg.name.encode()) % 1000:03d}-{p:04d}"
        if layout == "pacs":
            from consortium.data.pacs_synth import write_patient

            slices = [synth_slice(rng, profile, size) for _ in range(profile.slices_per_patient)]
            write_patient(out, p, pid, slices, {**meta, "last": p == n_patients - 1 and n_patients > 3})
            continue
        study = stable_uid(cfg.name, seed, pid, "study")
        series = stable_uid(cfg.name, seed, pid, "series")
        for s in range(profile.slices_per_patient):
            hu, mask = synth_slice(rng, profile, size)
            meta = SliceMeta(
                patient_id=pid,
                study_uid=study,
                series_uid=series,
                sop_uid=stable_uid(cfg.name, seed, pid, s),
                instance_number=s + 1,
                manufacturer=profile.manufacturer,
                institution=profile.institution,
                signed_storage=signed,
            )
            image = Path("images") / pid / f"slice_{s:03d}.dcm"
            label = Path("labels") / pid / f"slice_{s:03d}.npy"
            write_ct_slice(out / image, hu, meta)
            (out / label).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / label, mask)
            split = "val" if p in val_ids else "train"
            rows.append({"patient_id": pid, "image": image.as_posix(), "label": label.as_posix(), "split": split})
    if layout == "pacs":
        from consortium.data.index import index_site

        index_site(out / "pacs", out / "labels", site=cfg.name, data_dir=out, manifest=cfg.manifest_path,
                   modality=cfg.data.modality, label_map=cfg.data.label_map, seed=seed,
                   val_fraction=profile.val_fraction, progress=lambda _: None)  # fmt: skip
        return pd.read_csv(cfg.manifest_path, dtype=str, keep_default_na=False)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(cfg.manifest_path, index=False)
    return manifest
