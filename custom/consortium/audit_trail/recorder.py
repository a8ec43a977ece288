"""The FLARE component that appends a trail record for every task payload a participant sends or receives.

It is a component of the participant's own `local/privacy.json` (FLARE builds those into every job process of
that site or server, after the job's own components), so no job can leave it out. It listens to FLARE's events
around the filters rather than being a filter, because a filter of the site's scope runs before the job's
filters (HE encryption among them) and would hash what is not sent. What each event sees (nvflare 2.9.0,
private/fed/client/client_runner.py and private/fed/server/server_runner.py):
  site received   BEFORE_TASK_DATA_FILTER    the task data as it arrived, before any filter
  site sent       AFTER_TASK_RESULT_FILTER   the result after every filter (site scope, then job: DP, HE)
  server sent     AFTER_TASK_DATA_FILTER     the task data after the server's filters, as it goes out
  server received BEFORE_TASK_RESULT_FILTER  the result as it arrived, before the server's filters
FLARE adds only headers after/before these points, and the digest leaves headers out, so a site's "sent" hash
equals the server's "received" hash for the same task id, and the reverse for the model sent to a site.
If a record cannot be written, the payload is replaced by an error reply: nothing crosses unrecorded.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from nvflare.apis.dxo import MetaKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.server_engine_spec import ServerEngineSpec
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from consortium import constants as C
from consortium import runrecord as R
from consortium.audit_trail import chain
from consortium.audit_trail.digest import DXO_KEY, payload_digest

SENT, RECEIVED = "sent", "received"
TIMING_MARK = "audit trail: this job process wrote"  # logged at the end of the job (bench/audit_cost.py reads it)
# event -> (direction, FLContext key of the payload), per side
SITE_EVENTS = {
    EventType.BEFORE_TASK_DATA_FILTER: (RECEIVED, FLContextKey.TASK_DATA),
    EventType.AFTER_TASK_RESULT_FILTER: (SENT, FLContextKey.TASK_RESULT),
}
SERVER_EVENTS = {
    EventType.AFTER_TASK_DATA_FILTER: (SENT, FLContextKey.TASK_DATA),
    EventType.BEFORE_TASK_RESULT_FILTER: (RECEIVED, FLContextKey.TASK_RESULT),
}


def trail_path(root: str | Path) -> Path:
    """A participant's trail, in its workspace root: outside every job folder, so no job deletes it."""
    return Path(root) / C.TRAIL_FOLDER / C.TRAIL_FILE


def dp_spent(shareable: dict) -> dict[str, float] | None:
    """The epsilon spent so far in this job that a site's result reports in its DXO meta, per DP mechanism
    (DP-SGD: the executor's accounting; dp_update: the Gaussian update filter's), or None without DP."""
    dxo = shareable.get(DXO_KEY)
    meta = (dxo.get("meta") if isinstance(dxo, dict) else None) or {}
    metrics = meta.get(MetaKey.INITIAL_METRICS) or {}
    found = {R.Meta.DP_SGD: meta.get(C.METRIC_DP_EPSILON), R.Meta.DP_UPDATE: metrics.get(C.METRIC_DP_UPDATE_EPSILON)}
    spent = {k: float(v) for k, v in found.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return spent or None


class ExchangeRecorder(FLComponent):
    """Appends one record per task payload sent or received to <workspace>/consortium_trail/exchanges.jsonl;
    at the server, also summarises the job's exchanges per site into the job's run record at the end."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._rounds: dict[str, int | None] = {}  # task id -> round of its task data
        self._spent: dict[tuple[str, str], dict | None] = {}  # (job, site) -> DP spent it last reported
        self._records, self._seconds = 0, 0.0  # this process's records and the time it took to write them

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        server = isinstance(fl_ctx.get_engine(), ServerEngineSpec)
        if event_type == EventType.END_RUN:
            self.log_info(fl_ctx, f"{TIMING_MARK} {self._records} records in {self._seconds:.3f} s")
            if server:
                from consortium.audit_trail.summary import record_job_exchanges

                record_job_exchanges(fl_ctx, trail_path(self._root(fl_ctx)), self)
            return
        direction, key = (SERVER_EVENTS if server else SITE_EVENTS).get(event_type, (None, None))
        payload = fl_ctx.get_prop(key) if key else None
        if direction is None or not isinstance(payload, Shareable):
            return
        start = time.perf_counter()
        try:
            record = self._record(fl_ctx, payload, direction=direction, server=server)
            with self._lock:
                self._records, self._seconds = self._records + 1, self._seconds + time.perf_counter() - start
            self.log_debug(fl_ctx, f"audit trail: {direction} {record['task']} seq {record[chain.SEQ]}")
        except Exception as exc:  # fail closed: a payload that cannot be recorded does not go on
            message = f"audit trail: could not record this {direction} payload ({type(exc).__name__}: {exc})"
            self.log_error(fl_ctx, message)
            payload.clear()
            payload.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
            payload.set_header(C.HEADER_SITE_ERROR, message[:2000])

    @staticmethod
    def _root(fl_ctx: FLContext) -> str:
        return fl_ctx.get_engine().get_workspace().get_root_dir()

    def _record(self, fl_ctx: FLContext, payload, *, direction: str, server: bool) -> dict:
        job, task_id = fl_ctx.get_job_id(), fl_ctx.get_prop(FLContextKey.TASK_ID)
        peer_ctx = fl_ctx.get_peer_context()
        peer = peer_ctx.get_identity_name() if peer_ctx is not None else None
        me = fl_ctx.get_identity_name()
        site = peer if server else me
        is_data = (direction == SENT) == server  # task data: the server sends it, a site receives it
        with self._lock:
            if is_data:
                round_number = payload.get_header(AppConstants.CURRENT_ROUND)
                self._rounds[task_id] = round_number
                spent = self._spent.get((job, site))
            else:
                round_number = self._rounds.pop(task_id, None)
                spent = self._spent[(job, site)] = dp_spent(payload) or self._spent.get((job, site))
        digest = payload_digest(payload)
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "participant": me,
            "job": job,
            "round": round_number if isinstance(round_number, int) else None,
            "task": fl_ctx.get_prop(FLContextKey.TASK_NAME),
            "task_id": task_id,
            "direction": direction,
            "peer": peer,
            "kind": digest.kind,
            "rc": str(payload.get_return_code(ReturnCode.OK)),
            "bytes": digest.bytes,
            "sha256": digest.sha256,
            "he": digest.he,
            "dp_epsilon": spent,
        }
        return chain.append(trail_path(self._root(fl_ctx)), entry)
