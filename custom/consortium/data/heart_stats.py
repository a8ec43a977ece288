"""The heart features' global mean and standard deviation by FLARE's federated statistics (job option
`standardise: federated`), the job's first workflow; no row leaves a site.

FLARE's StatisticsController asks every site's StatisticsExecutor, which asks `HeartStatistics`, for each
feature of the site's training rows: count and sum (first pass; the server's global mean is sum / count),
then the sum of squared deviations from that global mean (second pass; the server adds them up:
variance = sum / (N - 1)). `FeatureStatsWriter` keeps the global mean and std for the training workflow,
which sends them with the model to every site (constants.META_FEATURE_STATS), and writes the whole result,
per site and global, to `feature_stats.json` in the job's run directory.
"""

from __future__ import annotations

import json
import os

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import DataType, Feature, Statistics
from nvflare.app_common.abstract.statistics_writer import StatisticsWriter
from nvflare.app_common.app_constant import StatisticsConstants as StC

from consortium.data.heart import FEATURES

DATASET = "train"  # statistics of the training rows only, as FLamby normalises; test rows get the same transform
STATISTICS = {StC.STATS_COUNT: {}, StC.STATS_SUM: {}, StC.STATS_MEAN: {}, StC.STATS_STDDEV: {}}
PRECISION = 10  # decimals FLARE rounds every site and global statistic to (its default, 4, is coarse for sums)
GENERATOR_ID = "heart_statistics"
WRITER_ID = "feature_stats_writer"
STATS_FILE = "feature_stats.json"


class HeartStatistics(Statistics):
    """Site side: statistics of this site's training rows, from the data its own site config names."""

    def __init__(self):
        super().__init__()
        self.rows: np.ndarray | None = None  # [n, 13] float64, set by initialize (or by a test)

    def initialize(self, fl_ctx: FLContext):
        from consortium.config import load_site_config
        from consortium.executors.site_config import site_config_dir
        from consortium.tasks.heart import load_site

        cfg = load_site_config(fl_ctx.get_identity_name(), site_config_dir(fl_ctx))
        (x_train, _), _, _ = load_site(cfg)
        self.rows = np.asarray(x_train, dtype=np.float64)

    def features(self) -> dict:
        return {DATASET: [Feature(name, DataType.FLOAT) for name in FEATURES]}

    def _column(self, dataset_name: str, feature_name: str) -> np.ndarray:
        if dataset_name != DATASET or feature_name not in FEATURES:
            raise ValueError(f"no statistics for {dataset_name}/{feature_name}: only {DATASET} rows of {FEATURES}")
        return self.rows[:, FEATURES.index(feature_name)]

    def count(self, dataset_name: str, feature_name: str) -> int:
        return int(len(self._column(dataset_name, feature_name)))

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).sum())

    def mean(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).mean())

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return float(self._column(dataset_name, feature_name).std(ddof=1))

    def variance_with_mean(self, dataset_name: str, feature_name: str, global_mean: float, global_count: float):
        """This site's share of the global variance: sum (x - global mean)^2 / (N - 1), N all sites' rows."""
        column = self._column(dataset_name, feature_name)
        return float(((column - global_mean) ** 2).sum() / (global_count - 1))


def global_statistics(result: dict) -> dict:
    """The global mean and std per feature (and who contributed) from StatisticsController's result, in the form
    the sites receive (tasks.heart.Standardiser.to_meta); refuses a result that lacks a feature."""
    mean, std, counts = [], [], set()
    sites: set[str] = set()
    for name in FEATURES:
        try:
            stats = result[name]
            mean.append(float(stats[StC.STATS_MEAN][StC.GLOBAL][DATASET]))
            std.append(float(stats[StC.STATS_STDDEV][StC.GLOBAL][DATASET]))
            counts.add(int(stats[StC.STATS_COUNT][StC.GLOBAL][DATASET]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"federated statistics: no global mean/stddev/count of feature {name!r} ({exc})") from None
        sites |= set(stats[StC.STATS_COUNT]) - {StC.GLOBAL}
    if len(counts) != 1:
        raise ValueError(f"federated statistics: features counted over different rows ({sorted(counts)})")
    source = f"the federated statistics of {len(sites)} sites ({counts.pop()} training rows)"
    return {"features": FEATURES, "mean": mean, "std": std, "source": source, "sites": sorted(sites)}


class FeatureStatsWriter(StatisticsWriter):
    """Server side: the StatisticsController's writer. Keeps the global statistics (`result`) for the training
    workflow and writes them with the per-site ones to the run directory."""

    def __init__(self):
        super().__init__()
        self.result: dict | None = None

    def save(self, data: dict, overwrite_existing: bool, fl_ctx: FLContext):
        self.result = global_statistics(data)
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        with open(os.path.join(run_dir, STATS_FILE), "w") as f:
            json.dump({"global": self.result, "statistics": data}, f, indent=1, default=float)
        self.log_info(fl_ctx, f"feature standardisation: global mean and std from {self.result['source']}")


def add_federated_statistics(job) -> str:
    """Put FLARE's federated statistics into `job` ahead of its training workflow; returns the writer's id."""
    from nvflare.app_common.executors.statistics.statistics_executor import StatisticsExecutor
    from nvflare.app_common.workflows.statistics_controller import StatisticsController

    job.to_server(FeatureStatsWriter(), id=WRITER_ID)
    job.to_server(StatisticsController(statistic_configs=STATISTICS, writer_id=WRITER_ID, precision=PRECISION))
    job.to_clients(HeartStatistics(), id=GENERATOR_ID)
    job.to_clients(
        StatisticsExecutor(generator_id=GENERATOR_ID, precision=PRECISION),
        tasks=[StC.FED_STATS_PRE_RUN, StC.FED_STATS_TASK],
    )
    return WRITER_ID
