"""The server's side of a server-optimizer job (FedAdam, FedYogi, FedAdagrad): it averages, the sites step.

Sites send w_i - w_t; the round's aggregate (ciphertext under HE) is sent as the next round's task, marked
META_AGGREGATE_ROUND, and each site steps its own copy of (w_t, m, v) with it (server_opt.py). The server
never holds a global model during the rounds, so after the last one every present site applies the last step
and sends w_T (weight 1): all are equal, their average is w_T, saved as the global model as in every job.
A mixin of ConsortiumFedAvg, which holds the state it reads."""

from __future__ import annotations

from collections import Counter

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium import constants as C


class ServerStep:
    """Needs the workflow's `server_optimizer`, `aggregator`, `_history`, `_outcome`, `round_timeout`."""

    def _aggregate_one_result(self, result: FLModel) -> bool:
        """In a server-optimizer job only pseudo-gradients are averaged: a site sending a model is refused."""
        if self.server_optimizer and not (result.meta or {}).get(C.META_PSEUDO_GRADIENT):
            site = (result.meta or {}).get("client_name", "?")
            self._outcome.drop(site, "update refused by the server: it sent a model, not w_i - w_t (server_optimizer)")
            return False
        return super()._aggregate_one_result(result)

    def _mark_aggregate(self, model: FLModel, round_number: int) -> FLModel:
        """The aggregate of `round_number`'s pseudo-gradients, as the next round's task: the sites step with it."""
        model.meta = {**(model.meta or {}), C.META_AGGREGATE_ROUND: round_number}
        return model

    def _final_server_step(self, aggregate: FLModel) -> FLModel | None:
        """Every present site applies the last step and sends w_T; the sites that agree on it (by fingerprint)
        are averaged into the global model. None if no site answered."""
        meta = {**(aggregate.meta or {}), C.META_FINAL_STEP: True}
        task = FLModel(params=aggregate.params, params_type=ParamsType.FULL, meta=meta)
        task.current_round, task.total_rounds = self.num_rounds, self.num_rounds
        task.meta[C.META_RUN_CHAIN] = self._history["meta"].get("run_chain", [])
        present = self._history.get("present") or None
        self._outcome = None  # errors of this task are recorded, not dropped from a round
        results = self.send_model_and_wait(
            task_name=C.TASK_TRAIN, data=task, targets=present, timeout=self.round_timeout
        )
        by_site = {(r.meta or {}).get("client_name", "?"): r for r in results if r.params}
        prints = {s: (r.metrics or {}).get(C.METRIC_MODEL_SHA) for s, r in by_site.items()}
        if not by_site:
            self.error(f"{C.SITE_ERROR_MARKER} server optimizer: no site sent the final global model")
            return None
        agreed, _ = Counter(prints.values()).most_common(1)[0]
        for site, fingerprint in sorted(prints.items()):
            if fingerprint != agreed:
                self.error(f"{C.SITE_ERROR_MARKER} {site}: holds global model {fingerprint}, the others {agreed}; "
                           "left out of the final average")  # fmt: skip
        self.aggregator.reset_stats()
        for site, result in by_site.items():
            if prints[site] == agreed:
                self.aggregator.accept_model(result)
        final = self.aggregator.aggregate_model()
        sites = sorted(s for s in prints if prints[s] == agreed)
        self.info(f"[progress] server optimizer: the last step applied at {', '.join(sites)}; every one holds "
                  f"global model {agreed}")  # fmt: skip
        return final
