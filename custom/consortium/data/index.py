"""`consortium data index`: a site's manifest from its PACS export and label folder, from headers only.

The manifest lists one row per usable slice: a pseudonymous patient, the DICOM file, its label file and
format, the train/val split (by patient). `index.json` beside it keeps the series geometry and every file
or series left out, with the reason. Patient names and IDs are not written anywhere: patients are keyed by
a salted hash whose salt stays in the site's data folder. Pixel data is neither read nor copied.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from consortium.data.labels import LabelError, check_seg_geometry, label_format, map_values, read_raw, seg_series_uid
from consortium.data.pseudonyms import pseudonym, site_salt
from consortium.data.series import Series, check_series, scan_folder

MIN_PATIENTS_FOR_VAL = 3  # fewer: the site trains without a validation split (with a warning)


class IndexingError(ValueError):
    """Nothing usable was found, or an input is missing; the message names the folder or file."""


@dataclass
class IndexResult:
    site: str
    manifest: Path
    rows: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)  # one entry per usable series
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    skipped_series: list[tuple[str, str]] = field(default_factory=list)
    unused_labels: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_seen: int = 0

    def summary(self) -> str:
        patients = {r["patient_id"] for r in self.rows}
        by_split = Counter(r["split"] for r in self.rows)
        pat_split = Counter(s["split"] for s in {(r["patient_id"], r["split"]): r for r in self.rows}.values())
        studies = {s["study"] for s in self.series}
        lines = [
            f"{self.site}: {self.files_seen} files read; {len(patients)} patients, {len(studies)} studies, "
            f"{len(self.series)} series, {len(self.rows)} slices "
            f"(train {pat_split['train']} patients / {by_split['train']} slices, "
            f"val {pat_split['val']} / {by_split['val']})",
            f"  manifest: {self.manifest}",
        ]
        for title, items in (("files skipped", self.skipped_files), ("series skipped", self.skipped_series),
                             ("labels not used", self.unused_labels)):  # fmt: skip
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {name}: {reason}" for name, reason in items]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _read_mapping(path: Path) -> dict[str, Path]:
    if not path.is_file():
        raise IndexingError(f"label mapping file {path} not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"series_uid", "label"} <= set(df.columns):
        raise IndexingError(f"{path}: needs columns series_uid,label (label path relative to this file's folder)")
    return {r.series_uid: (path.parent / r.label).resolve() for r in df.itertuples()}


def _find_labels(labels_dir: Path | None, segs: list[Path], series: dict[str, Series], unused: list) -> dict:
    """{series uid: [label paths]} from SEG references, NIfTI names (<SeriesInstanceUID>.nii[.gz]) and
    per-slice masks (<SOPInstanceUID>.npy)."""
    found: dict[str, list[Path]] = {}
    by_sop = {str(s.header.SOPInstanceUID): uid for uid, ser in series.items() for s in ser.slices}
    candidates = list(segs)
    if labels_dir is not None:
        candidates += sorted(p for p in labels_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    npy: dict[str, int] = Counter()
    for path in candidates:
        fmt = label_format(path)
        if fmt == "seg":
            uid = seg_series_uid(path)
        elif fmt == "nifti":
            uid = path.name.split(".nii")[0]
        elif fmt == "npy":
            uid = by_sop.get(path.stem)
            if uid is not None:
                npy[uid] += 1
                found.setdefault(uid, [])
                if path.parent not in found[uid]:
                    found[uid].append(path.parent)
                continue
        else:
            unused.append((str(path), "not a label format this tool reads (.npy, .nii, .nii.gz, DICOM SEG)"))
            continue
        if uid in series:
            found.setdefault(uid, []).append(path)
        else:
            unused.append((str(path), f"matches no indexed series (looked for SeriesInstanceUID {uid})"))
    return found


def _check_label(label: Path, series: Series, label_map: dict) -> str:
    """Check the label against every slice; returns its format, raises LabelError naming both files."""
    fmt = "npy" if label.is_dir() else label_format(label)
    for s in series.slices:
        path = label / f"{s.header.SOPInstanceUID}.npy" if fmt == "npy" else label
        record = {"image": str(s.path), "label": str(path), "label_format": fmt}
        if fmt == "seg":
            check_seg_geometry(label, s.header)
        if fmt == "npy" and not path.is_file():
            raise LabelError(f"{label}: no mask {path.name} for {s.path}")
        values = read_raw(record, s.header)
        if values.shape != s.geometry.shape:
            raise LabelError(f"{path} does not fit {s.path}: shape {values.shape}, image {s.geometry.shape}")
        map_values(values, label_map, str(path))
    return fmt


def index_site(
    dicom_dir: Path,
    labels_dir: Path | None,
    *,
    site: str,
    data_dir: Path,
    manifest: Path,
    modality: str = "CT",
    label_map: dict | None = None,
    mapping: Path | None = None,
    min_slices: int = 1,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> IndexResult:
    """Index `dicom_dir` (and labels in `labels_dir`), write `manifest` and index.json; return the result."""
    if not dicom_dir.is_dir():
        raise IndexingError(f"DICOM folder {dicom_dir} does not exist")
    if labels_dir is not None and not labels_dir.is_dir():
        raise IndexingError(f"label folder {labels_dir} does not exist")
    if not 0 <= val_fraction < 1:
        raise IndexingError(f"--val-fraction {val_fraction} must be in [0, 1)")
    result = IndexResult(site=site, manifest=manifest)
    progress(f"{site}: reading DICOM headers under {dicom_dir} ...")
    scan = scan_folder(dicom_dir, progress=progress)
    result.files_seen, result.skipped_files = scan.files_seen, scan.skipped_files
    if not scan.series:
        raise IndexingError(
            f"{dicom_dir}: no DICOM image series found in {scan.files_seen} files"
            + (f" ({len(scan.skipped_files)} skipped, e.g. {scan.skipped_files[0][0]}: {scan.skipped_files[0][1]})"
               if scan.skipped_files else "")  # fmt: skip
        )
    usable = {}
    for uid, series in scan.series.items():
        problem = check_series(series, modality=modality, min_slices=min_slices)
        if problem:
            result.skipped_series.append((f"{series.where()} [{series.description or 'no description'}]", problem))
        else:
            usable[uid] = series
    explicit = _read_mapping(mapping) if mapping else None
    labels = _find_labels(labels_dir, scan.segs, usable, result.unused_labels) if explicit is None else {}
    salt = site_salt(data_dir)
    kept = []
    for uid, series in usable.items():
        where = f"{series.where()} [{series.description or 'no description'}]"
        if explicit is not None:
            if uid not in explicit:
                result.skipped_series.append((where, f"not in the label mapping file {mapping}"))
                continue
            candidates = [explicit[uid]]
        else:
            candidates = labels.get(uid, [])
        if not candidates:
            result.skipped_series.append((where, "no label found (DICOM SEG referencing it, <SeriesInstanceUID>.nii.gz "
                                                 "or <SOPInstanceUID>.npy in the label folder, or a mapping file)"))
            continue
        if len(candidates) > 1:
            names = ", ".join(str(c) for c in candidates[:3])
            result.skipped_series.append((where, f"several labels match ({names}); keep one or use --mapping"))
            continue
        try:
            fmt = _check_label(candidates[0], series, label_map or {1: 1})
        except (LabelError, OSError) as exc:
            result.skipped_series.append((where, f"label refused: {exc}"))
            continue
        kept.append((series, candidates[0], fmt))
    if not kept:
        _write_index(result, dicom_dir, labels_dir, manifest.parent / "index.json", files_in_series=0)
        raise IndexingError(
            f"{dicom_dir}: no series with a usable label (lists: {manifest.parent / 'index.json'}).\n{result.summary()}"
        )
    # the split hashes the site's own patient IDs with the seed (not the salted pseudonyms): the same export
    # indexed again, even with a new salt, gives the same split; the order never leaves the site
    by_id = {s.patient_id: pseudonym(salt, "P", s.patient_id) for s, _, _ in kept}
    patients = sorted(by_id.values())
    order = [by_id[i] for i in sorted(by_id, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())]
    n_val = round(len(patients) * val_fraction)
    if val_fraction > 0 and len(patients) < MIN_PATIENTS_FOR_VAL:
        n_val = 0
        result.warnings.append(f"only {len(patients)} patient(s): too few for a validation split; the site trains "
                               "on all of them and validates on its training data")  # fmt: skip
    elif val_fraction > 0:
        n_val = max(1, n_val)
    val = set(order[:n_val])
    for series, label, fmt in kept:
        patient = pseudonym(salt, "P", series.patient_id)
        split = "val" if patient in val else "train"
        geom = series.slices[0].geometry
        gaps = series.gaps()
        series_id = pseudonym(salt, "S", series.uid)
        result.series.append({
            "series": series_id, "patient_id": patient, "study": pseudonym(salt, "T", series.study_uid),
            "split": split, "slices": len(series.slices), "rows": geom.shape[0], "columns": geom.shape[1],
            "pixel_spacing_mm": list(geom.spacing),
            "slice_gap_mm": round(float(gaps.mean()), 4) if len(gaps) else None,
            "manufacturer": str(getattr(series.slices[0].header, "Manufacturer", "") or ""),
            "model": str(getattr(series.slices[0].header, "ManufacturerModelName", "") or ""),
            "transfer_syntax": str(series.slices[0].header.file_meta.TransferSyntaxUID),
            "label": str(label), "label_format": fmt,
        })  # fmt: skip
        for i, s in enumerate(series.slices):
            path = label / f"{s.header.SOPInstanceUID}.npy" if fmt == "npy" else label
            result.rows.append({"patient_id": patient, "image": str(s.path), "label": str(path),
                                "label_format": fmt, "split": split, "series": series_id, "slice": i})  # fmt: skip
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(result.rows).to_csv(manifest, index=False)
    _write_index(result, dicom_dir, labels_dir, manifest.parent / "index.json", files_in_series=len(result.rows))
    return result


def _write_index(result: IndexResult, dicom_dir: Path, labels_dir: Path | None, path: Path, files_in_series: int):
    """index.json: what was used (series geometry) and every file, series and label left out, with reasons."""
    info = {
        "site": result.site, "dicom_dir": str(dicom_dir), "labels_dir": str(labels_dir) if labels_dir else None,
        "files_seen": result.files_seen, "slices_used": files_in_series, "series": result.series,
        "skipped_files": [{"file": f, "reason": r} for f, r in result.skipped_files],
        "skipped_series": [{"series": f, "reason": r} for f, r in result.skipped_series],
        "unused_labels": [{"file": f, "reason": r} for f, r in result.unused_labels],
        "warnings": result.warnings,
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1))
