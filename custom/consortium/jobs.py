"""Job definitions: read `jobs/<name>/job.yaml` (variants name a `base` and state only differences),
build the FLARE job from installed components, export it, or run it in the simulator."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from consortium import constants as C
from consortium.config import ConfigError, read_yaml_mapping

JOB_FILE = "job.yaml"
TASK_REQUEST_INTERVAL = 0.2  # seconds between an idle site's task requests
TASK_CHECK_PERIOD = 0.1  # seconds between the server workflow's checks for results
# Seconds a site waits for the server's reply once its result is sent (FLARE's default: its communication
# timeout, 300 s). Over a link that is cut now and then, the result can arrive while the reply is lost; the
# site then sat out the final validation and cross-site evaluation waiting for it. After this wait FLARE
# asks the server whether the task is still open, and sends again only if it is. Sending itself is not
# limited by this: FLARE counts it as idle time, reset by every chunk that moves.
SUBMIT_RESULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class JobSpec:
    name: str
    description: str = ""
    task: str = "seg2d"
    rounds: int = 10
    local_epochs: int = 2
    local_steps: int | None = None  # if set: exactly this many steps per round at every site (cycling its data)
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    batch_size: int = 8
    seed: int = 0
    min_clients: int = 2
    he: bool = False  # aggregate CKKS-encrypted updates; the server never holds a decryption key
    he_encrypt_layers: list[str] | None = None  # regexes of layers to encrypt (None: all); others are exposed
    algorithm: str = "fedavg"  # fedavg | fedprox | scaffold (local-training correction for non-IID sites)
    prox_mu: float = 0.0  # FedProx proximal coefficient (algorithm: fedprox); 0 is FedAvg
    finetune_epochs: int = 0  # after training, each site fine-tunes the global model locally (personalization)
    weighting: str = "steps"  # a site's aggregation weight: its local steps (FedAvg), or "uniform"
    server_momentum: float = 0.0  # FedAvgM's beta, applied at the sites (algorithms.ServerMomentum); 0: none
    cross_site: bool = True  # end with FLARE's cross-site evaluation: every model on every site's data
    # after training each site also trains the initial model alone (same epochs and schedule); cross-site
    # evaluation then scores the shared model against each site's own: "better than training alone?"
    # None: on, except in DP jobs (that model is not DP and leaves the site); true with DP is refused
    train_alone: bool | None = None
    # seconds a round (and each evaluation task) waits for a site before going on without it
    round_timeout: int = 600
    # DP-SGD at every site: {target_epsilon (whole job, per site) | noise_multiplier, delta, max_grad_norm}
    dp_sgd: dict | None = None
    # Gaussian noise on each site's update: {clip_norm, delta, target_epsilon | noise_multiplier}
    dp_update: dict | None = None
    # tabular tasks: z-score the features with the global mean/std from FLARE's federated statistics (federated),
    # each site's own (local), or not at all (none); None: the task's default (heart: federated; seg2d: none)
    standardise: str | None = None
    # a state dict the hospitals trust to start from (e.g. `consortium pretrain`'s public start), instead of a
    # random initial model; relative paths are from the working directory. Shipped in the job, checked by hash.
    pretrained: str | None = None

    @property
    def alone(self) -> bool:
        """Whether sites also train alone: train_alone, or by default whenever the job has no DP."""
        return self.train_alone if self.train_alone is not None else not (self.dp_sgd or self.dp_update)

    @property
    def round_budget(self) -> str:
        """A site's training per round, in words: "12 local steps" or "2 local epochs"."""
        return f"{self.local_steps} local steps" if self.local_steps else f"{self.local_epochs} local epochs"

    def with_overrides(self, source: Path | str, **changes) -> "JobSpec":
        """This spec with `changes` (None: keep the job's value), coerced and validated like the job file:
        the one path every command-line override takes, so `--rounds 0` or `--lr -1` is refused, not ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        known = {f.name for f in fields(JobSpec)}
        unknown = sorted(set(changes) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{source}: override '{unknown[0]}': not a job field (allowed: {allowed})")
        if not changes:
            return self
        spec = replace(self, **changes)
        _coerce_fields(spec, source, names=changes)
        return spec.validate(Path(source))

    def validate(self, source: Path) -> "JobSpec":
        from consortium.algorithms import ALGORITHMS, WEIGHTINGS
        from consortium.tasks import LR_SCHEDULES, STANDARDISE, TASKS

        modes = STANDARDISE.get(self.task, ("none",))
        if self.standardise is None:
            object.__setattr__(self, "standardise", modes[0])
        checks = [
            (self.task in TASKS, "task", f"unknown task {self.task!r}; known: {', '.join(TASKS)}"),
            (self.rounds >= 1, "rounds", "must be >= 1"),
            (self.local_epochs >= 1, "local_epochs", "must be >= 1"),
            (self.local_steps is None or self.local_steps >= 1, "local_steps", "must be >= 1 (or null for epochs)"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.min_clients >= 1, "min_clients", "must be >= 1"),
            (self.algorithm in ALGORITHMS, "algorithm", f"must be one of {', '.join(ALGORITHMS)}"),
            (self.prox_mu >= 0, "prox_mu", "must be >= 0"),
            (
                self.prox_mu == 0 or self.algorithm == "fedprox",
                "prox_mu",
                f"is only used by algorithm: fedprox (this job has algorithm: {self.algorithm}); remove it",
            ),
            (self.finetune_epochs >= 0, "finetune_epochs", "must be >= 0"),
            (self.weighting in WEIGHTINGS, "weighting", f"must be one of {', '.join(WEIGHTINGS)}"),
            (self.round_timeout >= 1, "round_timeout", "must be >= 1 (seconds a round waits for a site)"),
            (0 <= self.server_momentum < 1, "server_momentum", "must be >= 0 and < 1 (0: plain FedAvg; try 0.5)"),
            (
                self.standardise in modes,
                "standardise",
                f"{self.standardise!r} is not one of {', '.join(modes)} for task {self.task}"
                + (" (federated: the global mean/std from FLARE's federated statistics; local: each site's own; "
                   "none: raw features)" if len(modes) > 1 else " (it has no tabular features); remove it"),
            ),
        ]
        for ok, field, problem in checks:
            if not ok:
                raise ConfigError(f"{source}: field '{field}': {problem}")
        self._validate_dp(source)
        if self.pretrained is not None:
            self._validate_pretrained(source)
        return self

    def _validate_pretrained(self, source: Path) -> None:
        """Refuse at load a checkpoint that is missing or does not fit the task's model: nothing runs on it."""
        from consortium.public_start import load_pretrained
        from consortium.tasks import get_task

        path = Path(self.pretrained).expanduser().resolve()
        try:
            load_pretrained(get_task(self.task).build_model(), path)
        except ValueError as exc:
            raise ConfigError(f"{source}: field {exc}") from None
        object.__setattr__(self, "pretrained", str(path))

    def _validate_dp(self, source: Path) -> None:
        from consortium.filters.dp import GaussianUpdateFilter
        from consortium.privacy.dpsgd import DPSGDSettings

        try:
            if self.dp_sgd is not None:
                DPSGDSettings.from_dict(self.dp_sgd)
            if self.dp_update is not None:
                GaussianUpdateFilter.from_job(self.dp_update, rounds=self.rounds)
        except ValueError as exc:
            raise ConfigError(f"{source}: field {exc}") from None
        dp = "dp_sgd" if self.dp_sgd is not None else "dp_update" if self.dp_update is not None else None
        checks = [
            (
                self.dp_sgd is None or self.algorithm != "fedprox",
                "dp_sgd",
                "cannot be combined with algorithm: fedprox (DP-SGD clips per-sample gradients of the data loss "
                "only, so the proximal term would be dropped); use fedavg or scaffold",
            ),
            (
                self.dp_update is None or self.algorithm != "scaffold",
                "dp_update",
                "cannot be combined with algorithm: scaffold (the control variates would leave un-noised); "
                "use dp_sgd, which covers them",
            ),
            (
                self.dp_update is None or self.server_momentum == 0,
                "server_momentum",
                "must be 0 with dp_update: the update filter would clip and noise the momentum term as part of "
                "the site's update; use dp_sgd, with which server momentum is post-processing",
            ),
            (
                self.dp_sgd is None or self.local_steps is None,
                "local_steps",
                "must be null with dp_sgd: the DP-SGD accountant plans its steps from local_epochs",
            ),
            (
                dp is None or self.train_alone is not True,
                "train_alone",
                f"must be false with {dp}: the model a site trains alone is not differentially private and leaves "
                "the site for cross-site evaluation",
            ),
            (
                dp is None or self.finetune_epochs == 0,
                "finetune_epochs",
                f"must be 0 with {dp}: fine-tuning is not differentially private and its model leaves the site "
                "for cross-site evaluation",
            ),
        ]
        for ok, field, problem in checks:
            if not ok:
                raise ConfigError(f"{source}: field '{field}': {problem}")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"job definition {path} not found")
    return read_yaml_mapping(path)


