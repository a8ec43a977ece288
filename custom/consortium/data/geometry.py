"""Where a DICOM slice's pixels are in the patient, and which voxels of a label volume they are.

DICOM places a slice in patient coordinates (LPS, mm) by ImagePositionPatient (the centre of the first
pixel), ImageOrientationPatient (the directions of a row and of a column) and PixelSpacing (the distance
between rows, then between columns). NIfTI places voxels by an affine into RAS; LPS = diag(-1, -1, 1) RAS.
A label fits a slice when every pixel centre of the slice is the centre of one label voxel: the slice's
rows and columns then step along two label axes by one voxel each, and the slice lies on one plane of
the third. Anything else (another spacing, a rotated or transposed volume, a shifted origin, a cut-off
volume) is refused with what differs; nothing is resampled silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE_VOXELS = 0.05  # how far (in voxels) a pixel centre may sit from a voxel centre and still match
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryError(ValueError):
    """A label does not lie on the grid of its image; the message says what differs."""


@dataclass(frozen=True)
class SliceGeometry:
    """The plane of one DICOM slice: first pixel centre, row and column directions, spacing, size."""

    position: np.ndarray  # ImagePositionPatient, mm (LPS)
    row_dir: np.ndarray  # direction of increasing column index (along a row), unit vector
    col_dir: np.ndarray  # direction of increasing row index (down a column), unit vector
    spacing: tuple[float, float]  # (between rows, between columns), mm: DICOM PixelSpacing order
    shape: tuple[int, int]  # (rows, columns)

    @classmethod
    def from_header(cls, ds) -> "SliceGeometry":
        """From a pydicom dataset (headers only are needed); raises GeometryError naming a missing tag."""
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if tag not in ds:
                raise GeometryError(f"the DICOM header has no {tag}")
        orient = np.asarray([float(v) for v in ds.ImageOrientationPatient], float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
        if orient.shape != (6,) or len(spacing) != 2 or min(spacing) <= 0:
            raise GeometryError(f"ImageOrientationPatient {list(orient)} or PixelSpacing {spacing} is malformed")
        return cls(
            position=np.asarray([float(v) for v in ds.ImagePositionPatient], float),
            row_dir=orient[:3] / np.linalg.norm(orient[:3]),
            col_dir=orient[3:] / np.linalg.norm(orient[3:]),
            spacing=spacing,
            shape=(int(ds.Rows), int(ds.Columns)),
        )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def along_normal(self) -> float:
        """The slice's position along its normal: the sort key of a series (not the file name)."""
        return float(self.position @ self.normal)

    def same_plane_kind(self, other: "SliceGeometry", tol: float = 1e-3) -> bool:
        """Same orientation, spacing and size (slices of one consistent series)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.row_dir, other.row_dir, atol=tol)
            and np.allclose(self.col_dir, other.col_dir, atol=tol)
        )


def axial_cosine(geom: SliceGeometry) -> float:
    """|cos| of the angle between the slice normal and the patient's head-foot axis (1: axial)."""
    return abs(float(geom.normal[2]))


@dataclass(frozen=True)
class VoxelPlane:
    """How a slice's (row, column) grid sits in a label volume: `take(volume)` gives the slice's mask."""

    row_axis: int  # label axis that the slice's row index steps along
    row_step: int  # +1 or -1
    col_axis: int
    col_step: int
    slice_axis: int
    start: tuple[int, int, int]  # label voxel of the slice's first pixel
    rows: int
    cols: int

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The slice's mask (rows x columns) out of `volume` (its first three axes)."""
        index: list = [0, 0, 0]
        index[self.slice_axis] = self.start[self.slice_axis]
        index[self.row_axis] = _span(self.start[self.row_axis], self.row_step, self.rows)
        index[self.col_axis] = _span(self.start[self.col_axis], self.col_step, self.cols)
        plane = np.asarray(volume[tuple(index)])
        return plane if self.row_axis < self.col_axis else plane.T


def _span(start: int, step: int, n: int) -> slice:
    stop = start + step * n
    return slice(start, stop if stop >= 0 else None, step)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def locate_slice(geom: SliceGeometry, label_affine_lps: np.ndarray, label_shape: tuple[int, ...]) -> VoxelPlane:
    """Find the slice's pixels in a label volume with affine `label_affine_lps` (voxel index -> LPS mm).

    Raises GeometryError saying whether spacing, orientation, origin or extent differ."""
    inv = np.linalg.inv(label_affine_lps)
    to_voxel = inv[:3, :3]
    start = inv[:3, :3] @ geom.position + inv[:3, 3]
    d_row = to_voxel @ (geom.col_dir * geom.spacing[0])  # one step down a column = next row
    d_col = to_voxel @ (geom.row_dir * geom.spacing[1])
    label_spacing = np.sqrt((label_affine_lps[:3, :3] ** 2).sum(axis=0))
    steps = []
    for name, d, mm in (("row", d_row, geom.spacing[0]), ("column", d_col, geom.spacing[1])):
        axis = int(np.argmax(np.abs(d)))
        off_axis = np.delete(d, axis)
        if np.abs(off_axis).max() > TOLERANCE_VOXELS:
            raise GeometryError(
                f"orientation differs: the image's {name} direction is not along a label axis "
                f"(label voxel step {_fmt(d)}); the label is rotated or oblique against the image"
            )
        if abs(abs(d[axis]) - 1.0) > TOLERANCE_VOXELS:
            raise GeometryError(
                f"spacing differs: the image's {name} spacing is {mm:.4g} mm, the label's spacing along that "
                f"axis is {label_spacing[axis]:.4g} mm"
            )
        steps.append((axis, 1 if d[axis] > 0 else -1))
    (row_axis, row_step), (col_axis, col_step) = steps
    if row_axis == col_axis:
        raise GeometryError("orientation differs: the image's rows and columns map to one label axis")
    slice_axis = 3 - row_axis - col_axis
    nearest = np.round(start)
    if np.abs(start - nearest).max() > TOLERANCE_VOXELS:
        offset_mm = (label_affine_lps[:3, :3] @ (start - nearest)).round(3)
        raise GeometryError(
            f"origin differs: the image's first pixel lies between label voxels (off by {_fmt(offset_mm)} mm)"
        )
    first = tuple(int(v) for v in nearest)
    rows, cols = geom.shape
    last = list(first)
    last[row_axis] += row_step * (rows - 1)
    last[col_axis] += col_step * (cols - 1)
    shape3 = tuple(label_shape[:3])
    if any(not (0 <= first[a] < shape3[a] and 0 <= last[a] < shape3[a]) for a in range(3)):
        raise GeometryError(
            f"shape or origin differs: the image ({rows} x {cols} pixels at {_fmt(geom.position)} mm) reaches "
            f"label voxels {first}..{tuple(last)}, outside the label's shape {shape3}"
        )
    return VoxelPlane(row_axis, row_step, col_axis, col_step, slice_axis, first, rows, cols)


def nifti_affine_lps(img) -> np.ndarray:
    """A nibabel image's voxel -> LPS affine (NIfTI stores RAS)."""
    return RAS_TO_LPS @ np.asarray(img.affine, float)
