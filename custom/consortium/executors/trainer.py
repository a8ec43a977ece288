"""The site-installed FLARE executor: local training, validation and model submission for one task."""

from __future__ import annotations

import math
import os
import time

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AlgorithmConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from consortium import constants as C
from consortium.algorithms import WEIGHTINGS, FedProx, Scaffold, ServerMomentum, split_controls, with_controls
from consortium.config import load_site_config
from consortium.executors.site_models import SiteModels
from consortium.privacy import ledger
from consortium.privacy.budget import BudgetRefused, check_job, check_noise, check_round
from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD
from consortium.tasks import get_task, load_numpy_state, round_lr, state_to_numpy


def site_config_dir(fl_ctx: FLContext) -> str | None:
    """A kit's `local/consortium/` (written by `consortium provision`), else None for $CONSORTIUM_SITE_CONFIGS."""
    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    if workspace is not None and not os.environ.get(C.ENV_SITE_CONFIG_DIR):
        folder = os.path.join(workspace.get_site_config_dir(), C.KIT_SITE_CONFIG_FOLDER)
        if os.path.isdir(folder):
            return folder
    return None



def check_finite(model: torch.nn.Module, loss: float) -> None:
    """Refuse to send an update with NaN or Inf (a diverged local run): the round goes on without it."""
    bad = [name for name, value in model.state_dict().items() if not bool(torch.isfinite(value).all())]
    if bad or not math.isfinite(loss):
        where = f"{len(bad)} layer(s), e.g. {bad[0]}" if bad else "the loss"
        raise ValueError(
            f"local training diverged: NaN or Inf in {where} (loss {loss}); the update was not sent. "
            "Lower the job's lr, or check this site's data for NaN pixels"
        )


