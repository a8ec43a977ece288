"""Build the FLARE job of a JobSpec from the installed package's components, export it, or run it in the
simulator. Components get plain arguments (FLARE instantiates them from JSON): typed settings go out with
their `to_dict()` and the components rebuild them with the same `from_dict()`."""

from __future__ import annotations

import os
from pathlib import Path

from consortium import constants as C
from consortium.jobs.spec import JobSpec

TASK_REQUEST_INTERVAL = 0.2  # seconds between an idle site's task requests
TASK_CHECK_PERIOD = 0.1  # seconds between the server workflow's checks for results
# Seconds a site waits for the server's reply once its result is sent (FLARE's default: its communication
# timeout, 300 s). Over a link that is cut now and then, the result can arrive while the reply is lost; the
# site then sat out the final validation and cross-site evaluation waiting for it. After this wait FLARE
# asks the server whether the task is still open, and sends again only if it is. Sending itself is not
# limited by this: FLARE counts it as idle time, reset by every chunk that moves.
SUBMIT_RESULT_TIMEOUT = 30.0
# How a site's result travels. FLARE 2.9 sends numpy arrays and tensors of more than a few bytes by reference:
# the site's job cell sends the message, then the server's job cell downloads the arrays from it. If the site
# dies (or is restarted) between the two, the download fails, and FLARE then ends the server's job process
# on purpose ("failed to decode streamed submit_update ... exiting job process to fail the job"), so the job
# ends EXECUTION_EXCEPTION for every site (seen in CI: a site killed just after sending its update, 2026-12-07).
# A chunk size of 0 makes these decomposers inline the arrays in the message itself (FLARE's "native"
# encoding): a site lost mid-upload then loses only its own update, and the round drops it like any lost site.
# Variables of the client app config (config_fed_client.json), read by FLARE's ConfigService in the site's
# job process.
INLINE_RESULTS = {"np_download_chunk_size": 0, "tensor_download_chunk_size": 0}
# tasks that bring the global model to a site (ciphertext under HE, decrypted there by HEDecryptModel)
MODEL_TASKS = [C.TASK_TRAIN, C.TASK_VALIDATE, C.TASK_AUDIT]


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
    from consortium.governance.props import meta_props
    from consortium.workflows.cross_site import ConsortiumCrossSiteEval
    from consortium.workflows.fedavg import ConsortiumFedAvg

    # the job's purpose and agreement in its meta (custom_props), which every site's kit checks at deployment
    job = FedJob(name=spec.name, min_clients=spec.min_clients, meta_props=meta_props(spec.purpose, spec.agreement))
    job.set_app_packages(["consortium"])  # sites run the reviewed, installed package: ship no custom code
    feature_stats_id = ""
    if spec.standardise == "federated":  # FLARE's federated statistics first: the features' global mean/std
        from consortium.data.heart_stats import add_federated_statistics

        feature_stats_id = add_federated_statistics(job)
    controller = ConsortiumFedAvg(
        task=spec.task,
        seed=spec.seed,
        num_rounds=spec.rounds,
        aggregator=HESumAggregator() if spec.he is not None else WeightedAverage(),
        task_check_period=TASK_CHECK_PERIOD,
        algorithm=spec.algorithm,
        server_optimizer=spec.server_optimizer.name if spec.server_optimizer else "",
        fedprox_mu=spec.prox_mu if spec.algorithm == "fedprox" and spec.prox_mu > 0 else None,
        finetune_epochs=spec.finetune_epochs,
        train_alone=spec.alone,
        round_timeout=spec.round_timeout,
        resume_from=resume_from,
        feature_stats_id=feature_stats_id,
        **_pretrained_args(job, spec),
        run_info={
            "job": spec.name,
            "he": spec.he is not None,
            "local_epochs": spec.local_epochs,
            "lr": spec.lr,
            **({"server_momentum": spec.server_momentum} if spec.server_momentum else {}),
            **({"server_optimizer": spec.server_optimizer.to_dict()} if spec.server_optimizer else {}),
            **({"standardise": spec.standardise} if spec.standardise != "none" else {}),
            **({"dp_sgd": spec.dp_sgd.to_dict()} if spec.dp_sgd else {}),
            **({"dp_update": spec.dp_update.to_dict()} if spec.dp_update else {}),
            **({"pretrained": Path(spec.pretrained).name} if spec.pretrained else {}),
            **({"audit": spec.audit.to_dict()} if spec.audit else {}),
        },
    )
    job.to_server(controller)
    if spec.cross_site:  # FLARE's cross-site evaluation runs after training, on the saved global model
        job.to_server(ConsortiumCrossSiteEval(task_check_period=TASK_CHECK_PERIOD, timeout=spec.round_timeout))
    if spec.audit:  # last: every site attacks the final global model with its own patients; only scores return
        from consortium.workflows.audit import MembershipAudit

        timeout = spec.round_timeout * (1 + spec.audit.references)  # the site trains its reference models
        job.to_server(MembershipAudit(task_check_period=TASK_CHECK_PERIOD, timeout=timeout))
    if spec.dp_update:  # noise on the update before it is encrypted: this result filter precedes HEEncryptUpdate
        from consortium.filters.dp import GaussianUpdateFilter

        job.to_clients(
            GaussianUpdateFilter.from_settings(spec.dp_update, rounds=spec.rounds),
            filter_type=FilterType.TASK_RESULT,
            tasks=[C.TASK_TRAIN, C.TASK_SUBMIT_MODEL],
        )
    if spec.he is not None:
        # sites: weight + encrypt what leaves, decrypt what arrives; the server only adds ciphertexts
        job.to_clients(
            HEEncryptUpdate(**spec.he.to_dict()),
            filter_type=FilterType.TASK_RESULT,
            tasks=[C.TASK_TRAIN, C.TASK_SUBMIT_MODEL],  # a site's own model leaves it encrypted too
        )
        job.to_clients(HEDecryptModel(), filter_type=FilterType.TASK_DATA, tasks=MODEL_TASKS)
    if spec.dp_update:  # after HEDecryptModel: the update filter needs the plaintext model the site received
        from consortium.filters.dp import KeepGlobalModel

        # FLARE wants identical task sets for filters of one job: the same as HEDecryptModel's
        job.to_clients(KeepGlobalModel(), filter_type=FilterType.TASK_DATA, tasks=MODEL_TASKS)
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
        dp_sgd=spec.dp_sgd.to_dict() if spec.dp_sgd else None,
        dp_update=spec.dp_update.to_dict() if spec.dp_update else None,  # its planned spend, for the site's budget
        server_momentum=spec.server_momentum,
        server_optimizer=spec.server_optimizer.to_dict() if spec.server_optimizer else None,
        standardise=spec.standardise,
        audit=spec.audit.to_dict() if spec.audit else None,
    )
    site_tasks = [C.TASK_TRAIN, C.TASK_VALIDATE, C.TASK_SUBMIT_MODEL, C.TASK_TRAIN_ALONE, C.TASK_AUDIT]
    job.to_clients(trainer, tasks=site_tasks)
    job.to_clients({"submit_task_result_timeout": SUBMIT_RESULT_TIMEOUT})  # a variable of the client app config
    job.to_clients(dict(INLINE_RESULTS))  # a site lost mid-upload never fails the server's job process
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


