"""The site's membership-inference audit task (TASK_AUDIT): attack the final global model with this site's own
training patients (members) against its validation patients (non-members); only scores leave the site.

Reference models for the calibrated attack (RMIA) are trained here, on halves of this site's patients, with
the job's own local training: its learning rate and batch size, its augmentations, and its DP-SGD settings
when the job has DP (so the calibration matches how the released model was trained). They never leave the
site and spend nothing from its privacy ledger: what leaves is the AUCs and TPRs of AUDIT_KEYS."""

from __future__ import annotations

import time

from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from consortium import constants as C
from consortium.algorithms import split_controls
from consortium.privacy.settings import AuditSettings
from consortium.tasks import load_numpy_state


def audit_task(trainer, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
    """The scores of this site's audit, or its error text under METRIC_AUDIT_ERROR: an audit that fails never
    fails the job. `trainer` is the site's SiteTrainer (its task, loaders, job settings and training)."""
    start = time.perf_counter()
    site = trainer.site_cfg.name
    try:
        if trainer.audit is None:  # whatever the server asks: this job's sites were built without the audit
            raise ValueError("the job has `audit: false`; this site was not set up for an audit")
        settings = AuditSettings.from_dict(trainer.audit)
        weights, _ = split_controls(FLModelUtils.from_shareable(shareable).params)
        metrics = {k: v for k, v in site_audit(trainer, weights, settings).items() if v is not None}
        metrics[C.METRIC_AUDIT_SECONDS] = time.perf_counter() - start
        from consortium.privacy.audit import describe

        trainer.log_info(fl_ctx, f"{site}: membership-inference audit of the final global model: "
                                 f"{describe(metrics)} ({metrics[C.METRIC_AUDIT_SECONDS]:.1f} s)")  # fmt: skip
    except Exception as exc:  # reported to the server as this site's audit result; the job goes on
        message = f"audit failed: {type(exc).__name__}: {exc}"
        trainer.log_exception(fl_ctx, f"{site}: {message}")
        metrics = {C.METRIC_AUDIT_ERROR: message[:2000]}
    return FLModelUtils.to_shareable(FLModel(metrics=metrics))


def site_audit(trainer, weights: dict, settings: AuditSettings) -> dict:
    """privacy.audit.audit_site on the final global model `weights`, with this site's patients."""
    from consortium.privacy.audit import audit_site
    from consortium.privacy.audit_tasks import item_loss_of, local_trainer, site_patients

    task = trainer.task
    item_loss = item_loss_of(task)
    train_ds, val_ds = trainer.train_loader.dataset, trainer.val_loader.dataset
    one_per_row = getattr(train_ds, "one_patient_per_sample", False) is True
    members = site_patients(train_ds, "train-", one_per_row=one_per_row)
    nonmembers = site_patients(val_ds, "val-", one_per_row=one_per_row)
    if set(members) & set(nonmembers):
        raise ValueError(
            "this site's validation patients are also its training patients (a site without validation "
            "patients validates on its training slices): there are no held-out patients to audit against"
        )
    model = task.build_model()
    load_numpy_state(model, weights)
    dp = trainer.training.settings if trainer.training.private else None  # the job's own DP-SGD, if any
    reference = None
    if settings.references:
        reference = local_trainer(task, task.build_model, {**members, **nonmembers}, epochs=settings.epochs,
                                  lr=trainer.lr, batch_size=trainer.batch_size, dp=dp, seed=trainer.seed,
                                  transform=getattr(train_ds, "transform", None),
                                  decoder_pattern=getattr(task, "DECODER_PARAMS", None))  # fmt: skip
    return audit_site(model.eval(), item_loss, members, nonmembers, reference, references=settings.references,
                      seed=trainer.seed)  # fmt: skip
