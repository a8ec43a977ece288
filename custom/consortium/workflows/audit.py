"""The job's last workflow: every present site audits the final global model for membership inference
(TASK_AUDIT, executors/audit.py) and sends back only scores, recorded in `metrics.json` under "audit"."""

from __future__ import annotations

import os

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.workflows.model_controller import ModelController

from consortium import constants as C
from consortium import runrecord as R
from consortium.workflows.checkpoint import read_history


class MembershipAudit(ModelController):
    """Sends the final global model (ciphertext under HE: each site decrypts it) to the sites that were present
    at the end of training, waits at most `timeout` s, and records each site's scores or its error; a site that
    fails or does not answer is recorded as such and never fails the job."""

    def __init__(self, *, timeout: int = 600, task_check_period: float = 0.5):
        super().__init__(persistor_id="", ignore_result_error=True, task_check_period=task_check_period)
        if timeout < 1:
            raise ValueError(f"MembershipAudit: timeout must be >= 1 s, got {timeout}")
        self.timeout = int(timeout)

    def run(self) -> None:
        run_dir = self.get_run_dir()
        history = read_history(run_dir)
        path = os.path.join(run_dir, C.GLOBAL_MODEL_FILE)
        if history.get(R.STOPPED) or not os.path.isfile(path):
            why = history.get(R.STOPPED) or "no global model file"
            self.info(f"[progress] membership-inference audit skipped: no final global model ({why})")
            return
        from consortium.workflows.cross_site import GlobalModelFile

        params = GlobalModelFile().get_model(C.GLOBAL_MODEL_FILE, self.fl_ctx)[ModelLearnableKey.WEIGHTS]
        model = FLModel(params=params, params_type=ParamsType.FULL)
        if (history.get(R.META) or {}).get(R.Meta.FEATURE_STATS):  # a site restarted since standardises too
            model.meta[C.META_FEATURE_STATS] = history[R.META][R.Meta.FEATURE_STATS]
        present = history.get(R.PRESENT) or [c.name for c in self.engine.get_clients()]
        self.info(f"[progress] membership-inference audit of the final global model at {', '.join(present)}")
        results = self.send_model_and_wait(task_name=C.TASK_AUDIT, data=model, targets=present, timeout=self.timeout)
        missing = f"no audit result: the site's task failed or it did not answer within {self.timeout} s (its log)"
        audit = {site: {C.METRIC_AUDIT_ERROR: missing} for site in present}
        for res in results:
            audit[(res.meta or {}).get("client_name", "?")] = dict(res.metrics or {})
        history = read_history(run_dir)  # cross-site evaluation may have written it since
        history[R.AUDIT] = audit
        R.write(run_dir, history)
        for site, scores in sorted(audit.items()):
            self.info(f"[progress] {summary(site, scores)}")

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        self.info(f"{client.name}: result of task '{task_name}' came after the audit closed; not recorded")


def summary(site: str, scores: dict) -> str:
    """One progress line: AUC of each attack (0.5 is chance), or the site's error."""
    if scores.get(C.METRIC_AUDIT_ERROR):
        return f"audit {site}: {scores[C.METRIC_AUDIT_ERROR]}"
    text = f"audit {site}: membership AUC (0.5 = chance) loss attack {scores.get('loss_auc', float('nan')):.3f}"
    if scores.get("calibrated_auc") is not None:
        text += f", calibrated {scores['calibrated_auc']:.3f} ({scores.get('reference_models')} reference models)"
    return text + f"; {scores.get('n_members')} members vs {scores.get('n_nonmembers')} held-out patients"
