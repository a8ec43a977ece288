"""The run record (`metrics.json`): its one schema, for the server workflows that write it and the report that
reads it, so every key is spelled once and no reader can look for a key that no writer sets.

A site's entry in a round, in `final` and in `alone` holds the site's metrics under the names in
`consortium.constants` (METRIC_*), plus `Site.WEIGHT` in a round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypedDict

from consortium import constants as C

SCHEMA_VERSION = 1  # raise it when a key changes meaning or goes away; a reader refuses a newer record
FILE = C.METRICS_FILE

# -- top-level keys
VERSION = "schema_version"  # absent in records written before it existed: those have version 1's keys
TASK = "task"
NUM_ROUNDS = "num_rounds"
META = "meta"
ROUNDS = "rounds"
FINAL = "final"  # site -> metrics of the final global model at that site (and fine-tuned there)
ALONE = "alone"  # site -> metrics of the model it trained alone (train_alone)
CROSS_SITE = "cross_site"
PRESENT = "present"  # sites present at the end of training (cross-site evaluation asks only them)
REFUSED = "refused"  # site -> Refusal: refused to train for privacy reasons
ERRORS = "errors"  # site -> its own error text
STOPPED = "stopped"  # why the job ended before its last round
RESUMED = "resumed"  # list of Resume, one per `consortium submit --resume`
WALL_SECONDS = "wall_seconds"  # the whole simulation, added by `consortium simulate`
# site -> its membership-inference scores (C.AUDIT_KEYS, C.METRIC_AUDIT_SECONDS) or C.METRIC_AUDIT_ERROR; absent in
# records written before the audit existed, or of jobs with `audit: false`
AUDIT = "audit"
EXCHANGES = "exchanges"  # ExchangesEntry: the job's model exchanges per site, from the server's audit trail


class Meta:
    """Keys of the record's meta: the job's settings under the job spec's own names (jobs.py hands them to the
    workflow as run_info), then what the workflow adds."""

    JOB = "job"
    HE = "he"
    LOCAL_EPOCHS = "local_epochs"
    LR = "lr"
    SERVER_MOMENTUM = "server_momentum"
    SERVER_OPTIMIZER = "server_optimizer"  # {name, lr, beta1, beta2, tau}: FedAdam/FedYogi/FedAdagrad (server_opt.py)
    STANDARDISE = "standardise"
    DP_SGD = "dp_sgd"  # the job's DP-SGD settings (training at the site)
    DP_UPDATE = "dp_update"  # the job's Gaussian noise on each site's update (filters/dp.py)
    PRETRAINED = "pretrained"
    AUDIT = "audit"  # the job's audit settings {references, epochs} (privacy/settings.py AuditSettings)
    TASK = "task"
    ALGORITHM = "algorithm"
    ROUNDS = "rounds"
    METRIC = "metric"  # the task's METRIC_NAME (Dice, accuracy)
    ROUND_TIMEOUT = "round_timeout"
    RUN_CHAIN = C.META_RUN_CHAIN  # job ids of one run across resumes
    FEATURE_STATS = C.META_FEATURE_STATS
    # {purpose, agreement: {id, version}, charter_sha256, job_sha256, approvals: [{site, by}], refusals: [{site,
    # reason}]}: what the job ran under and who approved or refused it (consortium.governance.record)
    GOVERNANCE = "governance"


class Round:
    """Keys of one entry of the record's rounds."""

    ROUND = "round"  # 0-based, as FLARE counts
    JOB = "job"
    SECONDS = "seconds"
    SITES = "sites"  # site -> its metrics, for the sites that contributed
    TARGETS = "targets"
    CONTRIBUTED = "contributed"
    DROPPED = "dropped"  # site -> why
    NOT_AWAITED = "not_awaited"
    AGGREGATED = "aggregated"
    SERVER_RSS_MB = "server_rss_mb"  # the server job process's resident memory after the round (workflows/memory.py)
    SERVER_RSS_UNTRIMMED_MB = "server_rss_untrimmed_mb"  # the same before the allocator gave freed pages back


class Site:
    WEIGHT = "weight"  # the site's aggregation weight in the round (job setting `weighting`)


class Matrix:
    """Keys of the cross-site matrix (also written alone to cross_site.json)."""

    MODELS = "models"
    SITES = "sites"
    SCORES = "scores"  # model -> data site -> score
    GLOBAL = "global"  # the final global model's name among the models


class Refusal:
    ROUND = "round"
    REASON = "reason"


