"""Which DICOM transfer syntaxes decode here, and lossless compressed copies for generated data."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

# the pip package that decodes each compressed syntax; all are dependencies, so `make setup` installs them
DECODER_PACKAGE = {
    **{uid: "pylibjpeg-libjpeg" for uid in JPEGTransferSyntaxes + JPEGLSTransferSyntaxes},
    **{uid: "pylibjpeg-openjpeg" for uid in (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)},
    RLELossless: "pylibjpeg-rle",
}

# transfer syntaxes newer than pydicom's UID dictionary, named so that a skipped file says what it is
_EXTRA_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}

# lossless syntaxes `compress_file` writes (pydicom's own RLE encoder, pylibjpeg-openjpeg, pyjpegls)
COMPRESSIONS = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}


def syntax_label(uid: str) -> str:
    """The transfer syntax as "name (UID)", e.g. "RLE Lossless (1.2.840.10008.1.2.5)", or "unknown (UID)"."""
    uid = UID(uid)
    name = _EXTRA_NAMES.get(str(uid), uid.name)
    return f"{name if name != str(uid) else 'unknown'} ({uid})"


def transfer_syntax(source: Dataset | str) -> UID | None:
    """The transfer syntax UID of a dataset (from its file meta; headers only are enough) or of a UID string."""
    if isinstance(source, str):
        return UID(source)
    uid = getattr(getattr(source, "file_meta", None), "TransferSyntaxUID", None)
    return UID(uid) if uid else None


def decode_problem(source: Dataset | str) -> str | None:
    """Return None if pydicom can decode the pixel data of this transfer syntax here, else the reason and the fix.

    `source` is a dataset (read with `stop_before_pixels=True` is enough) or a transfer syntax UID.
    Uncompressed syntaxes always decode. A compressed syntax needs a pixel plugin: the reason names the
    syntax, its UID and the package to install, or says that pydicom has no decoder for it at all.
    """
    uid = transfer_syntax(source)
    if uid is None:
        return "no TransferSyntaxUID in the file meta information: the pixel data encoding is unknown"
    label = syntax_label(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (
            f"transfer syntax {label} has no decoder in pydicom {pydicom.__version__}: "
            "convert the file to an uncompressed or a supported compressed syntax before use"
        )
    if decoder.is_available:
        return None
    package = DECODER_PACKAGE.get(uid, "a pydicom pixel plugin")
    return f"transfer syntax {label} has no installed decoder: run `make setup` ({package})"


def compress_file(src: Path, dst: Path, syntax: str) -> None:
    """Write a lossless compressed copy of the uncompressed DICOM file `src` to `dst`.

    `syntax` is a key of COMPRESSIONS ("rle", "jpeg-ls", "jpeg2000"); stored values, hence HU, round-trip
    exactly. Raises ValueError for an unknown name, an already compressed `src`, a missing encoder, or a
    JPEG 2000 slice smaller than 32 x 32 (pylibjpeg-openjpeg always uses 6 wavelet levels).
    """
    if syntax not in COMPRESSIONS:
        raise ValueError(f"unknown compression {syntax!r}: choose one of {', '.join(COMPRESSIONS)}")
    uid = COMPRESSIONS[syntax]
    ds = pydicom.dcmread(src)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError(f"{src} is already compressed ({syntax_label(ds.file_meta.TransferSyntaxUID)})")
    if syntax == "jpeg2000" and min(ds.Rows, ds.Columns) < 32:  # openjpeg encodes with 6 fixed DWT levels
        raise ValueError(f"JPEG 2000 needs at least 32 x 32 pixels, {src} has {ds.Rows} x {ds.Columns}")
    encoder = get_encoder(uid)
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies)
        raise ValueError(f"no encoder for {syntax_label(uid)} is installed ({missing}): run `make setup`")
    ds.compress(uid, generate_instance_uid=False)  # lossless: the same instance, so its UID stays
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
