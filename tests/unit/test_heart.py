"""The Fed-Heart-Disease task: the packaged UCI data, FLamby's preprocessing and split, the task interface, and
the federated feature standardisation (FLARE's federated statistics -> global mean/std -> every site)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from consortium.config import ConfigError, load_site_configs
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
from consortium.data.heart_stats import DATASET, PRECISION, STATISTICS, WRITER_ID, HeartStatistics, global_statistics
from consortium.jobs import export_job, load_job_spec
from consortium.tasks import heart
from consortium.tasks.heart import Standardiser
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


def _federated_result(site_rows: dict[str, np.ndarray]) -> dict:
    """FLARE's federated statistics on plain arrays: each site's HeartStatistics answers the controller's two
    passes, FLARE's own get_global_stats combines them, and the controller formats the result its writer gets."""
    from nvflare.app_common.app_constant import StatisticsConstants as StC
    from nvflare.app_common.statistics.numeric_stats import get_global_stats
    from nvflare.app_common.workflows.statistics_controller import StatisticsController

    sites = {}
    for name, rows in site_rows.items():
        sites[name] = HeartStatistics()
        sites[name].rows = rows
    controller = StatisticsController(statistic_configs=STATISTICS, writer_id=WRITER_ID, precision=PRECISION)

    def ask(statistic, fn):
        controller.client_statistics[statistic] = {
            name: {DATASET: {f: fn(gen, f) for f in FEATURES}} for name, gen in sites.items()
        }

    ask(StC.STATS_COUNT, lambda gen, f: gen.count(DATASET, f))
    ask(StC.STATS_SUM, lambda gen, f: gen.sum(DATASET, f))
    ask(StC.STATS_MEAN, lambda gen, f: gen.mean(DATASET, f))
    controller.global_statistics = get_global_stats({}, controller.client_statistics, StC.STATS_1st_STATISTICS,
                                                    STATISTICS, PRECISION)  # fmt: skip
    mean, count = (controller.global_statistics[k][DATASET] for k in (StC.STATS_MEAN, StC.STATS_COUNT))
    ask(StC.STATS_VAR, lambda gen, f: gen.variance_with_mean(DATASET, f, mean[f], count[f]))
    ask(StC.STATS_STDDEV, lambda gen, f: gen.stddev(DATASET, f))
    controller.global_statistics = get_global_stats(controller.global_statistics, controller.client_statistics,
                                                    StC.STATS_2nd_STATISTICS, STATISTICS, PRECISION)  # fmt: skip
    return controller._combine_all_statistics()


def test_federated_mean_and_std_from_site_sums_equal_the_pooled_rows():
    rng = np.random.default_rng(0)
    # three sites that differ in size, location and spread (one feature constant at a site, as chol at Swiss)
    rows = {f"site{i}": rng.normal(10.0 * i, 1.0 + i, size=(n, len(FEATURES))) for i, n in enumerate((5, 40, 200))}
    rows["site0"][:, 3] = 0.0
    stats = global_statistics(_federated_result(rows))
    pooled = np.concatenate(list(rows.values()))
    assert stats["features"] == FEATURES and stats["sites"] == sorted(rows)
    np.testing.assert_allclose(stats["mean"], pooled.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], pooled.std(axis=0, ddof=1), rtol=1e-8)
    assert "3 sites (245 training rows)" in stats["source"]
    # what a site receives is the same transform as standardising the pooled rows
    mine = Standardiser.from_meta(stats).apply(rows["site1"])
    np.testing.assert_allclose(mine, Standardiser.from_rows(pooled).apply(rows["site1"]), atol=1e-5)
    incomplete = {k: v for k, v in _federated_result(rows).items() if k != "chol"}
    with pytest.raises(ValueError, match="feature 'chol'"):
        global_statistics(incomplete)


