"""Label masks as hospitals store them: per-slice .npy, NIfTI volumes (3D Slicer, ITK-SNAP), DICOM SEG.

A manifest row names its DICOM slice (`image`) and its label file (`label`, with `label_format`). Volume
labels are cut to the slice by geometry (NIfTI: the slice's pixel centres located in the volume, see
geometry.py) or by the slice's SOPInstanceUID (DICOM SEG), so a label is never matched by file order.
Stored values (voxel values, SEG segment numbers) become the task's classes through the site config's
`data.label_map`; a value it does not list is refused, not guessed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom

from consortium.data.geometry import GeometryError, SliceGeometry, locate_slice, nifti_affine_lps

FORMATS = ("npy", "nifti", "seg")
DEFAULT_LABEL_MAP = {1: 1}


class LabelError(ValueError):
    """A label cannot be used with its image; the message names the label file and what is wrong."""


def label_format(path: Path) -> str | None:
    """'npy', 'nifti', 'seg' (a DICOM Segmentation object), or None for anything else."""
    name = path.name.lower()
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:
        return None
    return "seg" if getattr(ds, "Modality", None) == "SEG" else None


@lru_cache(maxsize=4)  # a site loads the slices of one series one after the other
def _nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise LabelError(f"{path}: a label volume must be 3D, found shape {data.shape}")
    return data, nifti_affine_lps(img)


@lru_cache(maxsize=4)
def _seg(path: str):
    import highdicom as hd

    return hd.seg.segread(path)


def seg_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID a DICOM SEG was drawn on (its ReferencedSeriesSequence)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    refs = getattr(ds, "ReferencedSeriesSequence", None) or []
    return str(refs[0].SeriesInstanceUID) if refs else None


def _nifti_slice(label: Path, header) -> np.ndarray:
    data, affine = _nifti(str(label))
    try:
        plane = locate_slice(SliceGeometry.from_header(header), affine, data.shape)
    except GeometryError as exc:
        raise LabelError(f"{label} does not fit {header.filename}: {exc}") from None
    return plane.take(data)


def _seg_slice(label: Path, header) -> np.ndarray:
    seg = _seg(str(label))
    if (int(seg.Rows), int(seg.Columns)) != (int(header.Rows), int(header.Columns)):
        raise LabelError(
            f"{label} does not fit {header.filename}: shape differs: the SEG is {seg.Rows} x {seg.Columns} "
            f"pixels, the image {header.Rows} x {header.Columns}"
        )
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(header.SOPInstanceUID)],
            combine_segments=True,
            assert_missing_frames_are_empty=True,  # a SEG may leave out the frames of slices without findings
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise LabelError(f"{label} has no frames for {header.filename} ({exc})") from None
    return np.asarray(pixels[0])


def check_seg_geometry(label: Path, header) -> None:
    """Refuse a SEG whose frame for this slice sits elsewhere or with another spacing/orientation."""
    seg = _seg(str(label))
    shared = seg.SharedFunctionalGroupsSequence[0]
    geom = SliceGeometry.from_header(header)
    measures = getattr(shared, "PixelMeasuresSequence", None)
    if measures and not np.allclose([float(v) for v in measures[0].PixelSpacing], geom.spacing, atol=1e-3):
        raise LabelError(
            f"{label} does not fit {header.filename}: spacing differs: SEG {list(measures[0].PixelSpacing)} mm, "
            f"image {list(geom.spacing)} mm"
        )
    orient = getattr(shared, "PlaneOrientationSequence", None)
    if orient:
        iop = np.asarray([float(v) for v in orient[0].ImageOrientationPatient])
        if not np.allclose(iop, np.r_[geom.row_dir, geom.col_dir], atol=1e-3):
            raise LabelError(f"{label} does not fit {header.filename}: orientation differs (SEG {list(iop)})")
    uid = str(header.SOPInstanceUID)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        sources = [s for d in getattr(frame, "DerivationImageSequence", []) for s in d.SourceImageSequence]
        if any(str(s.ReferencedSOPInstanceUID) == uid for s in sources) and "PlanePositionSequence" in frame:
            ipp = np.asarray([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
            if not np.allclose(ipp, geom.position, atol=1e-2):
                raise LabelError(
                    f"{label} does not fit {header.filename}: origin differs: SEG frame at {list(ipp)} mm, "
                    f"image at {list(geom.position)} mm"
                )


def read_raw(record: dict, header=None) -> np.ndarray:
    """The stored label values of one manifest record's slice, (rows, columns) like the image."""
    label = Path(record["label"])
    fmt = record.get("label_format") or label_format(label)
    if fmt == "npy":
        try:
            return np.load(label, allow_pickle=False)
        except Exception as exc:
            raise LabelError(f"{label}: unreadable .npy mask ({type(exc).__name__}: {exc})") from None
    if fmt not in ("nifti", "seg"):
        raise LabelError(f"{label}: not a label this tool reads (.npy, .nii/.nii.gz or DICOM SEG)")
    if header is None:
        header = pydicom.dcmread(record["image"], stop_before_pixels=True)
    return _nifti_slice(label, header) if fmt == "nifti" else _seg_slice(label, header)


def map_values(values: np.ndarray, label_map: dict[int, int] | None, source: str) -> np.ndarray:
    """Stored values -> task classes (uint8); 0 stays background; an unlisted value is refused."""
    label_map = label_map or DEFAULT_LABEL_MAP
    found = np.unique(values)
    unknown = [v for v in found.tolist() if v != 0 and v not in label_map]
    if unknown:
        raise LabelError(
            f"{source}: label value(s) {unknown[:5]} are not in the site config's data.label_map "
            f"{dict(label_map)}; add them (value: class) or fix the label"
        )
    out = np.zeros(values.shape, np.uint8)
    for value, cls in label_map.items():
        out[values == value] = cls
    return out


def read_label(record: dict, label_map: dict[int, int] | None = None, header=None) -> np.ndarray:
    """One record's mask as task classes, (rows, columns) in the image's order."""
    return map_values(read_raw(record, header), label_map, str(record["label"]))