def export_job(spec: JobSpec, out_dir: str | Path, *, resume_from: str = "", charter=None) -> Path:
    """Write the submit-ready FLARE job folder (meta.json + app configs) to `out_dir/<name>`; its meta declares the
    job's purpose and agreement (with the consortium's `charter`: the agreement's id and the charter's hash) and
    its job hash (governance/jobhash.py)."""
    from consortium.governance.props import job_props, seal

    out_dir = Path(out_dir)
    build_job(spec, resume_from=resume_from).export_job(str(out_dir))
    seal(out_dir / spec.name, job_props(spec.purpose, spec.agreement, charter))
    return out_dir / spec.name


def simulate(spec: JobSpec, *, sites: list[str], site_config_dir: Path, workspace: Path, threads: int | None = None,
             audit_trail: bool = True):  # fmt: skip
    """Run the job in the FLARE simulator with one simulated client per site config (`audit_trail` False: no
    trail of the exchanges, for bench/audit_cost.py's comparison only)."""
    from consortium.deploy.policy import write_resources_policy, write_trail_policy

    os.environ[C.ENV_SITE_CONFIG_DIR] = str(Path(site_config_dir).resolve())
    write_resources_policy(Path(workspace) / "local")  # the simulator copies local/ to every participant
    if audit_trail:  # the server's and every site's trail, each in its own simulated workspace
        write_trail_policy(Path(workspace) / "local")
    if spec.he is not None:  # contexts generated for this run; the simulator copies startup/ to every participant
        from consortium.he.contexts import write_contexts

        write_contexts(Path(workspace) / "startup")
    job = build_job(spec, stream_logs=False)
    from consortium.jobs.simulator import run  # FLARE's simulator without its same-name race (jobs/simulator.py)

    return run(job, str(workspace), clients=sites, threads=threads or len(sites), log_config="concise")