def test_sites_standardise_with_the_global_values_they_receive():
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    from consortium import constants as C
    from consortium.executors.trainer import SiteTrainer

    sites = load_site_configs(REPO / "site_configs" / "heart")
    raw = {name: load_center(cfg.data.center)[0][0] for name, cfg in sites.items()}
    pooled = np.concatenate(list(raw.values())).astype(np.float64)
    stats = Standardiser.from_rows(pooled, source="all 4 sites").to_meta()
    trainer = SiteTrainer(task="heart", local_epochs=1, lr=1e-3, lr_schedule="constant", batch_size=4, seed=0,
                          standardise="federated")  # fmt: skip
    received = trainer._standardisation(
        FLModelUtils.to_shareable(FLModel(params={}, meta={C.META_FEATURE_STATS: stats}))
    )
    for name, cfg in sites.items():
        train_loader, test_loader, report = heart.make_loaders(cfg, standardise=received)
        x = train_loader.dataset.tensors[0].numpy()
        np.testing.assert_allclose(x, (raw[name] - pooled.mean(0)) / pooled.std(0, ddof=1), atol=1e-5)
        assert "all 4 sites (486 training rows)" in report.summary()
    # Switzerland's cholesterol is 0 in every row (UCI's code for not measured, kept as FLamby keeps it): the
    # global transform maps it to the same z-score as every other site's 0, where its own std (0) would not
    swiss, _, _ = heart.make_loaders(sites["switzerland"], standardise="local")
    assert float(swiss.dataset.tensors[0][:, FEATURES.index("chol")].abs().max()) == 0.0
    local, _, _ = heart.make_loaders(sites["cleveland"], standardise="local")
    np.testing.assert_allclose(local.dataset.tensors[0].numpy().mean(0), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="none came with this task"):
        trainer._standardisation(FLModelUtils.to_shareable(FLModel(params={})))
    with pytest.raises(ValueError, match="feature statistics are for"):
        heart.make_loaders(sites["va"], standardise={**stats, "features": FEATURES[:3]})


def test_standardise_is_a_checked_job_option(tmp_path):
    assert load_job_spec("heart_scaffold", REPO / "jobs").standardise == "federated"  # from its base job
    assert load_job_spec("fedavg", REPO / "jobs").standardise == "none"  # seg2d has no tabular features
    for body, message in [
        ("task: heart\nstandardise: zscore\n", "'standardise': 'zscore' is not one of federated, local, none"),
        ("task: seg2d\nstandardise: federated\n", "'standardise': 'federated' is not one of none for task seg2d"),
    ]:
        (tmp_path / "j").mkdir(exist_ok=True)
        (tmp_path / "j/job.yaml").write_text(body)
        with pytest.raises(ConfigError, match=message):
            load_job_spec("j", tmp_path)
    (tmp_path / "j/job.yaml").write_text('task: heart\npurpose: heart disease prediction research\nagreement: "1.0"\n')
    assert load_job_spec("j", tmp_path).standardise == "federated"  # the heart task's default


def test_federated_standardisation_runs_flare_statistics_first(tmp_path):
    """The exported heart job: FLARE's StatisticsController, then training (told the writer), then cross-site;
    without federated standardisation, no statistics workflow."""
    spec = load_job_spec("heart_fedavg", REPO / "jobs")
    server = json.loads((export_job(spec, tmp_path / "a") / "app/config/config_fed_server.json").read_text())
    client = json.loads((tmp_path / "a/heart_fedavg/app/config/config_fed_client.json").read_text())
    paths = [w["path"].rsplit(".", 1)[-1] for w in server["workflows"]]
    assert paths == ["StatisticsController", "ConsortiumFedAvg", "ConsortiumCrossSiteEval", "MembershipAudit"]
    assert (
        server["workflows"][1]["args"]["feature_stats_id"] == WRITER_ID == server["workflows"][0]["args"]["writer_id"]
    )
    executors = {e["executor"]["path"].rsplit(".", 1)[-1]: e for e in client["executors"]}
    assert executors["StatisticsExecutor"]["tasks"] == ["fed_stats_pre_run", "fed_stats"]
    assert executors["SiteTrainer"]["executor"]["args"]["standardise"] == "federated"
    assert any(c["path"].endswith("heart_stats.HeartStatistics") for c in client["components"])
    raw = json.loads(
        (
            export_job(replace(spec, standardise="none"), tmp_path / "b") / "app/config/config_fed_server.json"
        ).read_text()
    )
    assert [w["path"].rsplit(".", 1)[-1] for w in raw["workflows"]] == ["ConsortiumFedAvg", "ConsortiumCrossSiteEval",
                                                                       "MembershipAudit"]  # fmt: skip


def _heart_dp_job(tmp_path, dp_sgd: str) -> Path:
    """A variant of heart_fedavg_dp with its own dp_sgd mapping, in a copy of the jobs folder."""
    import shutil

    jobs = tmp_path / "jobs"
    if not jobs.exists():
        shutil.copytree(REPO / "jobs", jobs)
    (jobs / "bad_dp").mkdir(exist_ok=True)
    (jobs / "bad_dp" / "job.yaml").write_text(f"base: heart_fedavg_dp\ndp_sgd: {dp_sgd}\n")
    return jobs


