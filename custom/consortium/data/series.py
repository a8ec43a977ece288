"""Group a folder tree of DICOM files into series, from headers only, and keep the series a task can use.

A PACS export has any layout (patient/study/series folders, files without extension, DICOMDIR, reports,
several series per study). Files are grouped by SeriesInstanceUID and sorted by their position along the
slice normal (ImagePositionPatient and ImageOrientationPatient), never by file name or InstanceNumber.
Every file and series that is not used is kept in a list with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from consortium.data.codecs import decode_problem
from consortium.data.geometry import GeometryError, SliceGeometry, axial_cosine

AXIAL_MIN_COSINE = 0.9  # slice normal within ~25 degrees of the head-foot axis: an axial series
GAP_TOLERANCE = 0.1  # slice gaps may differ by 10% of the median gap (rounding in IPP); more is a hole
NOT_IMAGES = {"DICOMDIR"}  # media directories list files, they hold no image


@dataclass
class Slice:
    path: Path
    header: pydicom.Dataset
    geometry: SliceGeometry


@dataclass
class Series:
    uid: str
    patient_id: str
    study_uid: str
    modality: str
    description: str
    slices: list[Slice] = field(default_factory=list)
    problem: str | None = None  # why the series is not used; None: usable

    @property
    def first(self) -> Path:
        return self.slices[0].path if self.slices else Path("?")

    def where(self) -> str:
        folders = sorted({str(s.path.parent) for s in self.slices})
        return folders[0] + (f" (+{len(folders) - 1} folders)" if len(folders) > 1 else "")

    def gaps(self) -> np.ndarray:
        return np.diff([s.geometry.along_normal() for s in self.slices])


@dataclass
class Scan:
    """What a folder holds: series by UID, DICOM SEG objects, and every file not used with its reason."""

    series: dict[str, Series] = field(default_factory=dict)
    segs: list[Path] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    files_seen: int = 0


def _walk(root: Path):
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(folder) / name


def scan_folder(root: Path, *, progress: Callable[[str], None] = print, every: int = 500) -> Scan:
    """Read the headers of every file under `root` (pixel data is not read) and group them by series."""
    scan = Scan()
    for path in _walk(root):
        scan.files_seen += 1
        if scan.files_seen % every == 0:
            progress(f"  ... {scan.files_seen} files read, {len(scan.series)} series so far")
        rel = str(path.relative_to(root))
        if path.name.upper() in NOT_IMAGES:
            scan.skipped_files.append((rel, "DICOMDIR (a media directory, not an image)"))
            continue
        try:
            # defer_size: large values (the pixel data) are skipped, not read; the tag stays visible
            ds = pydicom.dcmread(path, defer_size=1024)
        except InvalidDicomError:
            scan.skipped_files.append((rel, "not a DICOM file"))
            continue
        except Exception as exc:  # truncated or corrupt headers raise many different errors
            scan.skipped_files.append((rel, f"unreadable DICOM header ({type(exc).__name__}: {exc})"))
            continue
        modality = str(getattr(ds, "Modality", "") or "")
        if modality == "SEG":
            scan.segs.append(path)
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            scan.skipped_files.append((rel, "no SeriesInstanceUID"))
            continue
        if "PixelData" not in ds:
            scan.skipped_files.append((rel, f"no pixel data ({modality or 'no modality'}: a report or object)"))
            continue
        problem = decode_problem(ds)
        if problem:
            scan.skipped_files.append((rel, problem))
            continue
        try:
            geometry = SliceGeometry.from_header(ds)
        except GeometryError as exc:
            scan.skipped_files.append((rel, f"no slice geometry: {exc}"))
            continue
        series = scan.series.get(uid)
        if series is None:
            series = scan.series[uid] = Series(
                uid=uid,
                patient_id=str(getattr(ds, "PatientID", "") or "").strip(),
                study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
                modality=modality,
                description=str(getattr(ds, "SeriesDescription", "") or ""),
            )
        series.slices.append(Slice(path, ds, geometry))
    return scan


def check_series(series: Series, *, modality: str, min_slices: int) -> str | None:
    """Sort the series' slices along their normal; return why it cannot be used, or None."""
    if series.modality != modality:
        return f"modality {series.modality or 'missing'}, the task needs {modality}"
    if not series.patient_id:
        return "empty PatientID: every slice needs a patient (train/val split and per-patient DP accounting)"
    others = {str(s.header.PatientID).strip() for s in series.slices} - {series.patient_id}
    if others:
        return f"files of patients {sorted(others | {series.patient_id})[:3]} share one SeriesInstanceUID"
    first = series.slices[0].geometry
    for s in series.slices[1:]:
        if not s.geometry.same_plane_kind(first):
            return (
                f"inconsistent slices: {series.slices[0].path.name} is {first.shape} at {first.spacing} mm, "
                f"{s.path.name} is {s.geometry.shape} at {s.geometry.spacing} mm (or another orientation)"
            )
    if axial_cosine(first) < AXIAL_MIN_COSINE:
        return f"not axial (slice normal {np.round(first.normal, 2).tolist()}); the task trains on axial slices"
    series.slices.sort(key=lambda s: s.geometry.along_normal())
    if len(series.slices) < min_slices:
        return f"{len(series.slices)} slice(s), fewer than the {min_slices} required (--min-slices)"
    gaps = series.gaps()
    if len(gaps):
        if gaps.min() < 1e-3:
            i = int(np.argmin(gaps))
            a, b = series.slices[i].path.name, series.slices[i + 1].path.name
            return f"two slices at the same position ({a}, {b}): a duplicate or a second acquisition"
        median = float(np.median(gaps))
        if np.abs(gaps - median).max() > GAP_TOLERANCE * median:
            return (
                f"inconsistent slice spacing: gaps from {gaps.min():.3g} to {gaps.max():.3g} mm along the normal "
                "(missing slices?)"
            )
    return None
