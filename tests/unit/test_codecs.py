"""Compressed transfer syntaxes decode through pydicom's plugins; undecodable files are skipped naming the syntax."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import UID

from consortium.data import codecs
from consortium.data.codecs import COMPRESSIONS, compress_file, decode_problem
from consortium.data.dicom_io import SliceMeta, check_ct_file, write_ct_slice


def _local(name: str) -> str:
    """A file pydicom ships in its wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in the installed pydicom package"
    return path


def _pixels(name: str, plugin: str) -> np.ndarray:
    return pixel_array(_local(name), decoding_plugin=plugin)


# (compressed file, uncompressed original, plugin): lossless syntaxes decode to exactly the original
LOSSLESS = [
    ("MR_small_RLE.dcm", "MR_small.dcm", "pylibjpeg"),  # RLE Lossless via pylibjpeg-rle
    ("MR_small_RLE.dcm", "MR_small.dcm", "pydicom"),  # RLE Lossless via pydicom's own decoder
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", "pylibjpeg"),  # JPEG 2000 Lossless via pylibjpeg-openjpeg
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "pylibjpeg"),  # JPEG-LS Lossless via pylibjpeg-libjpeg
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "pyjpegls"),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "pylibjpeg"),  # JPEG Lossless SV1 (RGB) vs an RLE copy
]


@pytest.mark.parametrize(("name", "original", "plugin"), LOSSLESS)
def test_lossless_syntaxes_decode_to_the_original(name, original, plugin):
    assert np.array_equal(_pixels(name, plugin), _pixels(original, ""))


# (file, plugin, shape): lossy syntaxes decode to the right shape
LOSSY = [
    ("SC_rgb_jpeg_dcmtk.dcm", "pylibjpeg", (100, 100, 3)),  # JPEG Baseline (8-bit)
    ("JPGExtended.dcm", "pylibjpeg", (1024, 256)),  # JPEG Extended 12-bit (Pillow cannot)
    ("693_J2KI.dcm", "pylibjpeg", (512, 512)),  # JPEG 2000 (lossy), a CT slice
    ("JPEGLSNearLossless_16.dcm", "pylibjpeg", (50, 10)),  # JPEG-LS Near-Lossless
]


@pytest.mark.parametrize(("name", "plugin", "shape"), LOSSY)
def test_lossy_syntaxes_decode(name, plugin, shape):
    assert _pixels(name, plugin).shape == shape


def test_jpeg_baseline_is_close_to_the_lossless_copy():
    diff = _pixels("SC_rgb_jpeg_dcmtk.dcm", "pylibjpeg").astype(int) - _pixels("SC_rgb_rle.dcm", "")
    assert np.abs(diff).mean() < 1.0 and np.abs(diff).max() <= 10


@pytest.mark.parametrize("name", sorted({n for n, *_ in LOSSLESS + LOSSY} | {"MR_small.dcm"}))
def test_decode_problem_is_none_for_installed_syntaxes_from_headers(name):
    assert decode_problem(pydicom.dcmread(_local(name), stop_before_pixels=True)) is None


def test_decode_problem_is_none_for_every_syntax_a_plugin_covers():
    assert {str(uid): decode_problem(uid) for uid in codecs.DECODER_PACKAGE} == {
        str(uid): None for uid in codecs.DECODER_PACKAGE
    }


@pytest.mark.parametrize(
    ("uid", "label"),
    [
        ("1.2.840.10008.1.2.4.112", "JPEG XL (1.2.840.10008.1.2.4.112)"),
        ("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level (1.2.840.10008.1.2.4.100)"),
        ("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)"),
        ("1.2.3.4.5", "unknown (1.2.3.4.5)"),
    ],
)
def test_decode_problem_names_a_syntax_without_decoder(uid, label):
    reason = decode_problem(uid)
    assert label in reason and "no decoder in pydicom" in reason


def test_decode_problem_names_the_package_when_a_plugin_is_missing(monkeypatch):
    class Missing:
        is_available = False

    monkeypatch.setattr(codecs, "get_decoder", lambda uid: Missing())
    reason = decode_problem("1.2.840.10008.1.2.4.91")
    assert reason == (
        "transfer syntax JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91) has no installed decoder: "
        "run `make setup` (pylibjpeg-openjpeg)"
    )


