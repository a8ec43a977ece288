"""The end of a training job: the final model validated (and fine-tuned) at the present sites, and lost sites
confirmed gone, so FLARE ends the job COMPLETED. A mixin of ConsortiumFedAvg, which holds the state it reads."""

from __future__ import annotations

import time

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium import constants as C

# seconds the job waits at its end for the server to declare lost sites dead (its heartbeat_timeout is 60 s)
LOST_CONFIRM_WAIT = 90


class JobEnd:
    """Needs the workflow's `_global`, `_history`, `_attendance`, `round_timeout`, `finetune_epochs`."""

    def _final_validation(self) -> None:
        final = FLModel(params=self._global.params, params_type=ParamsType.FULL)
        if self.finetune_epochs:  # each site also fine-tunes the final model on its own data and keeps it
            final.meta[C.META_FINETUNE_EPOCHS] = self.finetune_epochs
        if self._history["meta"].get("feature_stats"):  # a site restarted since its last round standardises too
            final.meta[C.META_FEATURE_STATS] = self._history["meta"]["feature_stats"]
        present = self._history.get("present") or None
        results = self.send_model_and_wait(
            task_name=C.TASK_VALIDATE, data=final, targets=present, timeout=self.round_timeout
        )
        for res in results:
            self._history["final"][(res.meta or {}).get("client_name", "?")] = dict(res.metrics or {})
        final_scores = self._history["final"]
        metric = self._history["meta"]["metric"]
        shown = ", ".join(f"{s} {m.get(C.METRIC_SCORE, float('nan')):.3f}" for s, m in final_scores.items())
        self.info(f"[progress] final global model, validation {metric} per site: {shown}")
        if self.finetune_epochs:
            personal = {s: m.get(C.METRIC_PERSONAL_SCORE, float("nan")) for s, m in final_scores.items()}
            shown = ", ".join(f"{s} {v:.3f}" for s, v in personal.items())
            self.info(f"[progress] after {self.finetune_epochs} fine-tuning epoch(s) at each site: {shown}")
        self._write_history()

    def _train_alone(self) -> None:
        """Each present site trains the job's initial model on its own data alone (train_alone): the model
        cross-site evaluation then compares with the shared one on every site's data."""
        initial = self.load_model()  # the task's initial model, as round 0 sent it (plaintext: no data in it)
        initial.meta = {**(initial.meta or {}), C.META_ALONE_ROUNDS: self.num_rounds}
        present = self._history.get("present") or None
        self.info(f"[progress] training alone at each site: the initial model, {self.num_rounds} rounds of local "
                  "epochs on the site's own data")  # fmt: skip
        results = self.send_model_and_wait(
            task_name=C.TASK_TRAIN_ALONE, data=initial, targets=present, timeout=self.round_timeout * self.num_rounds
        )
        alone = self._history.setdefault("alone", {})
        for res in results:
            alone[(res.meta or {}).get("client_name", "?")] = dict(res.metrics or {})
        metric = self._history["meta"]["metric"]
        shown = ", ".join(f"{s} {m.get(C.METRIC_ALONE_SCORE, float('nan')):.3f}" for s, m in sorted(alone.items()))
        self.info(f"[progress] trained alone, validation {metric} at each site's own data: {shown or 'none'}")
        self._write_history()

    def _confirm_lost_sites(self) -> None:
        """Wait (at most LOST_CONFIRM_WAIT s) until the server has declared the sites lost to timeouts dead.

        FLARE waits for every site's outcome when a job ends, and marks the job FINISHED:ABNORMAL if a site
        that vanished is declared dead (after the server's heartbeat_timeout) only after the job process
        ended; declared while the job still runs, it is simply left out and the job ends COMPLETED."""
        gone = ("no result within", "did not take", "disconnected")
        last = {s: r for entry in self._history["rounds"] for s, r in (entry.get("dropped") or {}).items()}
        lost = [s for s in self._attendance.absent if last.get(s, "").startswith(gone)]
        deadline = time.time() + LOST_CONFIRM_WAIT
        if lost:
            self.info(f"[progress] waiting up to {LOST_CONFIRM_WAIT} s for the server to confirm lost site(s) gone: "
                      f"{', '.join(lost)}")  # fmt: skip
        while lost and time.time() < deadline and not self.abort_signal.triggered:
            dead = set(getattr(self.communicator, "_dead_clients", {}))  # sites the server reported dead to this job
            lost = [s for s in lost if s not in dead]
            time.sleep(1.0)
