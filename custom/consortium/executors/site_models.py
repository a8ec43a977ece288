"""A site's models at the end of a job: validation of the final global model (and fine-tuning it at the
site), the model the site trains alone (train_alone), and the model it submits to cross-site evaluation.
A mixin of SiteTrainer (executors/trainer.py), which holds the state it reads."""

from __future__ import annotations

import copy
import os
import time

import torch
from nvflare.apis.fl_constant import FLMetaKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from consortium import constants as C
from consortium.algorithms import split_controls
from consortium.tasks import load_numpy_state, round_lr, state_to_numpy

FINETUNE_LR_FACTOR = 0.1  # fine-tuning adapts the shared model at a tenth of the job's learning rate


class SiteModels:
    """Needs SiteTrainer's model, loaders, task, lr settings, `_epochs()` (executors/round_plan.py) and `training`."""

    def _validate(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        incoming = FLModelUtils.from_shareable(shareable)
        weights, _ = split_controls(incoming.params)
        load_numpy_state(self.model, weights)
        start = time.perf_counter()
        score = self.task.evaluate(self.model, self.val_loader, device=self.device)
        owner = (incoming.meta or {}).get(AppConstants.MODEL_OWNER)
        name = self.task.METRIC_NAME
        self.log_info(
            fl_ctx,
            f"{self.site_cfg.name}: {name} {score:.3f} of the {owner or 'global'} model "
            f"on {len(self.val_loader.dataset)} validation samples",
        )
        metrics = {C.METRIC_SCORE: score, C.METRIC_NUM_VAL: len(self.val_loader.dataset)}
        finetune = int((incoming.meta or {}).get(C.META_FINETUNE_EPOCHS) or 0)
        if finetune > 0 and self.training.private:  # whatever the server asks: fine-tuning is not DP
            raise ValueError("the server asked for fine-tuning, which is not DP, in a job this site trains with DP-SGD")
        if finetune > 0:
            metrics[C.METRIC_PERSONAL_SCORE] = self._personalize(finetune, fl_ctx)
        metrics["validate_seconds"] = time.perf_counter() - start
        return FLModelUtils.to_shareable(FLModel(metrics=metrics))

    def _personalize(self, epochs: int, fl_ctx: FLContext) -> float:
        """Fine-tune the final global model on this site's data; the result stays here (and is saved here)."""
        model = copy.deepcopy(self.model)
        # a tenth of the job's learning rate: adapt the shared model, do not retrain it from the site alone
        lr = self.lr * FINETUNE_LR_FACTOR
        self.task.train(model, self.train_loader, epochs=epochs, lr=lr, device=self.device)
        score = self.task.evaluate(model, self.val_loader, device=self.device)
        self.personal_params = state_to_numpy(model)
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, C.PERSONAL_MODEL_FILE)
        torch.save({k: torch.as_tensor(v) for k, v in self.personal_params.items()}, path)
        name = self.task.METRIC_NAME
        self.log_info(fl_ctx, f"{self.site_cfg.name}: fine-tuned {epochs} epoch(s): {name} {score:.3f}; saved {path}")
        return score

    def _train_alone(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Train the job's initial model on this site's data only, with the job's epochs and learning-rate
        schedule over its rounds: the model this site would have without the consortium."""
        if self.training.private:  # whatever the server asks: this training is not DP
            raise ValueError("the server asked for training alone, which is not DP, in a job this site trains with DP")
        incoming = FLModelUtils.from_shareable(shareable)
        rounds = int((incoming.meta or {}).get(C.META_ALONE_ROUNDS) or 1)
        model = copy.deepcopy(self.model)
        load_numpy_state(model, split_controls(incoming.params)[0])
        start, steps = time.perf_counter(), 0
        for r in range(rounds):
            lr = round_lr(self.lr, r, rounds, self.lr_schedule)
            result = self.task.train(model, self.train_loader, epochs=self._epochs(), max_steps=self.local_steps,
                                     lr=lr, device=self.device, should_stop=lambda: abort_signal.triggered)
            steps += result.steps
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
        score = self.task.evaluate(model, self.val_loader, device=self.device)
        self.alone_params = state_to_numpy(model)
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, C.ALONE_MODEL_FILE)
        torch.save({k: torch.as_tensor(v) for k, v in self.alone_params.items()}, path)
        seconds = time.perf_counter() - start
        name = self.task.METRIC_NAME
        self.log_info(fl_ctx, f"{self.site_cfg.name}: trained alone, {rounds} rounds, {steps} steps in "
                              f"{seconds:.0f} s: {name} {score:.3f}; saved {path}")  # fmt: skip
        metrics = {C.METRIC_ALONE_SCORE: score, C.METRIC_STEPS: steps, C.METRIC_SECONDS: seconds}
        return FLModelUtils.to_shareable(FLModel(metrics=metrics))

    def _submit_model(self, fl_ctx: FLContext) -> Shareable:
        """This site's own model for cross-site evaluation: trained alone if the job did (train_alone), else
        fine-tuned if the job fine-tunes, else the last round's local model."""
        kinds = (("alone", self.alone_params), ("personalized", self.personal_params), ("local", self.local_params))
        kind, params = next(((k, p) for k, p in kinds if p is not None), (None, None))
        if params is None:
            self.log_error(fl_ctx, "submit_model: this site has not trained in this job yet")
            return make_reply(ReturnCode.EMPTY_RESULT)
        # weight 1: an HE job encrypts this model like an update, and the validating site divides by 1
        meta = {FLMetaKey.NUM_STEPS_CURRENT_ROUND: 1, C.META_MODEL_KIND: kind}
        if kind == "local":  # only the DP-trained model carries DP accounting for the site's PrivacyGuard
            meta.update(self.training.report())
        return FLModelUtils.to_shareable(FLModel(params=params, params_type=ParamsType.FULL, meta=meta))
