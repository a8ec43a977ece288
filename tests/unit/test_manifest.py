"""Bad files are skipped and reported with a reason; a site with no usable data fails naming its folder."""

import numpy as np
import pandas as pd
import pydicom
import pytest

from consortium.data.manifest import DataError, load_records


def _append(cfg, rows):
    df = pd.read_csv(cfg.manifest_path)
    pd.concat([df, pd.DataFrame(rows)]).to_csv(cfg.manifest_path, index=False)


def test_bad_files_are_skipped_and_reported(tiny_sites):
    cfg = tiny_sites["site-a"]
    d = cfg.data.dir
    good = pd.read_csv(cfg.manifest_path)
    first = good.iloc[0]
    (d / "notes.dcm").write_text("this is not DICOM")
    raw = (d / first.image).read_bytes()
    (d / "truncated.dcm").write_bytes(raw[: len(raw) // 3])
    ds = pydicom.dcmread(d / first.image)
    ds.Modality = "MR"
    ds.save_as(d / "mr.dcm")
    ds = pydicom.dcmread(d / first.image)
    del ds.PixelData
    ds.save_as(d / "nopixels.dcm")
    np.save(d / "wrong_shape.npy", np.zeros((5, 5), np.uint8))
    bad = [
        ("notes.dcm", first.label, "not a DICOM file"),
        ("truncated.dcm", first.label, "unreadable"),  # pydicom may read the header but not the pixels
        ("mr.dcm", first.label, "modality 'MR'"),
        ("nopixels.dcm", first.label, "no pixel data"),
        ("missing.dcm", first.label, "file not found"),
        (first.image, "missing.npy", "label file not found"),
        (first.image, "wrong_shape.npy", "label shape"),
    ]
    _append(cfg, [{"patient_id": "X", "image": i, "label": lab, "split": "train"} for i, lab, _ in bad])
    records, report = load_records(cfg)
    assert report.usable["train"] == (good.split == "train").sum()
    assert len(records["train"]) == report.usable["train"]
    reasons = dict(report.skipped)
    assert len(report.skipped) == len(bad)
    for image, _, expected in bad:
        matching = [r for f, r in report.skipped if f == image and (expected in r or "pixel data" in r)]
        assert matching, f"{image}: expected '{expected}', got {reasons}"
    assert "skipped 7" in report.summary()


def test_no_usable_data_names_folder(tiny_sites):
    cfg = tiny_sites["site-a"]
    for p in cfg.data.dir.glob("images/*/*.dcm"):
        p.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        load_records(cfg)
    assert str(cfg.data.dir) in str(err.value) and "no usable train images" in str(err.value)


def test_missing_folder_and_manifest_problems(tiny_sites, tmp_path):
    from dataclasses import replace

    cfg = tiny_sites["site-a"]
    with pytest.raises(DataError, match="consortium data synth"):
        load_records(replace(cfg, data=replace(cfg.data, dir=tmp_path / "absent")))
    df = pd.read_csv(cfg.manifest_path)
    df.drop(columns=["split"]).to_csv(cfg.manifest_path, index=False)
    with pytest.raises(DataError, match="missing column"):
        load_records(cfg)
    df.loc[0, "split"] = "val" if df.loc[1, "split"] == "train" else "train"
    df.loc[0, "patient_id"] = df.loc[1, "patient_id"]
    df.loc[1, "split"] = "train" if df.loc[0, "split"] == "val" else "val"
    df.to_csv(cfg.manifest_path, index=False)
    with pytest.raises(DataError, match="both train and val"):
        load_records(cfg)
