"""The Fed-Heart-Disease task: the packaged UCI data, FLamby's preprocessing and split, and the task interface."""

import pandas as pd
import pytest
import torch

from consortium.config import load_site_configs
from consortium.data.heart import (
    CENTERS,
    FEATURES,
    FLAMBY_ROWS,
    FLAMBY_SPLIT,
    RAW_ROWS,
    HeartDataError,
    HeartReport,
    load_center,
    load_raw,
    packaged_csv,
    preprocess,
)
from tests.conftest import REPO


def test_packaged_csv_rows_per_hospital_and_the_mislabelled_row():
    csv = packaged_csv()
    shipped = pd.read_csv(csv)["dataset"].value_counts().to_dict()
    # as shipped: one Hungarian patient sits under Cleveland
    assert shipped == {"Cleveland": 304, "Hungary": 293, "VA Long Beach": 200, "Switzerland": 123}
    report = HeartReport(csv=csv)
    fixed = load_raw(csv, report)
    assert fixed["dataset"].value_counts().to_dict() == RAW_ROWS
    assert fixed.loc[fixed["id"] == 304, "dataset"].item() == "Hungary"
    assert report.notes and "304" in report.notes[0]


def test_flamby_preprocessing_and_split_sizes():
    data = preprocess(load_raw(packaged_csv()))
    assert {c: len(y) for c, (_, y) in data.items()} == FLAMBY_ROWS  # 303 / 261 / 46 / 130 = 740
    for center, (x, y) in data.items():
        assert x.shape == (len(y), 13) and len(FEATURES) == 13
        assert set(y.tolist()) <= {0.0, 1.0}
        onehot = x[:, -5:]  # cp_2..4, restecg_1..2 are 0/1
        assert set(onehot.flatten().tolist()) <= {0.0, 1.0}
        (xtr, ytr), (xte, yte), report = load_center(center)
        assert (len(ytr), len(yte)) == FLAMBY_SPLIT[center] == report.split[center]
    # the split is stratified where FLamby stratifies: Cleveland's class balance is kept on both sides
    (_, ytr), (_, yte), _ = load_center("cleveland")
    assert abs(float(ytr.mean()) - float(yte.mean())) < 0.02


def test_bad_inputs_are_refused_clearly(tmp_path):
    with pytest.raises(HeartDataError, match="unknown center 'boston'"):
        load_center("boston")
    with pytest.raises(HeartDataError, match="file not found"):
        load_center("va", tmp_path / "missing.csv")
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(HeartDataError, match="columns .* missing"):
        load_center("va", bad)
    truncated = tmp_path / "truncated.csv"
    pd.read_csv(packaged_csv()).head(500).to_csv(truncated, index=False)
    with pytest.raises(HeartDataError, match="unexpected rows per hospital"):
        load_center("va", truncated)


def test_heart_sites_train_and_evaluate_through_the_task_interface():
    from consortium.tasks import get_task

    task = get_task("heart")
    sites = load_site_configs(REPO / "site_configs" / "heart")
    assert {cfg.data.center for cfg in sites.values()} == set(CENTERS)
    train_loader, test_loader, report = task.make_loaders(sites["cleveland"], batch_size=4, seed=0)
    assert "cleveland: 303 usable rows, train 199 / test 104" in report.summary()
    torch.manual_seed(0)
    model = task.build_model()
    with torch.no_grad():  # start from "no disease" for everyone: the accuracy is then the share of negatives
        model.weight.zero_()
        model.bias.fill_(-5.0)
    before = task.evaluate(model, test_loader)
    result = task.train(model, train_loader, epochs=30, lr=1e-3)
    after = task.evaluate(model, test_loader)
    assert result.steps == 30 * len(train_loader)
    assert after > before + 0.1, (before, after)
