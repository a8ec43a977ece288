"""How a round of ConsortiumFedAvg waits and closes: it ends when every awaited site has answered or has run out
of time, records who contributed and who was dropped and why, and logs the round's progress line. A mixin of
ConsortiumFedAvg, which holds the state it reads."""

from __future__ import annotations

import time

from consortium import constants as C
from consortium.workflows.rounds import RoundOutcome

# seconds a site may take to start its job process and load its data before it takes the job's first task
START_GRACE = 300
# seconds between the round's checks for the last result: the loop only reads the task's state, so checking
# often costs nothing, and the round ends within WAIT_POLL of its last result (task_check_period: 0.1 s)
WAIT_POLL = 0.02


class RoundWait:
    """Needs the workflow's `_history`, `_attendance`, `_round_sites`, `round_timeout`, `num_rounds`,
    `_task_check_period` and FLARE's controller methods (task state, cancel_task, client disconnect times)."""

    def _prepare_task(self, *args, **kwargs):
        task = super()._prepare_task(*args, **kwargs)
        self._round_task = task  # the round's wait loop reads who took it and who answered
        return task

    def _wait_for_round(self, outcome: RoundOutcome) -> bool:
        """Wait until every awaited site answered or ran out of time; False if the job was aborted.

        A site that took the task has `round_timeout` seconds from then, one that has not taken it yet as long
        from the round's start; in the job's first round both have at least START_GRACE (a site's job process
        is still starting, and it loads its data in its first task)."""
        task, round_start = self._round_task, time.time()
        first = not self._history["rounds"] or self._history["rounds"][-1].get("job") != self._job_id()
        limit = max(self.round_timeout, START_GRACE) if first else self.round_timeout
        while self.get_num_standing_tasks():
            if self.abort_signal.triggered:
                self.info("Abort signal triggered. Finishing FedAvg.")
                return False
            taken = {ct.client.name: ct.task_sent_time or round_start for ct in task.client_tasks}
            responded = {ct.client.name for ct in task.client_tasks if ct.result_received_time is not None}
            waiting = self._attendance.awaited(outcome.targets, picked=set(taken), responded=responded)
            now = time.time()
            for site in list(waiting):
                if self.get_client_disconnect_time(site) is not None:
                    outcome.drop(site, "disconnected from the server")
                elif site in taken and now > taken[site] + limit:
                    outcome.drop(site, f"no result within the round timeout ({limit} s)")
                elif site not in taken and now > round_start + limit:
                    outcome.drop(site, f"did not take the round's task within {limit} s")
                else:
                    continue
                waiting.remove(site)
            if not waiting:
                with task.cb_lock:  # no result is being aggregated while the task closes
                    self.cancel_task(task)
                break
            time.sleep(WAIT_POLL)
        while self.get_num_standing_tasks():  # the task monitor removes the closed task
            time.sleep(self._task_check_period)
        return True

    def _close_round(self, outcome: RoundOutcome, seconds: float) -> None:
        self._attendance.close(outcome, picked={ct.client.name for ct in self._round_task.client_tasks})
        for site in self._history.get("refused", {}):  # a refusing site is not lost: it still validates at the end
            self._attendance.seen(site)
        for site, reason in outcome.dropped.items():
            if reason in self._history.get("errors", {}).get(site, "") or reason.startswith("refused: "):
                continue  # the site's own error text was logged when it came
            self.error(f"{C.SITE_ERROR_MARKER} {site}: round {outcome.number + 1}: dropped from this round: {reason}")
        self._history["rounds"].append(
            {"round": outcome.number, "job": self._job_id(), "seconds": seconds, "sites": self._round_sites}
            | outcome.record()
        )
        self._history["present"] = self._attendance.present([c.name for c in self.engine.get_clients()])
        dice = ", ".join(
            f"{s} {m[C.METRIC_SCORE]:.3f}" for s, m in sorted(self._round_sites.items()) if C.METRIC_SCORE in m
        )
        self.info(
            f"[progress] round {outcome.number + 1}/{self.num_rounds}: {outcome.summary()}; "
            f"{self._history['meta']['metric']} of the model they received: {dice or 'none'}"
        )