class Exchanges:
    """Keys of the record's exchanges (written at the end of the job by consortium.audit_trail.summary)."""

    TRAIL = "trail"  # the server's trail file
    HEAD = "head"  # the hash of its last record when the job ended: `consortium audit verify --head`
    RECORDS = "records"  # records in the trail (every job's) when the job ended
    PROBLEM = "problem"  # None, or the first broken record when the trail did not verify
    SITES = "sites"  # site -> {TO_SITE: side, FROM_SITE: side, DP_SPENT: {mechanism: epsilon}}
    TO_SITE = "to_site"  # payloads the server sent to the site
    FROM_SITE = "from_site"  # payloads the server received from it
    COUNT = "count"
    BYTES = "bytes"
    FIRST = "first"  # {seq, sha256} of the first record that way
    LAST = "last"
    DP_SPENT = "dp_spent"  # the epsilon the site's last result reported, per DP mechanism (dp_sgd, dp_update)


class Resume:
    JOB = "job"
    FROM_JOB = "from_job"
    AFTER_ROUND = "after_round"


# the DP settings a job can record, and the site metric holding each one's epsilon spent so far (per round)
DP_SETTINGS = (Meta.DP_SGD, Meta.DP_UPDATE)
DP_EPSILON = {Meta.DP_SGD: C.METRIC_DP_EPSILON, Meta.DP_UPDATE: C.METRIC_DP_UPDATE_EPSILON}


# -- the shapes (value types) of the keys above; tests/unit/test_runrecord.py keeps both in step
class RunMeta(TypedDict, total=False):
    job: str
    he: bool
    local_epochs: int
    lr: float
    server_momentum: float
    server_optimizer: dict[str, Any]
    standardise: str
    dp_sgd: dict[str, Any]
    dp_update: dict[str, Any]
    pretrained: str
    audit: dict[str, Any]
    task: str
    algorithm: str
    rounds: int
    metric: str
    round_timeout: int
    run_chain: list[str]
    feature_stats: dict[str, Any]
    governance: dict[str, Any]


class RoundEntry(TypedDict, total=False):
    round: int
    job: str
    seconds: float
    sites: dict[str, dict[str, Any]]
    targets: list[str]
    contributed: list[str]
    dropped: dict[str, str]
    not_awaited: list[str]
    aggregated: bool
    server_rss_mb: float
    server_rss_untrimmed_mb: float


class CrossSiteMatrix(TypedDict):
    models: list[str]
    sites: list[str]
    scores: dict[str, dict[str, float | None]]


class RefusalEntry(TypedDict):
    round: int
    reason: str


class ExchangesEntry(TypedDict):
    trail: str
    head: str
    records: int
    problem: str | None
    sites: dict[str, dict[str, Any]]


class ResumeEntry(TypedDict):
    job: str
    from_job: str
    after_round: int


class RunRecord(TypedDict, total=False):
    schema_version: int
    task: str
    num_rounds: int
    meta: RunMeta
    rounds: list[RoundEntry]
    final: dict[str, dict[str, Any]]
    alone: dict[str, dict[str, Any]]
    cross_site: CrossSiteMatrix
    present: list[str]
    refused: dict[str, RefusalEntry]
    errors: dict[str, str]
    stopped: str
    resumed: list[ResumeEntry]
    wall_seconds: float
    audit: dict[str, dict[str, Any]]
    exchanges: ExchangesEntry


class RecordError(ValueError):
    """metrics.json is missing, unreadable or newer than this package; the message says what to do."""


def new(*, task: str, num_rounds: int, meta: RunMeta) -> RunRecord:
    """The record of a job before its first round."""
    return {VERSION: SCHEMA_VERSION, TASK: task, NUM_ROUNDS: num_rounds, META: meta, ROUNDS: [], FINAL: {}}


def write(run_dir, record: RunRecord) -> Path:
    """Write `run_dir`/metrics.json atomically (a reader, or a crash, never sees half a file)."""
    path = Path(run_dir) / FILE
    data = {VERSION: SCHEMA_VERSION, **{k: v for k, v in record.items() if k != VERSION}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)
    return path


def read(run_dir, *, missing_ok: bool = False) -> RunRecord:
    """The record in `run_dir`; {} if there is none yet and `missing_ok` (before the workflow's first round)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        if missing_ok:
            return {}
        raise RecordError(
            f"{path} not found: run a job first, e.g. `consortium simulate fedavg` or `consortium submit fedavg`"
        )
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc}); run the job again") from None
    version = record.get(VERSION, 1) if isinstance(record, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordError(f"{path} is not a run record (no JSON object with an integer {VERSION}); run the job again")
    if version > SCHEMA_VERSION:
        raise RecordError(
            f"{path} has {VERSION} {version}, newer than this consortium package reads ({SCHEMA_VERSION}): "
            "upgrade the package (`pip install -e .`) on this machine"
        )
    return record
