"""A generated hospital as a PACS exports it, for `consortium data index` (`data synth --layout pacs`).

Per patient one study with two series: an axial CT series of contiguous slices (the one to train on) and
a one-slice coronal localizer (which the index skips: not axial). Folders are patient/study/series with
files named IM0001... without extension (every fourth patient: `.dcm`); every third patient's series is
compressed losslessly (RLE, JPEG-LS or JPEG 2000 in turn); every fourth patient is scanned at twice the
resolution (0.4 mm, twice the pixels: the same anatomy), so a site has mixed sizes and spacings. Labels:
NIfTI volumes (labels/<SeriesInstanceUID>.nii.gz) for even patients, DICOM SEG objects inside the export
for odd ones. The last patient's NIfTI label is written with the wrong spacing: the index must refuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from consortium.data.codecs import COMPRESSIONS, compress_file
from consortium.data.dicom_io import SliceMeta, stable_uid, write_ct_slice

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def write_nifti(path: Path, masks: np.ndarray, first: SliceMeta, gap: float, *, spacing_scale: float = 1.0) -> None:
    """A NIfTI label volume on the series' grid: masks is (slices, rows, columns); voxel (i, j, k) is
    (column, row, slice), as DICOM-to-NIfTI converters write it; the affine maps it into RAS."""
    import nibabel as nib

    row_dir, col_dir = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    spacing = first.pixel_spacing_mm * spacing_scale
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * spacing, col_dir * spacing, normal * gap
    lps[:3, 3] = first.position
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(masks.transpose(2, 1, 0)).astype(np.uint8), ras), str(path))


def write_seg(path: Path, series_files: list[Path], masks: np.ndarray, series_uid: str) -> None:
    """A DICOM SEG (binary, one 'lesion' segment) drawn on the series; slices without lesion are left out."""
    import highdicom as hd

    sources = [pydicom.dcmread(f) for f in series_files]
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("108369006", "SCT", "Neoplasm"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_uid,
        series_number=100,
        sop_instance_uid=stable_uid(series_uid, "seg"),
        instance_number=1,
        manufacturer="consortium demo",
        manufacturer_model_name="annotator",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=True,
    )
    # highdicom stamps the wall clock; the generated cohort is deterministic: the series' own date and time
    date, time = sources[0].get("StudyDate", "20240101"), sources[0].get("StudyTime", "120000")
    seg.InstanceCreationDate = seg.ContentDate = date
    seg.InstanceCreationTime = seg.ContentTime = time
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def write_patient(out: Path, p: int, pid: str, slices: list[tuple[np.ndarray, np.ndarray]], meta: dict) -> dict:
    """Write one patient's study (series, localizer, label); returns what was written, for the manifest."""
    site, seed = meta["site"], meta["seed"]
    scale = 2 if p % 4 == 3 else 1  # every fourth patient: twice the resolution
    spacing, thickness = 0.8 / scale, 2.5
    study, series = stable_uid(site, seed, pid, "study"), stable_uid(site, seed, pid, "series")
    folder = out / "pacs" / f"PAT{p:04d}" / "STUDY1"
    ext = ".dcm" if p % 4 == 0 else ""
    files, metas = [], []
    for s, (hu, _) in enumerate(slices):
        if scale > 1:
            hu = np.kron(hu, np.ones((scale, scale), hu.dtype))
        m = SliceMeta(
            patient_id=pid, study_uid=study, series_uid=series, sop_uid=stable_uid(site, seed, pid, s),
            instance_number=len(slices) - s,  # numbered feet-first: the index must sort by position, not number
            manufacturer=meta["manufacturer"], institution=meta["institution"], pixel_spacing_mm=spacing,
            slice_thickness_mm=thickness, signed_storage=meta["signed"],
            position=(-0.5 * spacing * hu.shape[1], -0.5 * spacing * hu.shape[0], 100.0 + s * thickness),
        )  # fmt: skip
        path = folder / "SERIES1" / f"IM{s + 1:04d}{ext}"
        write_ct_slice(path, hu, m)
        files.append(path)
        metas.append(m)
    if p % 3 == 2:  # compressed series, each syntax in turn
        syntax = list(COMPRESSIONS)[(p // 3) % len(COMPRESSIONS)]
        if syntax != "jpeg2000" or min(slices[0][0].shape) * scale >= 32:
            for f in files:
                compress_file(f, f, syntax)
    scout = slices[0][0]
    write_ct_slice(
        folder / "SERIES2" / f"IM0001{ext}",
        scout,
        SliceMeta(patient_id=pid, study_uid=study, series_uid=stable_uid(site, seed, pid, "scout"),
                  sop_uid=stable_uid(site, seed, pid, "scout", 0), instance_number=1,
                  manufacturer=meta["manufacturer"], institution=meta["institution"], orientation=CORONAL,
                  position=(0.0, 0.0, 0.0), series_number=2, series_description="LOCALIZER"),
    )  # fmt: skip
    masks = np.stack([m for _, m in slices])
    if scale > 1:
        masks = np.stack([np.kron(m, np.ones((scale, scale), m.dtype)) for m in masks])
    if p % 2 == 0 or meta["last"]:
        label = out / "labels" / f"{series}.nii.gz"
        write_nifti(label, masks, metas[0], thickness, spacing_scale=1.5 if meta["last"] else 1.0)
        fmt = "nifti"
    else:
        label = folder / "SEG1" / f"SEG0001{ext}"
        write_seg(label, files, masks, stable_uid(site, seed, pid, "seg"))
        fmt = "seg"
    return {"files": files, "label": label, "label_format": fmt, "refused": meta["last"]}
