"""`data index` on a PACS-like export: series grouped and sorted by geometry, labels matched by UID and
checked against the series, pseudonymous patients, a patient-level split, every skip listed with its reason."""

import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from consortium.data.dicom_io import SliceMeta, stable_uid, write_ct_slice
from consortium.data.geometry import GeometryError, SliceGeometry, locate_slice
from consortium.data.index import IndexingError, index_site
from consortium.data.labels import LabelError, read_label
from consortium.data.manifest import DataError, load_records
from consortium.data.pacs_synth import write_nifti


def _index(cfg, **kw):
    d = cfg.data.dir
    return index_site(d / "pacs", d / "labels", site=cfg.name, data_dir=d, manifest=cfg.manifest_path,
                      progress=lambda _: None, **kw)  # fmt: skip


def test_pacs_export_is_indexed_by_series(tiny_sites):
    cfg = tiny_sites["site-b"]  # generated as a PACS export: 6 patients x 2 slices, see data/pacs_synth.py
    result = _index(cfg)
    df = pd.read_csv(cfg.manifest_path)
    assert len(df) == len(result.rows) == 5 * 2  # the sixth patient's label does not fit: refused
    assert set(df.label_format) == {"nifti", "seg"}
    reasons = dict(result.skipped_series)
    assert sum("[LOCALIZER]: " in f"{k}: " and "not axial" in v for k, v in reasons.items()) == 6
    refused = [v for v in reasons.values() if v.startswith("label refused")]
    assert len(refused) == 1 and "spacing differs" in refused[0] and ".nii.gz" in refused[0] and "IM0001" in refused[0]
    # slices in order along the normal although InstanceNumber counts the other way
    for _, group in df.groupby("series"):
        z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in group.image]
        assert z == sorted(z) and list(group["slice"]) == list(range(len(group)))
    # split by patient, reproducible, pseudonymous
    assert not set(df[df.split == "train"].patient_id) & set(df[df.split == "val"].patient_id)
    assert (df.split == "val").any()
    written = cfg.manifest_path.read_text() + (cfg.data.dir / "index.json").read_text()
    real_ids = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in df.image}
    assert real_ids and not any(pid in written for pid in real_ids) and "Anon^" not in written
    again = _index(cfg)
    assert again.rows == result.rows
    # a new salt (the old one lost) changes every pseudonym but not who is in validation
    (cfg.data.dir / ".pseudonym_salt").unlink()
    resalted = _index(cfg)
    assert [r["patient_id"] for r in resalted.rows] != [r["patient_id"] for r in result.rows]
    assert [(r["image"], r["split"]) for r in resalted.rows] == [(r["image"], r["split"]) for r in result.rows]
    assert json.loads((cfg.data.dir / "index.json").read_text())["series"][0]["pixel_spacing_mm"]


