"""The site-installed FLARE executor: local training, validation and model submission for one task."""

from __future__ import annotations

import time

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from consortium import constants as C
from consortium.algorithms import Scaffold, ServerMomentum, split_controls
from consortium.config import load_site_config
from consortium.executors.audit import audit_task
from consortium.executors.round_plan import RoundPlan, check_finite
from consortium.executors.server_step import SiteServerStep
from consortium.executors.site_budget import JobBudget
from consortium.executors.site_config import site_config_dir
from consortium.executors.site_models import SiteModels
from consortium.executors.training import Site, local_training
from consortium.jobs.spec import JOB_DEFAULTS
from consortium.privacy import ledger
from consortium.privacy.budget import BudgetRefused
from consortium.privacy.settings import DPSGDSettings, DPUpdateSettings
from consortium.tasks import get_task, load_numpy_state, round_lr, state_to_numpy


class SiteTrainer(RoundPlan, SiteModels, Executor):
    """Runs the job's task at a site on the data named by that site's own config.

    Job settings (task, epochs, lr, batch size) come from the job, parsed and checked once by JobSpec (its
    defaults are these arguments' defaults); the data location and resources come from the site config,
    which the job cannot see or change.
    """

    def __init__(
        self,
        *,
        task: str,
        local_epochs: int,
        lr: float,
        lr_schedule: str,
        batch_size: int,
        seed: int,
        standardise: str,
        algorithm: str = JOB_DEFAULTS["algorithm"],
        finetune_epochs: int = JOB_DEFAULTS["finetune_epochs"],
        weighting: str = JOB_DEFAULTS["weighting"],
        local_steps: int | None = JOB_DEFAULTS["local_steps"],
        dp_sgd: dict | None = None,  # build_job's DPSGDSettings.to_dict(); None: no DP-SGD
        dp_update: dict | None = None,  # the job's DPUpdateSettings.to_dict() (its filter's plan); None: none
        server_momentum: float = JOB_DEFAULTS["server_momentum"],
        server_optimizer: dict | None = None,  # build_job's ServerOptSettings.to_dict(); None: plain average
        audit: dict | None = JOB_DEFAULTS["audit"],  # build_job's AuditSettings.to_dict(); None: no audit
    ):
        super().__init__()
        # attribute names match the args so FLARE's job exporter can read them back
        self._task, self.local_epochs, self.lr, self.lr_schedule = task, local_epochs, lr, lr_schedule
        self.batch_size, self.seed, self.standardise = batch_size, seed, standardise
        self.algorithm, self.finetune_epochs, self.weighting = algorithm, finetune_epochs, weighting
        self.local_steps, self.dp_sgd, self.server_momentum = local_steps, dp_sgd, float(server_momentum)
        self._scaffold = Scaffold() if algorithm == "scaffold" else None
        self._momentum = ServerMomentum(self.server_momentum) if self.server_momentum > 0 else None
        self.server_optimizer = server_optimizer  # FedAdam/FedYogi/FedAdagrad: stepped here (executors/server_step.py)
        self._server_step = SiteServerStep(server_optimizer) if server_optimizer else None
        # the audit task (executors/audit.py): attack the final model, send only scores (plain data for FLARE)
        self.audit = audit.to_dict() if hasattr(audit, "to_dict") else audit
        # plain or DP-SGD, chosen once; the site's own privacy floor (site config `privacy:`) decides whether the
        # job's DP-SGD request is good enough
        self.training = local_training(dp_sgd)
        # the site's budget across jobs (site config privacy.budget): the job's plan is admitted before its data
        # are read; every round's spending goes into the site's ledger before the update leaves
        self.dp_update = dp_update
        self.budget = JobBudget(DPSGDSettings.from_dict(dp_sgd) if dp_sgd is not None else None,
                                DPUpdateSettings.from_dict(dp_update) if dp_update is not None else None)  # fmt: skip
        self._refusal = ""  # this site refused the job: it trains nothing more in it
        self._ready = False

    def _admit(self, fl_ctx: FLContext, shareable: Shareable) -> None:
        """Before any data are read: the site's budget across jobs admits the job's planned spend, or refuses."""
        site_cfg = load_site_config(fl_ctx.get_identity_name(), site_config_dir(fl_ctx))
        self.budget.admit(site_cfg, FLModelUtils.from_shareable(shareable), fl_ctx,
                          log=lambda message: self.log_info(fl_ctx, message))  # fmt: skip

    def _setup(self, fl_ctx: FLContext, shareable: Shareable) -> None:
        site = fl_ctx.get_identity_name()
        self.site_cfg = load_site_config(site, site_config_dir(fl_ctx))
        torch.set_num_threads(self.site_cfg.resources.num_threads)
        torch.manual_seed(self.seed)
        self.device = self.site_cfg.resources.device
        self.task = get_task(self._task)
        self.model = self.task.build_model()
        options = {} if self.standardise == "none" else {"standardise": self._standardisation(shareable)}
        self.train_loader, self.val_loader, report = self.task.make_loaders(
            self.site_cfg, batch_size=self.batch_size, seed=self.seed, **options
        )
        self.data_report = report
        for line in report.summary().splitlines():
            self.log_info(fl_ctx, line)
        self.local_params: dict | None = None
        self.personal_params: dict | None = None  # fine-tuned at this site; leaves it only for cross-site eval
        self.alone_params: dict | None = None  # trained here alone (train_alone); leaves only for cross-site eval
        self.site = Site(cfg=self.site_cfg, model=self.model, train_loader=self.train_loader,
                         batch_size=self.batch_size, local_epochs=self.local_epochs, task=self.task,
                         log=lambda message: self.log_info(fl_ctx, message), budget=self.budget)  # fmt: skip
        self._ready = True

    def _standardisation(self, shareable: Shareable):
        """`local`, or the global feature statistics the server sent with the model (`federated`)."""
        if self.standardise == "local":
            return "local"
        try:
            stats = (from_shareable(shareable).meta or {}).get(C.META_FEATURE_STATS)
        except ValueError:  # not a model task
            stats = None
        if not stats:
            raise ValueError(
                "this job standardises features with the consortium's global statistics (standardise: federated), "
                "but none came with this task (the server sends them with every train and final validate task, "
                "once the job's first workflow, FLARE's federated statistics, has computed them)"
            )
        return stats

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        refused = shareable.get_header(C.HEADER_SITE_ERROR)
        if refused and shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            # the site's audit trail could not record this task's data (audit_trail/recorder.py), which came
            # without its body: reply that reason before any data are read
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(C.HEADER_SITE_ERROR, refused)
            return reply
        try:
            if self._refusal and task_name == C.TASK_TRAIN:
                raise BudgetRefused(self._refusal)
            if task_name == C.TASK_TRAIN and not self.budget.admitted:
                self._admit(fl_ctx, shareable)
            if not self._ready:
                self._setup(fl_ctx, shareable)
            if task_name == C.TASK_TRAIN:
                return self._train(shareable, fl_ctx, abort_signal)
            if task_name == C.TASK_VALIDATE:
                return self._validate(shareable, fl_ctx)
            if task_name == C.TASK_SUBMIT_MODEL:
                return self._submit_model(fl_ctx)
            if task_name == C.TASK_TRAIN_ALONE:
                return self._train_alone(shareable, fl_ctx, abort_signal)
            if task_name == C.TASK_AUDIT:
                return audit_task(self, shareable, fl_ctx)
            self.log_error(fl_ctx, f"task '{task_name}' is not handled by SiteTrainer")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except BudgetRefused as exc:  # not an error: the site's privacy floor says no; the server drops the site
            self.log_error(fl_ctx, f"privacy floor: {exc}")
            if not self._refusal:
                self._refusal = str(exc)
                self.budget.refused(str(exc))
            reply = make_reply(ReturnCode.EARLY_TERMINATION)
            reply.set_header(C.HEADER_SITE_REFUSED, str(exc)[:2000])
            return reply
        except Exception as exc:  # report the cause in the site's log and to the server, never crash the client
            message = f"task '{task_name}' failed: {type(exc).__name__}: {exc}"
            self.log_exception(fl_ctx, f"{fl_ctx.get_identity_name()}: {message}")
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(C.HEADER_SITE_ERROR, message[:2000])  # the server logs it: visible to the admin
            return reply

    def _train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        task_start = time.perf_counter()
        incoming = FLModelUtils.from_shareable(shareable)
        weights, controls = split_controls(incoming.params)
        round_number = incoming.current_round or 0
        if self._server_step is not None:  # the received aggregate -> this round's global model, as at every site
            weights = self._server_step.global_model(
                incoming, weights, root=ledger.site_root(fl_ctx), job_id=fl_ctx.get_job_id()
            )
            if self._server_step.final(incoming):  # the job's last step: send the global model, no training
                return FLModelUtils.to_shareable(self._server_step.final_reply(weights, self.training.report()))
        self.training.begin_round(self.site, incoming, fl_ctx)  # refuses what the site's floor forbids
        load_numpy_state(self.model, weights)
        if self._momentum is not None and not self._momentum.receive(round_number, weights):
            self.log_warning(
                fl_ctx,
                f"server momentum: this site did not receive round {round_number - 1}'s global model; "
                "it sends this round's model without the momentum term (the other sites' terms still apply)",
            )
        received_dice = self.task.evaluate(self.model, self.val_loader, device=self.device)
        lr = round_lr(self.lr, round_number, incoming.total_rounds or 1, self.lr_schedule)
        result = self.training.train(
            self.site,
            epochs=self._epochs(),
            max_steps=self.local_steps,
            lr=lr,
            device=self.device,
            should_stop=lambda: abort_signal.triggered,
            algorithm=self._round_algorithm(incoming, controls),
        )
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        self.training.end_round(self.site, fl_ctx)  # on this site's disk before anything leaves: counted if killed
        check_finite(self.model, result.loss)
        local_dice = self.task.evaluate(self.model, self.val_loader, device=self.device)
        self.local_params = state_to_numpy(self.model)
        metrics = {
            C.METRIC_SCORE: received_dice,
            C.METRIC_LOCAL_SCORE: local_dice,
            C.METRIC_TRAIN_LOSS: result.loss,
            C.METRIC_STEPS: result.steps,
            C.METRIC_SECONDS: result.seconds,
            C.METRIC_TASK_SECONDS: time.perf_counter() - task_start,
            C.METRIC_NUM_TRAIN: len(self.train_loader.dataset),
            C.METRIC_NUM_VAL: len(self.val_loader.dataset),
            **self.training.report(),
        }
        self.log_info(
            fl_ctx,
            f"{self.site_cfg.name} round {incoming.current_round}: {self.task.METRIC_NAME} "
            f"of received model {received_dice:.3f}, after local training {local_dice:.3f}; loss {result.loss:.3f}, "
            f"{result.steps} steps in {result.seconds:.1f} s{self.training.spent()}",
        )
        return FLModelUtils.to_shareable(self._update(result.steps, metrics, fl_ctx))
