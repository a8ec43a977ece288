"""What sites send back in a round: aggregated, refused with a reason, or recorded as an error or privacy
refusal. A mixin of ConsortiumFedAvg, which holds the round's state it updates."""

from __future__ import annotations

from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel

from consortium import constants as C
from consortium.governance.record import approved_by


class SiteResults:
    """Needs the workflow's `aggregator`, `_history`, `_outcome`, `_round_sites`, `_attendance`."""

    def _process_result(self, client_task, fl_ctx) -> None:
        """Record a site's own error text or privacy refusal (the site is dropped from the round; a refusing
        site also from the rest of the job), and log it where the admin API can read it."""
        site, result = client_task.client.name, client_task.result
        refusal = result.get_header(C.HEADER_SITE_REFUSED) if result is not None else None
        message = result.get_header(C.HEADER_SITE_ERROR) if result is not None else None
        if refusal:
            self.error(f"{C.SITE_ERROR_MARKER} {site} refused to train (dropped from the remaining rounds): {refusal}")
            self._history.setdefault("refused", {})[site] = {"round": self.current_round, "reason": refusal}
            remaining = ", ".join(self.sample_clients()) or "no site"
            self.info(f"[progress] {site} refused: {refusal}")  # the admin's console and `consortium submit` show it
            self.info(f"[progress] {site} dropped; training goes on with {remaining}")
        elif message:
            self.error(f"{C.SITE_ERROR_MARKER} {site}: {message}")
            self._history.setdefault("errors", {})[site] = message
        if (refusal or message) and self._outcome is not None:
            self._outcome.drop(site, f"refused: {refusal}" if refusal else message)
        super()._process_result(client_task, fl_ctx)

    def process_result_of_unknown_task(self, client, task_name, client_task_id, result, fl_ctx) -> None:
        """A result that came after its round closed is not aggregated, but its site is awaited again."""
        self.info(f"{client.name}: result of task '{task_name}' came after its round closed; not aggregated")
        self._attendance.seen(client.name)

    def _aggregate_one_result(self, result: FLModel) -> bool:
        site = (result.meta or {}).get("client_name", "?")
        try:
            self.aggregator.accept_model(result)
        except (ValueError, TypeError, KeyError) as exc:  # a malformed update: refused, never a crash
            self._outcome.drop(site, f"update refused by the server: {exc}")
            return False
        governance = self._history["meta"].get("governance")  # what the site approved the job by (governance/)
        approved_by(governance, site, (result.meta or {}).get(C.META_SITE_APPROVAL))
        entry = dict(result.metrics or {})
        entry["weight"] = (result.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)  # aggregation weight (`weighting`)
        self._round_sites[site] = entry
        self._outcome.contribute(site)
        self._received_count += 1
        return True
