"""Server workflow: FedAvg rounds that survive lost sites, with the task's initial model, per-site metrics,
a checkpoint every round (for `consortium submit --resume`) and a final validation."""

from __future__ import annotations

import os
import time

import torch
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.job_def import JobMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fedprox_utils import set_fedprox_metadata
from nvflare.app_common.workflows.fedavg import FedAvg
from nvflare.fuel.utils.log_utils import center_message

from consortium import constants as C
from consortium.algorithms import with_controls, zero_controls
from consortium.tasks import get_task, state_to_numpy
from consortium.workflows import checkpoint
from consortium.workflows.ending import JobEnd
from consortium.workflows.memory import MemoryProbe
from consortium.workflows.results import SiteResults
from consortium.workflows.round_wait import RoundWait
from consortium.workflows.rounds import Attendance, RoundOutcome, too_few
from consortium.workflows.server_step import ServerStep


class ConsortiumFedAvg(RoundWait, ServerStep, SiteResults, JobEnd, FedAvg):
    """FedAvg (ModelController) whose rounds end when every present site has answered or after
    `round_timeout` seconds, whichever comes first. Sites that fail, time out or send an unusable update are
    dropped from that round (reason recorded); the round aggregates the rest with their own weights, and the
    job ends with a clear message only when fewer than the job's min_clients contributed."""

    def __init__(
        self,
        *args,
        task: str,
        seed: int,
        final_validation: bool = True,
        algorithm: str = "fedavg",
        finetune_epochs: int = 0,
        train_alone: bool = False,
        run_info: dict | None = None,
        round_timeout: int = 600,
        resume_from: str = "",
        feature_stats_id: str = "",
        pretrained: str = "",
        pretrained_sha256: str = "",
        server_optimizer: str = "",
        **kwargs,
    ):
        kwargs.setdefault("persistor_id", "")
        kwargs.setdefault("save_filename", C.GLOBAL_MODEL_FILE)
        kwargs.setdefault("ignore_result_error", True)  # one site's error never ends the round; min_clients does
        super().__init__(*args, **kwargs)
        if round_timeout < 1:
            raise ValueError(f"ConsortiumFedAvg: round_timeout must be >= 1 s, got {round_timeout}")
        self._task = task  # attribute names match the args so the job exporter finds them
        self.seed = seed
        self.final_validation = final_validation
        self.algorithm = algorithm
        self.finetune_epochs = finetune_epochs
        self.train_alone = bool(train_alone)
        self.run_info = dict(run_info or {})  # job settings recorded with the results (job, he, ...)
        self.round_timeout = int(round_timeout)
        self.resume_from = resume_from
        self.feature_stats_id = feature_stats_id  # writer of the job's federated statistics (standardise: federated)
        self.pretrained, self.pretrained_sha256 = pretrained, pretrained_sha256  # a file of the job's app config
        self.server_optimizer = server_optimizer  # adam | yogi | adagrad: stepped at the sites (server_step.py)
        meta = {**self.run_info, "task": task, "algorithm": algorithm, "rounds": self.num_rounds}
        meta.update(metric=getattr(get_task(task), "METRIC_NAME", "score"), round_timeout=self.round_timeout)
        self._history: dict = {"task": task, "num_rounds": self.num_rounds, "meta": meta, "rounds": [], "final": {}}
        self._round_sites: dict = {}
        self._attendance = Attendance()
        self._outcome: RoundOutcome | None = None
        self._memory: MemoryProbe | None = None  # server RSS per round, tracemalloc on request (memory.py)
        self._round_task = None
        self._global: FLModel | None = None

    # -- model: the architecture lives once, in the task module -------------------------------------
    def load_model(self) -> FLModel:
        torch.manual_seed(self.seed)
        model = get_task(self._task).build_model()
        if self.pretrained:  # the job's public start, shipped in its app config and checked against its hash
            config_dir = self.engine.get_workspace().get_app_config_dir(self._job_id())
            checkpoint.load_trusted(model, os.path.join(config_dir, self.pretrained), self.pretrained_sha256)
            self.info(f"[progress] initial model: the public start {self.pretrained} ({self.pretrained_sha256[:12]})")
        params = state_to_numpy(model)
        if self.algorithm == "scaffold":  # the global control variate c starts at zero, travels with the model
            params = with_controls(params, zero_controls(model))
        return FLModel(params=params, params_type=ParamsType.FULL)

    def save_model_file(self, model: FLModel, filepath: str) -> None:
        checkpoint.save_global_model(model.params, filepath)

    def sample_clients(self, num_clients=None):
        """Every connected site is offered every round, except sites that refused to train for privacy reasons
        (dropped for the rest of the job). Sites absent since an earlier round are offered it but not awaited."""
        refused = self._history.get("refused", {})
        return [c.name for c in self.engine.get_clients() if c.name not in refused]

    def _min_clients(self) -> int:
        meta = self.fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        return int(meta.get(JobMetaKey.MIN_CLIENTS.value, 1) or 1)

    # -- the rounds -------------------------------------------------------------------------------------
    def run(self) -> None:
        self.fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self.num_rounds, private=True, sticky=False)
        self._memory = MemoryProbe()  # in the server's job process, not where the job is built
        try:
            model, start = self._initial_model()
        except checkpoint.ResumeError as exc:
            return self._end(str(exc))
        self._record_governance()
        stats = self._feature_stats()
        if stats is None:
            return self._end("the job's federated statistics gave no global feature statistics (see the server log)")
        model.total_rounds = self.num_rounds
        for number in range(start, self.num_rounds):
            self.current_round = number
            self.info(center_message(message=f"Round {self.current_round} started.", boarder_str="-"))
            model.current_round = self.current_round
            self._round_meta(model, stats)
            self.fl_ctx.set_prop(AppConstants.CURRENT_ROUND, self.current_round, private=True, sticky=False)
            targets = self.sample_clients()
            outcome = RoundOutcome(self.current_round, targets)
            if len(targets) < self._min_clients():
                return self._end(too_few(outcome, self._min_clients()))
            self._outcome, self._round_sites, round_start = outcome, {}, time.time()
            self.aggregator.reset_stats()
            self.send_model(task_name=self.task_name, targets=targets, data=model, callback=self._aggregate_one_result)
            if not self._wait_for_round(outcome):
                return self._keep_global()  # aborted: the last complete round's model is still the job's result
            self._close_round(outcome, time.time() - round_start)
            reason = too_few(outcome, self._min_clients())
            self._history["rounds"][-1]["aggregated"] = reason is None
            if reason:
                return self._end(reason)
            model = self.update_model(model, self._get_aggregated_result())
            self._global = model
            if self.server_optimizer:  # the sites' averaged w_i - w_t, not a model: the next task, not a file
                self._mark_aggregate(model, self.current_round)
            # One write per round: the checkpoint (what a resumed job reads). The global model file holds the same
            # weights; it is written once the rounds end (below, in _end and on abort), not every round.
            checkpoint.save(self.get_run_dir(), params=model.params, round_number=self.current_round)
            self._history["rounds"][-1].update(self._memory.sample(self.current_round, self.get_run_dir()))
            self._write_history()
        self._keep_global()
        if self.server_optimizer and self._global is not None and not self.abort_signal.triggered:
            self._global = self._final_server_step(model)  # every site's w_T: the global model
            if self._global is not None:
                self.save_model(self._global)
        if self.final_validation and self._global is not None and not self.abort_signal.triggered:
            self._final_validation()
        if self.train_alone and self._global is not None and not self.abort_signal.triggered:
            self._train_alone()
        self._confirm_lost_sites()

    def _record_governance(self) -> None:
        """The job's purpose, agreement, charter and who approved or refused it at deployment (governance/)."""
        from consortium.governance.record import from_server

        try:
            self._history["meta"]["governance"] = from_server(self.fl_ctx)
        except Exception as exc:  # the record says so rather than the job failing
            self.error(f"governance: could not record the job's approvals: {type(exc).__name__}: {exc}")

    def _initial_model(self) -> tuple[FLModel, int]:
        if not self.resume_from:
            self._history["meta"]["run_chain"] = [self._job_id()]
            return self.load_model(), 0
        state = checkpoint.load(self.engine.get_workspace(), self.resume_from)
        self._history = checkpoint.continued_history(state["history"], self._history, self._job_id())
        self.info(f"[progress] resuming job {self.resume_from} after its round {state['round'] + 1}/{self.num_rounds}")
        model = FLModel(params=state["params"], params_type=ParamsType.FULL)
        if self.server_optimizer:  # the checkpoint holds the aggregate of its last round
            self._mark_aggregate(model, state["round"])
        return model, state["round"] + 1

    def _round_meta(self, model: FLModel, stats: dict | None = None) -> None:
        """What travels with every round's model besides the weights: the run chain, FedProx's mu (FLARE's
        `fedprox_mu` contract, which FLARE's FedAvg.run sets and this run must set too) and the global feature
        statistics (every round: a site that restarts mid-job standardises like the others)."""
        set_fedprox_metadata(model, self.fedprox_mu)  # None (FedAvg, SCAFFOLD) removes the key
        model.meta[C.META_RUN_CHAIN] = self._history["meta"].get("run_chain", [])
        if stats:
            model.meta[C.META_FEATURE_STATS] = stats

    def _feature_stats(self) -> dict | None:
        """The global feature statistics of the job's first workflow ({} if the job has none; None if it failed)."""
        if not self.feature_stats_id:
            return {}
        stats = getattr(self.engine.get_component(self.feature_stats_id), "result", None)
        if stats:
            self._history["meta"]["feature_stats"] = stats
            self.info(f"[progress] features standardised with the global mean and std of {stats['source']}")
        return stats or None

    def _job_id(self) -> str:
        return self.fl_ctx.get_job_id()

    def _keep_global(self) -> None:
        """Write the global model file (FLARE's save_model) with the model of the job's last complete round, if
        any; a server-optimizer job's aggregates are not models: it saves the sites' w_T after its last step."""
        if self._global is not None and not self.server_optimizer:
            self.save_model(self._global)

    def _end(self, reason: str) -> None:
        """Fewer than min_clients sites: stop now, keep the last global model, say why."""
        self._keep_global()
        self._history["stopped"] = reason
        self._write_history()
        self.info(f"[progress] {reason}")
        self.panic(reason)

    def _write_history(self) -> None:
        checkpoint.write_history(self.get_run_dir(), self._history)
