"""Read a site's manifest, check every file, and report what was skipped and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from consortium.config import SiteConfig
from consortium.data.dicom_io import check_ct_file

REQUIRED_COLUMNS = ("patient_id", "image", "label", "split")
SPLITS = ("train", "val")


class DataError(RuntimeError):
    """A site has no usable data; the message names the folder or file and how to fix it."""


@dataclass
class DataReport:
    """What a site found in its manifest: usable records per split, every skipped file with its reason,
    and what the usable images are like (sizes, pixel spacings, HU rescale), for `data check`."""

    site: str
    folder: Path
    usable: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # (rows, columns) -> slices
    spacings: Counter = field(default_factory=Counter)  # (row, column) spacing in mm -> slices
    rescales: Counter = field(default_factory=Counter)  # (slope, intercept) -> slices
    fields_mm: Counter = field(default_factory=Counter)  # (rows x row spacing, columns x column spacing) -> slices

    def summary(self) -> str:
        lines = [f"{self.site}: {self.usable['train']} train / {self.usable['val']} val slices usable in {self.folder}"]
        if self.sizes:
            lines.append("  sizes (rows x columns): " + _counts(self.sizes, lambda k: f"{k[0]} x {k[1]}"))
            lines.append("  pixel spacing (mm): " + _counts(self.spacings, lambda k: f"{k[0]:g} x {k[1]:g}"))
            lines.append("  HU rescale (slope, intercept): " + _counts(self.rescales, lambda k: f"{k[0]:g}, {k[1]:g}"))
        if self.skipped:
            reasons = Counter(_kind(reason) for _, reason in self.skipped)
            lines.append(f"  skipped {len(self.skipped)}: " + ", ".join(f"{n} x {r}" for r, n in reasons.items()))
            lines += [f"    {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "site": self.site,
            "folder": str(self.folder),
            "usable": dict(self.usable),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "warnings": list(self.warnings),
            "sizes": {f"{k[0]}x{k[1]}": n for k, n in self.sizes.items()},
            "spacings_mm": {f"{k[0]:g}x{k[1]:g}": n for k, n in self.spacings.items()},
        }


def _counts(counter: Counter, fmt) -> str:
    return ", ".join(f"{fmt(k)} ({n})" for k, n in counter.most_common())


def _kind(reason: str) -> str:
    """The kind of a skip reason, for the one-line tally (the full reasons are listed below it)."""
    return reason.split(":")[0].split(" (")[0]


def _check_label(record: dict, shape: tuple[int, ...], label_map: dict, header) -> str | None:
    from consortium.data.labels import LabelError, read_label

    if not Path(record["label"]).is_file():
        return "label file not found"
    try:
        mask = read_label(record, label_map, header)
    except LabelError as exc:
        return str(exc)
    except Exception as exc:
        return f"label unreadable ({type(exc).__name__}: {exc})"
    if mask.shape != shape:
        return f"label shape {mask.shape} differs from image shape {shape}"
    return None


def _check_header(path: Path, modality: str):
    """(reason or None, header) from the file's header only: pixel data is not decoded."""
    from pydicom.errors import InvalidDicomError

    from consortium.data.codecs import decode_problem

    if not path.is_file():
        return "file not found", None
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        return "not a DICOM file (no DICM preamble)", None
    except Exception as exc:
        return f"unreadable DICOM ({type(exc).__name__}: {exc})", None
    if getattr(ds, "Modality", None) != modality:
        return f"modality {getattr(ds, 'Modality', None)!r}, expected {modality!r}", None
    if "PixelData" not in ds:
        return "no pixel data", None
    return decode_problem(ds), ds


def read_label(record: dict, label_map: dict[int, int] | None = None) -> np.ndarray:
    """The label mask of one manifest record (a dict with `image`, `label` and optional `label_format`) as
    task classes, a 2D array in the image's (rows, columns) order: .npy, NIfTI or DICOM SEG (data.labels)."""
    from consortium.data.labels import read_label as read

    return read(record, label_map)


def read_manifest(cfg: SiteConfig) -> pd.DataFrame:
    path = cfg.manifest_path
    if not cfg.data.dir.is_dir():
        raise DataError(
            f"site '{cfg.name}': data folder {cfg.data.dir} does not exist. Run `consortium data synth` for "
            f"demo data, `consortium data index` for a PACS export, or set data.dir in {cfg.source}."
        )
    if not path.is_file():
        raise DataError(
            f"site '{cfg.name}': manifest {path} not found. Write it with `consortium data index DICOM_DIR "
            f"--labels LABEL_DIR --site {cfg.name}`, or set data.manifest in {cfg.source}."
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}")
    empty = [i + 2 for i, p in enumerate(df.patient_id) if not str(p).strip()]  # +2: header line, 1-based
    if empty:
        raise DataError(
            f"{path}: line(s) {empty[:5]} have an empty patient_id. Every slice needs its patient: the "
            "train/val split and per-patient DP accounting count patients. Fill it in or remove the rows."
        )
    both = set(df.loc[df.split == "train", "patient_id"]) & set(df.loc[df.split == "val", "patient_id"])
    if both:
        raise DataError(f"{path}: patient(s) {sorted(both)[:5]} appear in both train and val; split by patient")
    return df


def load_records(cfg: SiteConfig, *, decode: bool = True) -> tuple[dict[str, list[dict]], DataReport]:
    """Check every manifest row; return usable {split: [{image, label, label_format, patient_id}]} and the
    report. `decode=False` checks headers only (the loader decodes each slice once, and skips a slice whose
    pixels fail then); `data check` decodes, so that it lists every file a round would skip."""
    df = read_manifest(cfg)
    report = DataReport(site=cfg.name, folder=cfg.data.dir)
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    has_format = "label_format" in df.columns
    for row in df.itertuples(index=False):
        image, label = cfg.data.dir / row.image, cfg.data.dir / row.label
        if row.split not in SPLITS:
            report.skipped.append((row.image, f"split {row.split!r} is not one of {SPLITS}"))
            continue
        record = {"image": str(image), "label": str(label), "patient_id": row.patient_id}
        record["label_format"] = (row.label_format if has_format else "") or "npy"
        reason, ds = _check_header(image, cfg.data.modality)
        if reason is None and decode:
            reason = check_ct_file(image, cfg.data.modality)
        if reason is None:
            reason = _check_label(record, (int(ds.Rows), int(ds.Columns)), cfg.data.label_map, ds)
            if reason and row.label not in reason:
                reason = f"{reason}: {row.label}"
        if reason:
            report.skipped.append((row.image, reason))
            continue
        records[row.split].append(record)
        report.usable[row.split] += 1
        report.sizes[(int(ds.Rows), int(ds.Columns))] += 1
        spacing = tuple(round(float(v), 4) for v in getattr(ds, "PixelSpacing", (0, 0)))
        report.spacings[spacing] += 1
        report.fields_mm[(int(ds.Rows) * spacing[0], int(ds.Columns) * spacing[1])] += 1
        report.rescales[(float(getattr(ds, "RescaleSlope", 1)), float(getattr(ds, "RescaleIntercept", 0)))] += 1
    if not records["train"]:
        raise DataError(
            f"site '{cfg.name}': no usable train images in {cfg.data.dir} "
            f"({len(report.skipped)} skipped).\n{report.summary()}"
        )
    if not records["val"]:
        report.warnings.append(
            f"no usable val images: too few patients for a validation split; '{cfg.name}' trains on all its "
            "data and its validation scores are on its training data"
        )
    return records, report
