"""Checks of a whole job spec: each field's range, settings that do not fit together, the pretrained start.
Every refusal names the job file and the field, and says how to fix it."""

from __future__ import annotations

from pathlib import Path

from consortium.config import ConfigError


def validate(spec, source: Path) -> None:
    """Refuse a spec whose settings are out of range or do not fit together; fills in the task's default
    standardisation and resolves the pretrained path."""
    from consortium.algorithms import ALGORITHMS, WEIGHTINGS
    from consortium.tasks import LR_SCHEDULES, STANDARDISE, TASKS

    modes = STANDARDISE.get(spec.task, ("none",))
    if spec.standardise is None:
        object.__setattr__(spec, "standardise", modes[0])
    _refuse_failed(source, [
        (spec.task in TASKS, "task", f"unknown task {spec.task!r}; known: {', '.join(TASKS)}"),
        (spec.rounds >= 1, "rounds", "must be >= 1"),
        (spec.local_epochs >= 1, "local_epochs", "must be >= 1"),
        (spec.local_steps is None or spec.local_steps >= 1, "local_steps", "must be >= 1 (or null for epochs)"),
        (spec.lr > 0, "lr", "must be > 0"),
        (spec.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
        (spec.batch_size >= 1, "batch_size", "must be >= 1"),
        (spec.min_clients >= 1, "min_clients", "must be >= 1"),
        (spec.algorithm in ALGORITHMS, "algorithm", f"must be one of {', '.join(ALGORITHMS)}"),
        (spec.prox_mu >= 0, "prox_mu", "must be >= 0"),
        (
            spec.prox_mu == 0 or spec.algorithm == "fedprox",
            "prox_mu",
            f"is only used by algorithm: fedprox (this job has algorithm: {spec.algorithm}); remove it",
        ),
        (spec.finetune_epochs >= 0, "finetune_epochs", "must be >= 0"),
        (spec.weighting in WEIGHTINGS, "weighting", f"must be one of {', '.join(WEIGHTINGS)}"),
        (spec.round_timeout >= 1, "round_timeout", "must be >= 1 (seconds a round waits for a site)"),
        (0 <= spec.server_momentum < 1, "server_momentum", "must be >= 0 and < 1 (0: plain FedAvg; try 0.5)"),
        (
            spec.standardise in modes,
            "standardise",
            f"{spec.standardise!r} is not one of {', '.join(modes)} for task {spec.task}"
            + (" (federated: the global mean/std from FLARE's federated statistics; local: each site's own; "
               "none: raw features)" if len(modes) > 1 else " (it has no tabular features); remove it"),
        ),
    ])  # fmt: skip
    _validate_dp(spec, source)
    if spec.server_optimizer is not None:
        _validate_server_optimizer(spec, source)
    if spec.pretrained is not None:
        _validate_pretrained(spec, source)
    _validate_governance(spec, source)
    if spec.he is not None and spec.he.quantised is not None:
        _validate_quantised(spec, source)


def _validate_quantised(spec, source: Path) -> None:
    """The quantised HE packing's digits have headroom for max_sites sites of weight <= max_weight: refuse a job
    that could exceed either (the encrypted sum would overflow silently)."""
    settings = dict(spec.he.quantised)
    weight_needed = 1 if spec.weighting == "uniform" else (spec.local_steps if spec.weighting == "steps" else None)
    _refuse_failed(source, [
        (
            spec.algorithm != "scaffold" and spec.server_optimizer is None,
            "he.pack",
            "quantised takes its ranges from the global model, not measured with SCAFFOLD's controls or a server "
            "optimizer's updates; use pack: ckks (the default) with them",
        ),
        (
            spec.min_clients <= settings["max_sites"],
            "he.max_sites",
            f"{settings['max_sites']} is below min_clients {spec.min_clients}; set it to the number of sites",
        ),
        (
            settings["max_weight"] >= (weight_needed or 2),
            "he.max_weight",
            f"{settings['max_weight']} is below a site's aggregation weight with weighting: {spec.weighting} "
            + (f"(local_steps {weight_needed})" if weight_needed else "(its steps or samples)")
            + "; set it to the largest weight a site may have, or use weighting: uniform",
        ),
    ])  # fmt: skip


def _validate_governance(spec, source: Path) -> None:
    """Every job states its purpose and agreement version (the charter's check of both: governance/charter.py)."""
    _refuse_failed(source, [
        (
            bool((spec.purpose or "").strip()),
            "purpose",
            "missing: every job states what it is for, one of the charter's purposes (provisioning/consortium.yaml "
            "charter.purposes), e.g. `purpose: lesion segmentation research`",
        ),
        (
            bool((spec.agreement or "").strip()),
            "agreement",
            "missing: every job states the version of the data-sharing agreement it runs under "
            '(provisioning/consortium.yaml charter.agreement.version), e.g. `agreement: "1.0"`',
        ),
    ])  # fmt: skip


def _refuse_failed(source: Path, checks: list) -> None:
    for ok, field, problem in checks:
        if not ok:
            raise ConfigError(f"{source}: field '{field}': {problem}")


def _validate_pretrained(spec, source: Path) -> None:
    """Refuse at load a checkpoint that is missing or does not fit the task's model: nothing runs on it."""
    from consortium.public_start import load_pretrained
    from consortium.tasks import get_task

    path = Path(spec.pretrained).expanduser().resolve()
    try:
        load_pretrained(get_task(spec.task).build_model(), path)
    except ValueError as exc:
        raise ConfigError(f"{source}: field {exc}") from None
    object.__setattr__(spec, "pretrained", str(path))


def _validate_dp(spec, source: Path) -> None:
    """The DP settings are parsed already (JobSpec); here: the update noise is reachable, and DP fits the rest."""
    if spec.dp_update is not None:
        try:
            spec.dp_update.noise_for(spec.rounds)
        except ValueError as exc:
            raise ConfigError(f"{source}: field {exc}") from None
    dp = "dp_sgd" if spec.dp_sgd is not None else "dp_update" if spec.dp_update is not None else None
    _refuse_failed(source, [
        (
            spec.dp_sgd is None or spec.algorithm != "fedprox",
            "dp_sgd",
            "cannot be combined with algorithm: fedprox (DP-SGD clips per-sample gradients of the data loss "
            "only, so the proximal term would be dropped); use fedavg or scaffold",
        ),
        (
            spec.dp_update is None or spec.algorithm != "scaffold",
            "dp_update",
            "cannot be combined with algorithm: scaffold (the control variates would leave un-noised); "
            "use dp_sgd, which covers them",
        ),
        (
            spec.dp_update is None or spec.server_momentum == 0,
            "server_momentum",
            "must be 0 with dp_update: the update filter would clip and noise the momentum term as part of "
            "the site's update; use dp_sgd, with which server momentum is post-processing",
        ),
        (
            spec.dp_sgd is None or spec.local_steps is None,
            "local_steps",
            "must be null with dp_sgd: the DP-SGD accountant plans its steps from local_epochs",
        ),
        (
            dp is None or spec.train_alone is not True,
            "train_alone",
            f"must be false with {dp}: the model a site trains alone is not differentially private and leaves "
            "the site for cross-site evaluation",
        ),
        (
            dp is None or spec.finetune_epochs == 0,
            "finetune_epochs",
            f"must be 0 with {dp}: fine-tuning is not differentially private and its model leaves the site "
            "for cross-site evaluation",
        ),
    ])  # fmt: skip


def _validate_server_optimizer(spec, source: Path) -> None:
    """FedAdam/FedYogi/FedAdagrad step at the sites from w_t and the sites' averaged w_i - w_t: refuse what
    would change what the sites send or average (server_opt.py, docs/encryption.md)."""
    name = spec.server_optimizer.name
    _refuse_failed(source, [
        (
            spec.server_momentum == 0,
            "server_momentum",
            f"must be 0 with server_optimizer ({name} has its own momentum, beta1); remove one of them",
        ),
        (
            spec.dp_update is None,
            "dp_update",
            "cannot be combined with server_optimizer: the update filter clips and noises a model relative to the "
            "global model it received, and here the sites receive the averaged update, not a model; use dp_sgd, "
            "with which the server step is post-processing",
        ),
        (
            spec.algorithm != "scaffold",
            "algorithm",
            "scaffold cannot be combined with server_optimizer: SCAFFOLD's control variates are averaged as "
            f"models and its server step is the plain average; {name} would step them too. Use fedavg or fedprox",
        ),
    ])  # fmt: skip
