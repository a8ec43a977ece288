"""Read a site's manifest, check every file, and report what was skipped and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from consortium.config import SiteConfig
from consortium.data.dicom_io import check_ct_file

REQUIRED_COLUMNS = ("patient_id", "image", "label", "split")
SPLITS = ("train", "val")


class DataError(RuntimeError):
    """A site has no usable data; the message names the folder or file and how to fix it."""


@dataclass
class DataReport:
    """What a site found in its manifest: usable records per split and every skipped file with its reason."""

    site: str
    folder: Path
    usable: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.site}: {self.usable['train']} train / {self.usable['val']} val slices usable in {self.folder}"]
        if self.skipped:
            reasons = Counter(reason.split(" (")[0] for _, reason in self.skipped)
            lines.append(f"  skipped {len(self.skipped)}: " + ", ".join(f"{n} x {r}" for r, n in reasons.items()))
            lines += [f"    {name}: {reason}" for name, reason in self.skipped[:10]]
            if len(self.skipped) > 10:
                lines.append(f"    ... and {len(self.skipped) - 10} more")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "site": self.site,
            "folder": str(self.folder),
            "usable": dict(self.usable),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }


def _check_label(path: Path, shape: tuple[int, ...]) -> str | None:
    if not path.is_file():
        return "label file not found"
    try:
        mask = np.load(path, allow_pickle=False)
    except Exception as exc:
        return f"label unreadable ({type(exc).__name__})"
    if mask.shape != shape:
        return f"label shape {mask.shape} differs from image shape {shape}"
    if not np.isin(mask, (0, 1)).all():
        return "label has values other than 0 and 1"
    return None


def read_label(record: dict) -> np.ndarray:
    """The label mask of one manifest record (a dict with at least `label`), as a 2D array in the
    image's (rows, columns) order. Today: a per-slice .npy; NIfTI and DICOM SEG volumes are added here."""
    return np.load(record["label"], allow_pickle=False)


def read_manifest(cfg: SiteConfig) -> pd.DataFrame:
    path = cfg.manifest_path
    if not cfg.data.dir.is_dir():
        raise DataError(
            f"site '{cfg.name}': data folder {cfg.data.dir} does not exist. Run `consortium data synth` for "
            f"demo data, or set data.dir in {cfg.source} to the folder with your DICOM files and manifest."
        )
    if not path.is_file():
        raise DataError(f"site '{cfg.name}': manifest {path} not found. Set data.manifest in {cfg.source}.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}")
    both = set(df.loc[df.split == "train", "patient_id"]) & set(df.loc[df.split == "val", "patient_id"])
    if both:
        raise DataError(f"{path}: patient(s) {sorted(both)[:5]} appear in both train and val; split by patient")
    return df


def load_records(cfg: SiteConfig) -> tuple[dict[str, list[dict]], DataReport]:
    """Check every manifest row; return usable {split: [{image, label, patient_id}]} and the report."""
    import pydicom  # local: only sites that load data need it at import time

    df = read_manifest(cfg)
    report = DataReport(site=cfg.name, folder=cfg.data.dir)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in df.itertuples(index=False):
        image, label = cfg.data.dir / row.image, cfg.data.dir / row.label
        if row.split not in SPLITS:
            report.skipped.append((row.image, f"split {row.split!r} is not one of {SPLITS}"))
            continue
        reason = check_ct_file(image, cfg.data.modality)
        if reason is None:
            ds = pydicom.dcmread(image, stop_before_pixels=True)
            reason = _check_label(label, (int(ds.Rows), int(ds.Columns)))
            if reason:
                reason = f"{reason}: {row.label}"
        if reason:
            report.skipped.append((row.image, reason))
            continue
        records[row.split].append({"image": str(image), "label": str(label), "patient_id": row.patient_id})
        report.usable[row.split] += 1
    for split in SPLITS:
        if not records[split]:
            raise DataError(
                f"site '{cfg.name}': no usable {split} images in {cfg.data.dir} "
                f"({len(report.skipped)} skipped).\n{report.summary()}"
            )
    return records, report