def _ct_slice(path: Path, *, size: int = 48, signed: bool = False) -> np.ndarray:
    """A CT slice of air, a body disk and noise; returns its HU."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    hu = np.where(body, 40.0, -1000.0) + np.round(rng.normal(0, 20, (size, size)))
    hu[size // 2, size // 2] = 3000 if not signed else -2000  # int16 storage goes below -1024
    hu = hu if signed else np.maximum(hu, -1024)  # uint16 storage with intercept -1024 clips there
    meta = SliceMeta("P1", "1.2.3", "1.2.3.4", "1.2.3.4.5", 1, "Acme", "Alpha", signed_storage=signed)
    write_ct_slice(path, hu, meta)
    return hu


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("syntax", sorted(COMPRESSIONS))
def test_compress_file_round_trips_hu_exactly(tmp_path, syntax, signed):
    hu = _ct_slice(tmp_path / "plain.dcm", signed=signed)
    compress_file(tmp_path / "plain.dcm", tmp_path / "out" / "packed.dcm", syntax)
    ds = pydicom.dcmread(tmp_path / "out" / "packed.dcm")
    assert ds.file_meta.TransferSyntaxUID == COMPRESSIONS[syntax]
    assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), hu)
    assert check_ct_file(tmp_path / "out" / "packed.dcm") is None


def test_compress_file_refuses_unknown_names_compressed_input_and_tiny_jpeg2000(tmp_path):
    _ct_slice(tmp_path / "plain.dcm")
    with pytest.raises(ValueError, match="unknown compression 'jpeg-xl': choose one of rle, jpeg-ls, jpeg2000"):
        compress_file(tmp_path / "plain.dcm", tmp_path / "x.dcm", "jpeg-xl")
    compress_file(tmp_path / "plain.dcm", tmp_path / "rle.dcm", "rle")
    with pytest.raises(ValueError, match=r"already compressed \(RLE Lossless"):
        compress_file(tmp_path / "rle.dcm", tmp_path / "x.dcm", "jpeg2000")
    _ct_slice(tmp_path / "tiny.dcm", size=16)
    with pytest.raises(ValueError, match="at least 32 x 32"):
        compress_file(tmp_path / "tiny.dcm", tmp_path / "x.dcm", "jpeg2000")


def test_check_ct_file_names_a_syntax_without_decoder(tmp_path):
    _ct_slice(tmp_path / "plain.dcm")
    compress_file(tmp_path / "plain.dcm", tmp_path / "j2k.dcm", "jpeg2000")
    ds = pydicom.dcmread(tmp_path / "j2k.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2: pydicom has no decoder
    ds.save_as(tmp_path / "part2.dcm", enforce_file_format=True)
    private = UID("1.2.826.0.1.3680043.10.1437.99")  # a made-up vendor syntax
    private.set_private_encoding(False, True)
    ds = pydicom.dcmread(tmp_path / "plain.dcm")
    ds.file_meta.TransferSyntaxUID = private
    ds.save_as(tmp_path / "private.dcm", enforce_file_format=True)
    assert "JPEG 2000 Part 2 Multi-component" in check_ct_file(tmp_path / "part2.dcm")
    assert "(1.2.840.10008.1.2.4.92) has no decoder" in check_ct_file(tmp_path / "part2.dcm")
    assert "unknown (1.2.826.0.1.3680043.10.1437.99) has no decoder" in check_ct_file(tmp_path / "private.dcm")


def test_check_ct_file_names_the_syntax_when_decoding_fails():
    reason = check_ct_file(Path(_local("JPEG-lossy.dcm")), "NM")  # NEMA's NM1_JPLY: invalid SOS parameters
    assert reason.startswith(
        "pixel data in transfer syntax JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51) cannot be decoded"
    )


def test_check_ct_file_accepts_compressed_files_pydicom_ships():
    assert check_ct_file(Path(_local("693_J2KI.dcm"))) is None
    assert check_ct_file(Path(_local("MR_small_jpeg_ls_lossless.dcm")), "MR") is None