def test_compressed_and_mixed_size_slices_load_with_their_labels(tiny_sites):
    cfg = tiny_sites["site-b"]
    records, report = load_records(cfg)  # decodes every slice, as `data check` does
    assert not report.skipped and len(report.sizes) == 2 and len(report.spacings) == 2
    syntaxes = {str(pydicom.dcmread(r["image"], stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for r in records["train"] + records["val"]}  # fmt: skip
    assert len(syntaxes) >= 2  # uncompressed and at least one lossless compression
    from consortium.tasks import get_task

    train, val, _ = get_task("seg2d").make_loaders(cfg, batch_size=4)
    shapes = {tuple(b["image"].shape[1:]) for loader in (train, val) for b in loader}
    assert shapes == {(1, 32, 32)}  # 64 px at 0.4 mm resampled to 32 px at 0.8 mm; sizes a multiple of 8
    lesion = [b["image"][b["label"] > 0] for b in val if b["label"].sum() > 0]
    organ = [b["image"][(b["label"] == 0) & (b["image"] > 0.4)] for b in val]
    if lesion:  # site-b's lesions are hyperdense: the resampled mask still sits on them
        assert torch_cat(lesion).mean() > torch_cat(organ).mean()


def torch_cat(parts):
    import torch

    return torch.cat([p.flatten() for p in parts])


def _series(tmp_path, rows=6, cols=10, n=4, gap=2.5):
    files, metas = [], []
    for s in range(n):
        meta = SliceMeta("P1", "1.2.3", "1.2.3.4", stable_uid("t", s), s + 1, "A", "B",
                         position=(-3.0, -2.0, 10.0 + s * gap))  # fmt: skip
        write_ct_slice(tmp_path / f"s{s}.dcm", np.zeros((rows, cols), np.float32), meta)
        files.append(tmp_path / f"s{s}.dcm")
        metas.append(meta)
    masks = np.arange(n * rows * cols).reshape(n, rows, cols) % 7  # every voxel different along each axis
    return files, metas, masks


@pytest.mark.parametrize("layout", ["ijk", "flipped", "swapped"])
def test_nifti_labels_follow_geometry_not_array_order(tmp_path, layout):
    files, metas, masks = _series(tmp_path)
    path = tmp_path / f"{layout}.nii.gz"
    write_nifti(path, masks, metas[0], 2.5)
    if layout != "ijk":  # the same voxels on the same grid, stored in another array order with its affine
        import nibabel as nib

        img = nib.load(path)
        data, affine = np.asanyarray(img.dataobj), img.affine.copy()
        if layout == "flipped":  # slices stored head to feet, columns right to left
            data = data[::-1, :, ::-1]
            affine[:, 3] = affine @ [data.shape[0] - 1, 0, data.shape[2] - 1, 1]
            affine[:, 0], affine[:, 2] = -affine[:, 0], -affine[:, 2]
        else:  # rows and columns swapped in the array
            data = data.transpose(1, 0, 2)
            affine[:, [0, 1]] = affine[:, [1, 0]]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    for f, expected in zip(files, masks, strict=True):
        got = read_label({"image": str(f), "label": str(path), "label_format": "nifti"}, {v: v for v in range(1, 7)})
        assert np.array_equal(got, expected)


def test_misfit_labels_are_refused_with_what_differs(tmp_path):
    files, metas, masks = _series(tmp_path)
    geom = SliceGeometry.from_header(pydicom.dcmread(files[0], stop_before_pixels=True))
    cases = {"spacing differs": 1.0, "origin differs": 0.5, "outside the label's shape": None}
    for expected, shift in cases.items():
        path = tmp_path / "bad.nii.gz"
        if expected == "spacing differs":
            write_nifti(path, masks, metas[0], 2.5, spacing_scale=2.0)
        elif expected == "origin differs":
            moved = SliceMeta(**{**metas[0].__dict__, "position": (-3.0 + 0.8 * shift, -2.0, 10.0)})
            write_nifti(path, masks, moved, 2.5)
        else:
            write_nifti(path, masks[:, :4, :], metas[0], 2.5)  # a cut-off volume
        import nibabel as nib

        img = nib.load(path)
        with pytest.raises(GeometryError, match=expected):
            locate_slice(geom, np.diag([-1.0, -1.0, 1, 1]) @ img.affine, img.shape)
        with pytest.raises(LabelError, match=f"{path}.*does not fit.*{files[0].name}"):
            read_label({"image": str(files[0]), "label": str(path), "label_format": "nifti"}, {v: 1 for v in range(7)})


def test_label_values_outside_the_label_map_are_refused(tmp_path):
    files, metas, masks = _series(tmp_path)
    write_nifti(tmp_path / "l.nii.gz", masks, metas[0], 2.5)
    record = {"image": str(files[0]), "label": str(tmp_path / "l.nii.gz"), "label_format": "nifti"}
    with pytest.raises(LabelError, match=r"label value\(s\) \[2, 3.*data.label_map"):
        read_label(record, {1: 1})
    assert set(np.unique(read_label(record, {v: int(v % 2) for v in range(1, 7)}))) == {0, 1}


def test_bad_exports_give_clear_reasons(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(IndexingError, match="no DICOM image series found in 1 files.*notes.txt: not a DICOM"):
        index_site(empty, None, site="x", data_dir=tmp_path / "d", manifest=tmp_path / "d/m.csv",
                   progress=lambda _: None)  # fmt: skip
    export = tmp_path / "export"
    files, metas, masks = _series(export, n=5)
    files[2].unlink()  # a hole in the series
    write_nifti(tmp_path / "labels" / "1.2.3.4.nii.gz", masks, metas[0], 2.5)
    with pytest.raises(IndexingError) as err:
        index_site(export, tmp_path / "labels", site="x", data_dir=tmp_path / "d", manifest=tmp_path / "d/m.csv",
                   progress=lambda _: None)  # fmt: skip
    assert "inconsistent slice spacing: gaps from 2.5 to 5 mm" in str(err.value)
    mapping = tmp_path / "map.csv"
    mapping.write_text("series_uid,label\n9.9.9,labels/x.nii.gz\n")
    files, metas, masks = _series(tmp_path / "ok", n=3)
    with pytest.raises(IndexingError, match="not in the label mapping file"):
        index_site(tmp_path / "ok", None, site="x", data_dir=tmp_path / "d", manifest=tmp_path / "d/m.csv",
                   mapping=mapping, progress=lambda _: None)  # fmt: skip


def test_small_site_trains_without_validation_and_empty_patient_is_refused(tmp_path):
    files, metas, masks = _series(tmp_path / "export", rows=16, cols=16, n=3)
    labels = tmp_path / "labels"
    write_nifti(labels / "1.2.3.4.nii.gz", (masks > 3).astype(np.uint8), metas[0], 2.5)
    result = index_site(tmp_path / "export", labels, site="x", data_dir=tmp_path / "d",
                        manifest=tmp_path / "d" / "manifest.csv", progress=lambda _: None)  # fmt: skip
    assert {r["split"] for r in result.rows} == {"train"} and "too few for a validation split" in result.warnings[0]
    from consortium.config import parse_site_config

    cfg = parse_site_config({"org": "x", "data": {"dir": str(tmp_path / "d")}}, tmp_path / "x.yaml")
    records, report = load_records(cfg)
    assert records["val"] == [] and "trains on all its data" in report.summary()
    df = pd.read_csv(cfg.manifest_path, dtype=str, keep_default_na=False)
    df.loc[1, "patient_id"] = ""
    df.to_csv(cfg.manifest_path, index=False)
    with pytest.raises(DataError, match=r"line\(s\) \[3\] have an empty patient_id"):
        load_records(cfg)


def test_odd_sizes_and_spacings_join_a_site_without_crashing_it(tiny_sites):
    """The files that once crashed a round: 128 x 128 at 0.4 mm, 100 x 100 and 512 x 498 (JPEG 2000)."""
    from consortium.data.codecs import compress_file
    from consortium.tasks import get_task

    cfg = tiny_sites["site-a"]  # 32 x 32 slices at 0.8 mm
    rows = []
    for i, (shape, spacing, syntax) in enumerate([((128, 128), 0.4, None), ((100, 100), 0.8, None),
                                                  ((512, 498), 0.8, "jpeg2000")]):  # fmt: skip
        hu = np.full(shape, 40.0, np.float32)
        mask = np.zeros(shape, np.uint8)
        mask[shape[0] // 2 - 3 : shape[0] // 2 + 3, shape[1] // 2 - 3 : shape[1] // 2 + 3] = 1
        hu[mask > 0] = -20.0
        image = cfg.data.dir / f"odd{i}.dcm"
        write_ct_slice(image, hu, SliceMeta(f"ODD{i}", "1.2", "1.2.9", stable_uid("odd", i), 1, "A", "B",
                                            pixel_spacing_mm=spacing))  # fmt: skip
        if syntax:
            compress_file(image, image, syntax)
        np.save(cfg.data.dir / f"odd{i}.npy", mask)
        rows.append({"patient_id": f"ODD{i}", "image": image.name, "label": f"odd{i}.npy", "split": "train"})
    df = pd.read_csv(cfg.manifest_path)
    pd.concat([df, pd.DataFrame(rows)]).to_csv(cfg.manifest_path, index=False)
    task = get_task("seg2d")
    train, _, report = task.make_loaders(cfg, batch_size=64)
    assert not report.skipped and report.usable["train"] == (df.split == "train").sum() + 3
    assert "512 x 498 (1)" in report.summary() and "0.4 x 0.4 (1)" in report.summary()
    batch = next(iter(train))
    assert batch["image"].shape[1:] == (1, 32, 32) and len(batch["image"]) == len(train.dataset)
    odd = batch["label"].flatten(1).sum(1)
    assert (odd > 0).any()  # the centred lesions survive resampling and the centre crop
    result = task.train(task.build_model(channels=(4, 8, 16, 32)), train, epochs=1, lr=1e-3)
    assert result.steps == 1


def test_pydicom_test_files_are_indexed_without_crashing(tmp_path):
    """pydicom's own test files (every modality, odd headers, broken files): each is listed with a reason."""
    from pathlib import Path

    folder = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    with pytest.raises(IndexingError) as err:
        index_site(folder, None, site="x", data_dir=tmp_path, manifest=tmp_path / "m.csv", progress=lambda _: None)
    text = str(err.value)
    assert "no series with a usable label" in text
    assert "modality MR, the task needs CT" in text and "no label found" in text  # CT_small.dcm: no label
    info = json.loads((tmp_path / "index.json").read_text())
    assert info["files_seen"] == sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert info["skipped_files"] and info["skipped_series"]  # all listed with reasons, also when nothing is usable
    assert all(entry["reason"] for entry in info["skipped_files"] + info["skipped_series"])
