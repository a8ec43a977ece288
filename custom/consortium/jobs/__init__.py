"""Job definitions: `jobs/<name>/job.yaml` (variants name a `base` and state only differences) parsed once
into a typed JobSpec (spec.py, checks.py, load.py); build.py turns it into the FLARE job, exports or simulates it."""

from consortium.jobs.build import (
    INLINE_RESULTS,
    SUBMIT_RESULT_TIMEOUT,
    TASK_CHECK_PERIOD,
    TASK_REQUEST_INTERVAL,
    build_job,
    export_job,
    simulate,
)
from consortium.jobs.load import JOB_FILE, available_jobs, load_job_spec
from consortium.jobs.spec import JOB_DEFAULTS, HESettings, JobSpec

__all__ = [
    "INLINE_RESULTS",
    "JOB_DEFAULTS",
    "JOB_FILE",
    "SUBMIT_RESULT_TIMEOUT",
    "TASK_CHECK_PERIOD",
    "TASK_REQUEST_INTERVAL",
    "HESettings",
    "JobSpec",
    "available_jobs",
    "build_job",
    "export_job",
    "load_job_spec",
    "simulate",
]
