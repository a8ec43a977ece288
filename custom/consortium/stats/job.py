"""The pre-flight as a FLARE job: FLARE's StatisticsController and StatisticsExecutor with our site generator.

The same components and privacy cleansers as FLARE's own `StatsJob` / `FedStatsRecipe`, but sent to every
client (`to_clients`, like the training jobs) instead of a list of named sites, with no custom code shipped
(sites run the installed `consortium` package), and each site's log streamed to the server in a consortium.

`python -m consortium.stats.job SITES SITE_CONFIGS WORKSPACE` runs it in the FLARE simulator (what
`consortium simulate preflight` starts in a child process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from consortium.stats import features as F

WRITER_ID = "stats_writer"
GENERATOR_ID = "stats_generator"
# FLARE's JsonStatsFileWriter writes here, relative to the server's job folder.
STATS_OUTPUT = "preflight/statistics.json"

# What FLARE computes. Both HU features use fixed global bins (no range estimate, nothing about a site's
# extremes leaves it); every other feature gets 10 bins over the noised global min/max FLARE estimates.
STATISTIC_CONFIGS = {
    "count": {},
    "sum": {},
    "mean": {},
    "stddev": {},
    "histogram": {
        "*": {"bins": 10},
        F.BODY_HU: {"bins": F.HU_HIST_BINS, "range": list(F.HU_HIST_RANGE)},
        F.LESION_HU: {"bins": F.HU_HIST_BINS, "range": list(F.HU_HIST_RANGE)},
    },
}

# Privacy cleansers, as FLARE's federated-statistics examples configure them (StatsJob's defaults):
MIN_COUNT = 10  # a feature with fewer values at a site is sent as its count only (no sum, mean, histogram ...)
MIN_NOISE_LEVEL = 0.1  # local min/max (used for histogram ranges) are moved outwards by 10-30 % before leaving
MAX_NOISE_LEVEL = 0.3
MAX_BINS_PERCENT = 10  # a histogram is sent only if its bins are fewer than 10 % of the site's values
RESULT_WAIT_TIMEOUT = 60  # seconds the server waits for the last site's statistics
# the built-in job's purpose (one of the charter's: provisioning/consortium.yaml); it runs under the agreement in force
PURPOSE = "data quality assessment"


def build_preflight_job(*, stream_logs: bool = True, agreement: str | None = None):
    """The FLARE job of the pre-flight; components are referenced by class path, none is shipped. Its meta
    declares its purpose and `agreement` (the charter's version), which every site's kit checks."""
    from nvflare.app_common.executors.statistics.statistics_executor import StatisticsExecutor
    from nvflare.app_common.filters.statistics_privacy_filter import StatisticsPrivacyFilter
    from nvflare.app_common.statistics.histogram_bins_cleanser import HistogramBinsCleanser
    from nvflare.app_common.statistics.json_stats_file_persistor import OBJECT_ENCODER_PATH, JsonStatsFileWriter
    from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
    from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax
    from nvflare.app_common.workflows.statistics_controller import StatisticsController
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.defs import FilterType

    from consortium.governance.props import meta_props
    from consortium.jobs import INLINE_RESULTS, TASK_REQUEST_INTERVAL
    from consortium.stats.imaging import ImagingStatistics

    job = FedJob(name=F.PREFLIGHT_JOB, meta_props=meta_props(PURPOSE, agreement or ""))
    job.set_app_packages(["consortium"])  # sites run the reviewed, installed package
    controller = StatisticsController(
        statistic_configs=STATISTIC_CONFIGS,
        writer_id=WRITER_ID,
        enable_pre_run_task=False,
        result_wait_timeout=RESULT_WAIT_TIMEOUT,
    )
    job.to_server(controller)
    job.to_server(JsonStatsFileWriter(output_path=STATS_OUTPUT, json_encoder_path=OBJECT_ENCODER_PATH), id=WRITER_ID)
    job.to_server({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})

    job.to_clients(dict(INLINE_RESULTS))  # a site lost mid-upload never fails the server's job process
    job.to_clients(ImagingStatistics(), id=GENERATOR_ID)
    job.to_clients(StatisticsExecutor(generator_id=GENERATOR_ID), tasks=["fed_stats_pre_run", "fed_stats"])
    cleansers = [
        job.to_clients(MinCountCleanser(min_count=MIN_COUNT), id="min_count_cleanser"),
        job.to_clients(
            AddNoiseToMinMax(min_noise_level=MIN_NOISE_LEVEL, max_noise_level=MAX_NOISE_LEVEL),
            id="min_max_noise_cleanser",
        ),
        job.to_clients(HistogramBinsCleanser(max_bins_percent=MAX_BINS_PERCENT), id="hist_bins_cleanser"),
    ]
    job.to_clients(
        StatisticsPrivacyFilter(result_cleanser_ids=cleansers), filter_type=FilterType.TASK_RESULT, tasks=["fed_stats"]
    )
    if stream_logs:  # `consortium logs/status` show a site's own errors (no receiver in the simulator)
        from nvflare.app_common.logging.job_log_streamer import JobLogStreamer

        job.to_clients(JobLogStreamer(), id="log_streamer")
    return job


def check_charter(charter) -> None:
    """The charter allows the pre-flight's purpose (ConfigError naming the charter's file otherwise)."""
    from consortium.config import ConfigError

    problem = charter.purpose_problem(PURPOSE)
    if problem:
        raise ConfigError(f"the built-in pre-flight job's field 'purpose': {problem}. Add {PURPOSE!r} to the "
                          "charter's purposes to run it")  # fmt: skip


def export_preflight_job(out_dir: str | Path, charter=None) -> Path:
    """Write the submit-ready FLARE job folder to `out_dir/preflight`, under the consortium's `charter`."""
    from consortium.governance.props import job_props, seal

    version = charter.agreement.version if charter is not None else ""
    if charter is not None:
        check_charter(charter)
    build_preflight_job(agreement=version).export_job(str(out_dir))
    seal(Path(out_dir) / F.PREFLIGHT_JOB, job_props(PURPOSE, version, charter))
    return Path(out_dir) / F.PREFLIGHT_JOB


def simulate_preflight(*, sites: list[str], site_config_dir: Path, workspace: Path):
    """Run the pre-flight in the FLARE simulator, one client per site config."""
    from consortium import constants as C
    from consortium.deploy.policy import write_resources_policy

    os.environ[C.ENV_SITE_CONFIG_DIR] = str(Path(site_config_dir).resolve())
    write_resources_policy(Path(workspace) / "local")  # the simulator copies local/ to every participant
    job = build_preflight_job(stream_logs=False)
    from consortium.jobs.simulator import run  # FLARE's simulator without its same-name race (jobs/simulator.py)

    return run(job, str(workspace), clients=sites, threads=len(sites), log_config="concise")


def simulator_stats_file(workspace: Path) -> Path:
    """Where the simulator's server leaves FLARE's statistics JSON."""
    return Path(workspace) / "server" / "simulate_job" / STATS_OUTPUT


if __name__ == "__main__":
    from consortium.runtime import stop_simulator_on_term

    stop_simulator_on_term()
    sites_arg, configs_arg, workspace_arg = sys.argv[1:4]
    sites = sites_arg.split(",")
    result = simulate_preflight(sites=sites, site_config_dir=Path(configs_arg), workspace=Path(workspace_arg))
    sys.exit(0 if result in (None, 0) else 1)
