"""Write CT slices as real DICOM files and check that a file is a usable CT slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from consortium.data.codecs import decode_problem, syntax_label

UID_PREFIX = "1.2.826.0.1.3680043.10.1437."  # demo root; generated UIDs are derived from stable strings


def stable_uid(*parts: object) -> str:
    """A DICOM UID that is the same for the same inputs (so generated data is reproducible)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


@dataclass(frozen=True)
class SliceMeta:
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int
    manufacturer: str
    institution: str
    pixel_spacing_mm: float = 0.8
    slice_thickness_mm: float = 2.5
    signed_storage: bool = False  # False: uint16 + intercept -1024; True: int16 + intercept 0
    position: tuple[float, float, float] | None = None  # ImagePositionPatient; None: z = instance x thickness
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # ImageOrientationPatient (axial)
    series_number: int = 1
    series_description: str = "AXIAL"
    manufacturer_model: str = "CT-1"


def write_ct_slice(path: Path, hu: np.ndarray, meta: SliceMeta) -> None:
    """Write a 2D array of Hounsfield units as a CT Image Storage DICOM file."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = meta.sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = UID_PREFIX + "1"
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.sop_uid
    ds.StudyInstanceUID = meta.study_uid
    ds.SeriesInstanceUID = meta.series_uid
    ds.FrameOfReferenceUID = stable_uid(meta.series_uid, "frame")
    ds.PatientID = meta.patient_id
    ds.PatientName = f"Anon^{meta.patient_id}"
    ds.PatientBirthDate = ""  # type 2 attributes: present, may be empty (DICOM SEG writers require them)
    ds.PatientSex = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.StudyTime = "120000"
    ds.Modality = "CT"
    ds.Manufacturer = meta.manufacturer
    ds.InstitutionName = meta.institution
    ds.StudyDate = "20260101"
    ds.ManufacturerModelName = meta.manufacturer_model
    ds.SeriesNumber = meta.series_number
    ds.SeriesDescription = meta.series_description
    ds.InstanceNumber = meta.instance_number
    position = meta.position or (0.0, 0.0, float(meta.instance_number) * meta.slice_thickness_mm)
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in meta.orientation]
    ds.SliceThickness = meta.slice_thickness_mm
    ds.PixelSpacing = [meta.pixel_spacing_mm, meta.pixel_spacing_mm]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    if meta.signed_storage:
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        stored = np.clip(np.round(hu), -32768, 32767).astype(np.int16)
    else:
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        stored = np.clip(np.round(hu) + 1024, 0, 65535).astype(np.uint16)
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def check_ct_file(path: Path, modality: str = "CT") -> str | None:
    """Return None if `path` is a readable DICOM slice of `modality` with pixels, else the reason."""
    if not path.is_file():
        return "file not found"
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "not a DICOM file (no DICM preamble)"
    except Exception as exc:  # truncated or corrupt files raise many different errors
        return f"unreadable DICOM ({type(exc).__name__}: {exc})"
    found = getattr(ds, "Modality", None)
    if found != modality:
        return f"modality {found!r}, expected {modality!r}"
    if "PixelData" not in ds:
        return "no pixel data"
    problem = decode_problem(ds)
    if problem is not None:
        return problem
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = syntax_label(ds.file_meta.TransferSyntaxUID)
        return f"pixel data in transfer syntax {syntax} cannot be decoded ({type(exc).__name__}: {exc})"
    if pixels.ndim != 2:
        return f"expected a 2D slice, got pixel array of shape {pixels.shape}"
    return None