@pytest.mark.parametrize("epsilon", ["0", "-1", "0.0"])
def test_heart_dp_job_refuses_epsilon_not_above_zero(tmp_path, epsilon):
    """An epsilon <= 0 is refused when the job loads, naming the setting: no job is exported or run."""
    jobs = _heart_dp_job(tmp_path, f"{{target_epsilon: {epsilon}, delta: 1.0e-5, max_grad_norm: 0.3}}")
    with pytest.raises(ConfigError, match=r"bad_dp/job.yaml: field dp_sgd.target_epsilon: must be a finite number > 0"):
        load_job_spec("bad_dp", jobs)
    assert load_job_spec("heart_fedavg_dp", jobs).dp_sgd.target_epsilon == 1  # the job itself loads


def test_heart_dp_refuses_delta_not_below_one_over_each_hospitals_patients(tmp_path):
    """delta >= 1 / n of a hospital's training patients is refused at that hospital before its first step,
    naming dp_sgd.delta and that hospital's n, even where its floor would accept the delta: nothing trained,
    nothing accounted. n is the hospital's own (30 at Switzerland, 199 at Cleveland)."""
    from consortium.privacy.budget import BudgetRefused, check_job
    from consortium.privacy.dpsgd import SiteDPSGD

    sites = load_site_configs(REPO / "site_configs" / "heart")
    spec = load_job_spec("heart_fedavg_dp", REPO / "jobs")
    for delta, refused_at in [(0.04, {"cleveland", "hungary", "switzerland", "va"}),  # 1/30 = 0.033
                              (0.02, {"cleveland", "hungary", "va"}),  # < 1/30, >= 1/85
                              (0.0055, {"cleveland"})]:  # < 1/172, >= 1/199  # fmt: skip
        settings = replace(spec.dp_sgd, delta=delta)
        for name, cfg in sites.items():
            # the hospitals' own floor (delta 1e-5) already refuses it, naming their file
            with pytest.raises(BudgetRefused, match=rf"accepts delta up to 1e-05 \(privacy.delta in .*{name}.yaml\)"):
                check_job(cfg.privacy, settings, site=name, source=cfg.source)
            check_job(replace(cfg.privacy, delta=0.5), settings, site=name, source=cfg.source)  # a lax floor passes
            loader, _, _ = heart.make_loaders(cfg, batch_size=spec.batch_size, standardise="local")
            n = len(loader.dataset)
            model = heart.build_model()
            before = [p.detach().clone() for p in model.parameters()]
            if name in refused_at:
                with pytest.raises(ValueError, match=rf"dp_sgd.delta {delta:g} must be below 1 / number of patients "
                                                     rf"\(1/{n} = "):  # fmt: skip
                    SiteDPSGD(settings, model=model, train_loader=loader, batch_size=spec.batch_size)
                assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # untrained
            else:
                dp = SiteDPSGD(settings, model=model, train_loader=loader, batch_size=spec.batch_size)
                assert dp.accountant.steps == 0 and dp.num_patients == n


def test_heart_dp_job_refuses_a_pretrained_checkpoint_that_does_not_fit(tmp_path):
    """A start checkpoint for another model (here seg2d-like keys, and a 12-feature linear layer) is refused at
    load, naming the setting and the first misfit: nothing is exported, trained or spent."""
    jobs = _heart_dp_job(tmp_path, "{target_epsilon: 1, delta: 1.0e-5, max_grad_norm: 0.3}")
    torch.save(torch.nn.Linear(12, 1).state_dict(), tmp_path / "narrow.pt")
    torch.save({"model.0.conv.weight": torch.zeros(4, 1, 3, 3)}, tmp_path / "unet.pt")
    for checkpoint, problem in [("narrow.pt", r"1 of another shape \(first: weight \(1, 12\) vs \(1, 13\)\)"),
                                ("unet.pt", "2 missing .*1 unexpected")]:  # fmt: skip
        (jobs / "bad_dp" / "job.yaml").write_text(f"base: heart_fedavg_dp\npretrained: {tmp_path / checkpoint}\n")
        with pytest.raises(ConfigError, match=rf"bad_dp/job.yaml: field pretrained: .*{checkpoint} does not fit the "
                                              rf"job's model: {problem}"):  # fmt: skip
            load_job_spec("bad_dp", jobs)