def available_jobs(jobs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(jobs_dir).glob(f"*/{JOB_FILE}"))


def load_job_spec(name: str, jobs_dir: str | Path) -> JobSpec:
    """Resolve `jobs/<name>/job.yaml` over its chain of `base` jobs and validate it."""
    jobs_dir = Path(jobs_dir)
    if not (jobs_dir / name / JOB_FILE).is_file():
        known = ", ".join(available_jobs(jobs_dir)) or "none"
        raise ConfigError(f"unknown job '{name}': no {jobs_dir / name / JOB_FILE} (available jobs: {known})")
    chain, merged, current = [], {}, name
    while current:
        if current in chain:
            raise ConfigError(f"{jobs_dir / name / JOB_FILE}: 'base' chain loops: {' -> '.join(chain + [current])}")
        chain.append(current)
        raw = _read(jobs_dir / current / JOB_FILE)
        current = raw.pop("base", None)
        merged = {**raw, **merged}
    source = jobs_dir / name / JOB_FILE
    known = {f.name for f in fields(JobSpec)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(f"{source}: field '{unknown[0]}': unknown key. Allowed: base, {', '.join(sorted(known))}")
    merged.pop("name", None)
    try:
        spec = JobSpec(name=name, **merged)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _coerce_fields(spec, source)
    return spec.validate(source)


def _coerce_fields(spec: JobSpec, source, names=None) -> None:
    """YAML gives "1e-3" as a string: coerce each field (or those in `names`) to its declared type, in place."""
    for f in fields(JobSpec):
        if names is not None and f.name not in names:
            continue
        value = getattr(spec, f.name)
        try:
            object.__setattr__(spec, f.name, _coerce(f.type, value))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: field '{f.name}': {value!r} is not a valid {f.type} ({exc})") from None


def _whole(value) -> int:
    """An integer setting: 8 or "8", never 7.5 (which int() would silently truncate) or true."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"expected a whole number, got {value!r}")
    return int(value)


def _coerce(kind: str, value):
    if kind == "int":
        return _whole(value)
    if kind in ("float", "str"):
        return {"float": float, "str": str}[kind](value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if kind == "int | None":
        return None if value is None else _whole(value)
    if kind == "str | None":
        return None if value is None else str(value)
    if kind == "bool | None":
        if value is not None and not isinstance(value, bool):
            raise TypeError("expected true, false or null")
        return value
    if kind == "dict | None":
        if value is not None and not isinstance(value, dict):
            raise TypeError("expected a mapping of settings")
        return value
    if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise TypeError("expected a list of strings")
    return value


def build_job(spec: JobSpec, *, stream_logs: bool = True, resume_from: str = ""):
    """The FLARE job for `spec`; components are class paths of the installed `consortium` package.

    `stream_logs=False` leaves out the site-log streamer: the simulator has no receiver for it.
    `resume_from`: the id of a job of the same settings whose last complete round this job continues from."""
    from nvflare.app_common.logging.job_log_streamer import JobLogStreamer
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.defs import FilterType

    from consortium.aggregators.he import HESumAggregator
    from consortium.aggregators.weighted import WeightedAverage
    from consortium.executors.trainer import SiteTrainer
    from consortium.filters.he import HEDecryptModel, HEEncryptUpdate
    from consortium.workflows.cross_site import ConsortiumCrossSiteEval
    from consortium.workflows.fedavg import ConsortiumFedAvg

    job = FedJob(name=spec.name, min_clients=spec.min_clients)
    job.set_app_packages(["consortium"])  # sites run the reviewed, installed package: ship no custom code
    feature_stats_id = ""
    if spec.standardise == "federated":  # FLARE's federated statistics first: the features' global mean/std
        from consortium.data.heart_stats import add_federated_statistics

        feature_stats_id = add_federated_statistics(job)
    controller = ConsortiumFedAvg(
        task=spec.task,
        seed=spec.seed,
        num_rounds=spec.rounds,
        aggregator=HESumAggregator() if spec.he else WeightedAverage(),
        task_check_period=TASK_CHECK_PERIOD,
        algorithm=spec.algorithm,
        fedprox_mu=spec.prox_mu if spec.algorithm == "fedprox" and spec.prox_mu > 0 else None,
        finetune_epochs=spec.finetune_epochs,
        train_alone=spec.alone,
        round_timeout=spec.round_timeout,
        resume_from=resume_from,
        feature_stats_id=feature_stats_id,
        **_pretrained_args(job, spec),
        run_info={
            "job": spec.name,
            "he": spec.he,
            "local_epochs": spec.local_epochs,
            "lr": spec.lr,
            **({"server_momentum": spec.server_momentum} if spec.server_momentum else {}),
            **({"standardise": spec.standardise} if spec.standardise != "none" else {}),
            **({"dp_sgd": spec.dp_sgd} if spec.dp_sgd else {}),
            **({"dp_update": spec.dp_update} if spec.dp_update else {}),
            **({"pretrained": Path(spec.pretrained).name} if spec.pretrained else {}),
        },
    )
    job.to_server(controller)
    if spec.cross_site:  # FLARE's cross-site evaluation runs after training, on the saved global model
        job.to_server(ConsortiumCrossSiteEval(task_check_period=TASK_CHECK_PERIOD, timeout=spec.round_timeout))
    if spec.dp_update:  # noise on the update before it is encrypted: this result filter precedes HEEncryptUpdate
        from consortium.filters.dp import GaussianUpdateFilter

        job.to_clients(
            GaussianUpdateFilter.from_job(spec.dp_update, rounds=spec.rounds),
            filter_type=FilterType.TASK_RESULT,
            tasks=[C.TASK_TRAIN, C.TASK_SUBMIT_MODEL],
        )
    if spec.he:
        # sites: weight + encrypt what leaves, decrypt what arrives; the server only adds ciphertexts
        job.to_clients(
            HEEncryptUpdate(encrypt_layers=spec.he_encrypt_layers),
            filter_type=FilterType.TASK_RESULT,
            tasks=[C.TASK_TRAIN, C.TASK_SUBMIT_MODEL],  # a site's own model leaves it encrypted too
        )
        job.to_clients(HEDecryptModel(), filter_type=FilterType.TASK_DATA, tasks=[C.TASK_TRAIN, C.TASK_VALIDATE])
    if spec.dp_update:  # after HEDecryptModel: the update filter needs the plaintext model the site received
        from consortium.filters.dp import KeepGlobalModel

        # FLARE wants identical task sets for filters of one job: the same as HEDecryptModel's
        job.to_clients(KeepGlobalModel(), filter_type=FilterType.TASK_DATA, tasks=[C.TASK_TRAIN, C.TASK_VALIDATE])
    # Idle sites ask the server for work every `task_request_interval` s (FLARE default 2 s): with rounds of
    # a few seconds that wait dominated each round, so ask often; the requests are tiny.
    job.to_server({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})
    trainer = SiteTrainer(
        task=spec.task,
        local_epochs=spec.local_epochs,
        local_steps=spec.local_steps,
        lr=spec.lr,
        lr_schedule=spec.lr_schedule,
        batch_size=spec.batch_size,
        seed=spec.seed,
        algorithm=spec.algorithm,
        finetune_epochs=spec.finetune_epochs,
        weighting=spec.weighting,
        dp_sgd=spec.dp_sgd,
        server_momentum=spec.server_momentum,
        standardise=spec.standardise,
    )
    job.to_clients(trainer, tasks=[C.TASK_TRAIN, C.TASK_VALIDATE, C.TASK_SUBMIT_MODEL, C.TASK_TRAIN_ALONE])
    job.to_clients({"submit_task_result_timeout": SUBMIT_RESULT_TIMEOUT})  # a variable of the client app config
    # Stream each site's job log to the server, so `consortium logs/status` show a site's own errors.
    if stream_logs:
        job.to_clients(JobLogStreamer(), id="log_streamer")
    return job


def _pretrained_args(job, spec: JobSpec) -> dict:
    """Ship the public start in the server app's config folder (not custom/: it is data, not code)."""
    if not spec.pretrained:
        return {}
    from consortium.public_start import sha256

    job.add_file_to_server(spec.pretrained, app_folder_type="config")
    return {"pretrained": Path(spec.pretrained).name, "pretrained_sha256": sha256(Path(spec.pretrained))}


def export_job(spec: JobSpec, out_dir: str | Path, *, resume_from: str = "") -> Path:
    """Write the submit-ready FLARE job folder (meta.json + app configs) to `out_dir/<name>`."""
    out_dir = Path(out_dir)
    build_job(spec, resume_from=resume_from).export_job(str(out_dir))
    return out_dir / spec.name


def simulate(spec: JobSpec, *, sites: list[str], site_config_dir: Path, workspace: Path, threads: int | None = None):
    """Run the job in the FLARE simulator with one simulated client per site config."""
    from consortium.deploy.policy import write_resources_policy

    os.environ[C.ENV_SITE_CONFIG_DIR] = str(Path(site_config_dir).resolve())
    write_resources_policy(Path(workspace) / "local")  # the simulator copies local/ to every participant
    if spec.he:  # contexts generated for this run; the simulator copies startup/ to every participant
        from consortium.he.contexts import write_contexts

        write_contexts(Path(workspace) / "startup")
    job = build_job(spec, stream_logs=False)
    return job.simulator_run(str(workspace), clients=sites, threads=threads or len(sites), log_config="concise")