class SiteTrainer(SiteModels, Executor):
    """Runs the job's task at a site on the data named by that site's own config.

    Job settings (task, epochs, lr, batch size) come from the job; the data location and
    resources come from the site config, which the job cannot see or change.
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
        algorithm: str = "fedavg",
        finetune_epochs: int = 0,
        weighting: str = "steps",
        local_steps: int | None = None,
        dp_sgd: dict | None = None,
        server_momentum: float = 0.0,
        standardise: str = "none",
    ):
        # No defaults: every experiment setting is written into the exported job, none comes from the site.
        super().__init__()
        if local_epochs < 1 or lr <= 0 or batch_size < 1:
            raise ValueError(
                f"SiteTrainer: need local_epochs>=1, lr>0, batch_size>=1; got {local_epochs}, {lr}, {batch_size}"
            )
        # attribute names match the args so FLARE's job exporter can read them back
        self._task, self.local_epochs, self.lr, self.lr_schedule = task, local_epochs, lr, lr_schedule
        self.batch_size, self.seed = batch_size, seed
        round_lr(lr, 0, 1, lr_schedule)  # refuse an unknown schedule when the job is built, not mid-run
        from consortium.algorithms import ALGORITHMS

        if algorithm not in ALGORITHMS:
            raise ValueError(f"SiteTrainer: unknown algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        if finetune_epochs < 0:
            raise ValueError(f"SiteTrainer: finetune_epochs must be >= 0, got {finetune_epochs}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"SiteTrainer: unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        if local_steps is not None and local_steps < 1:
            raise ValueError(f"SiteTrainer: local_steps must be >= 1 or None, got {local_steps}")
        self.algorithm, self.finetune_epochs, self.weighting = algorithm, finetune_epochs, weighting
        self.local_steps = local_steps
        self._scaffold = Scaffold() if algorithm == "scaffold" else None
        self.server_momentum = float(server_momentum)
        self._momentum = ServerMomentum(self.server_momentum) if self.server_momentum > 0 else None
        # DP-SGD request of the job (target_epsilon or noise_multiplier, delta, max_grad_norm); the site's own
        # privacy floor (site config `privacy:`) decides whether it is good enough
        self.dp_sgd = dict(dp_sgd) if dp_sgd else None
        self._dp_settings = DPSGDSettings.from_dict(self.dp_sgd) if self.dp_sgd else None
        if self._dp_settings and (finetune_epochs > 0 or algorithm == "fedprox"):  # as JobSpec, for raw configs
            raise ValueError(
                "SiteTrainer: dp_sgd cannot be combined with finetune_epochs > 0 (fine-tuning is not DP and its "
                "model leaves the site) or algorithm fedprox (its proximal term would bypass clipping)"
            )
        self._dp: SiteDPSGD | None = None
        if standardise not in ("federated", "local", "none"):
            raise ValueError(f"SiteTrainer: standardise must be federated, local or none, got {standardise!r}")
        self.standardise = standardise  # tabular tasks' feature standardisation (job option)
        self._ready = False

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
        try:
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
            self.log_error(fl_ctx, f"task '{task_name}' is not handled by SiteTrainer")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        except BudgetRefused as exc:  # not an error: the site's privacy floor says no; the server drops the site
            self.log_error(fl_ctx, f"privacy floor: {exc}")
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
        dp = self._dp_round(incoming, fl_ctx)  # None without DP-SGD; refuses what the site's floor forbids
        load_numpy_state(self.model, weights)
        if self._momentum is not None and not self._momentum.receive(round_number, weights):
            self.log_warning(
                fl_ctx,
                f"server momentum: this site did not receive round {round_number - 1}'s global model; "
                "it sends this round's model without the momentum term (the other sites' terms still apply)",
            )
        received_dice = self.task.evaluate(self.model, self.val_loader, device=self.device)
        lr = round_lr(self.lr, round_number, incoming.total_rounds or 1, self.lr_schedule)
        result = self.task.train(
            dp.module if dp else self.model,  # DP: Opacus's per-sample-gradient wrapper around self.model
            dp.loader if dp else self.train_loader,  # DP: Poisson-sampled batches
            epochs=self._epochs(),
            max_steps=self.local_steps,
            lr=lr,
            device=self.device,
            should_stop=lambda: abort_signal.triggered,
            algorithm=self._round_algorithm(incoming, controls),
            optimizer=dp.optimizer(lr) if dp else None,  # DP: clipping and noise around the same Adam
            per_sample_loss=dp is not None,
        )
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        if dp:  # on this site's disk before anything leaves it: a resumed job continues from here
            ledger.save(ledger.site_root(fl_ctx), fl_ctx.get_job_id(), dp.accountant.history)
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
            **self._dp_report(),
        }
        spent = f"; DP-SGD epsilon {dp.epsilon():.2f} at delta {dp.settings.delta:g}" if dp else ""
        self.log_info(
            fl_ctx,
            f"{self.site_cfg.name} round {incoming.current_round}: {getattr(self.task, 'METRIC_NAME', 'score')} "
            f"of received model {received_dice:.3f}, "
            f"after local training {local_dice:.3f}; loss {result.loss:.3f}, "
            f"{result.steps} steps in {result.seconds:.1f} s{spent}",
        )
        # what leaves: the local model (plus FedAvgM's term beta * (w_t - w_{t-1}) if the job has server momentum)
        params = self._momentum.outgoing(self.local_params) if self._momentum is not None else self.local_params
        if self._scaffold is not None:  # c_i travels with the weights: averaged (and encrypted) like them
            params = with_controls(params, self._scaffold.end_round(self.model))
        out = FLModel(
            params=params,
            params_type=ParamsType.FULL,
            metrics=metrics,
            # the aggregation weight (FLARE's convention: NUM_STEPS_CURRENT_ROUND); HE sites encrypt weight x model
            meta={
                FLMetaKey.NUM_STEPS_CURRENT_ROUND: self._weight(result.steps),
                **self._dp_report(),  # the site's PrivacyGuard (local/privacy.json) checks these
            },
        )
        return FLModelUtils.to_shareable(out)

    def _dp_round(self, incoming: FLModel, fl_ctx: FLContext) -> SiteDPSGD | None:
        """This round's DP-SGD (None if the job has none), after the site's floor and budget allow it.

        The floor is checked once per job, the noise fixed once from the job's target epsilon over all its
        steps, and every round refused whose epsilon would exceed the site's max_epsilon."""
        floor, site, source = self.site_cfg.privacy, self.site_cfg.name, self.site_cfg.source
        if self._dp is None:
            check_job(floor, self._dp_settings, site=site, source=source)
            if self._dp_settings is None:
                return None
            dp = SiteDPSGD(
                self._dp_settings, model=self.model, train_loader=self.train_loader, batch_size=self.batch_size,
                decoder_pattern=getattr(self.task, "DECODER_PARAMS", None),
            )
            prior = ledger.load_prior(ledger.site_root(fl_ctx), list(incoming.meta.get(C.META_RUN_CHAIN) or []))
            if prior:  # a resumed job: what this site spent in the jobs it continues still counts
                dp.accountant.history = list(prior[1])
                self.log_info(
                    fl_ctx, f"{site}: continuing DP-SGD accounting of job {prior[0]} ({dp.accountant.steps} steps)"
                )
            sigma = dp.plan(rounds=incoming.total_rounds or 1, local_epochs=self.local_epochs)
            check_noise(floor, sigma, site=site, source=source)
            self._dp = dp
            self.log_info(
                fl_ctx,
                f"{site}: DP-SGD over {dp.num_patients} patients ({dp.num_samples} samples): noise multiplier "
                f"{sigma:.3f}, per-patient clipping {dp.settings.max_grad_norm:g}, Poisson rate {dp.sample_rate:.3f} "
                f"per patient, {dp.steps_per_round} steps per round, delta {dp.settings.delta:g}; "
                f"trains {dp.trained_weights:,} weights ({dp.settings.trainable}); "
                f"site cap max_epsilon {floor.max_epsilon}",
            )
        check_round(
            floor,
            epsilon_after=self._dp.epsilon_after_round(),
            delta=self._dp.settings.delta,
            round_number=(incoming.current_round or 0) + 1,
            site=site,
            source=source,
        )
        return self._dp

    def _dp_report(self) -> dict:
        """DP-SGD accounting so far at this site in this job (empty without DP-SGD)."""
        if self._dp is None:
            return {}
        return {
            C.METRIC_DP_EPSILON: self._dp.epsilon(),
            C.METRIC_DP_DELTA: self._dp.settings.delta,
            C.METRIC_DP_NOISE: self._dp.noise_multiplier,
        }

    def _epochs(self) -> int:
        """Passes over the data this round: local_epochs, or enough to take local_steps steps."""
        if self.local_steps is None:
            return self.local_epochs
        return -(-self.local_steps // max(len(self.train_loader), 1))

    def _weight(self, steps: int) -> float:
        """This site's aggregation weight (job setting `weighting`)."""
        if self.weighting == "steps":
            return steps
        if self.weighting == "samples":
            return len(self.train_loader.dataset)
        return 1

    def _round_algorithm(self, incoming: FLModel, controls: dict):
        """This round's local-training correction: None (FedAvg), FedProx or SCAFFOLD."""
        if self.algorithm == "scaffold":
            self._scaffold.begin_round(self.model, controls)
            return self._scaffold
        if self.algorithm == "fedprox":
            # mu comes with the task, by FLARE's FedAvg contract (its `fedprox_mu`); absent means mu = 0
            return FedProx(self.model, float((incoming.meta or {}).get(AlgorithmConstants.FEDPROX_MU) or 0.0))
        return None
