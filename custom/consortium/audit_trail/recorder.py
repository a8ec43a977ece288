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
If a record cannot be written (or the trail no longer verifies: chain.append), nothing crosses unrecorded:
  at a site, the payload loses its body (the model) and becomes an error (EXECUTION_EXCEPTION with the reason,
  which names the trail file and `consortium audit verify`); a task whose data could not be recorded gets that
  error as its reply, whatever its executor did, so the server drops the site like any failing site;
  at the server, the payload loses its body too and the job stops (system panic), as it does at START_RUN when
  the server's trail does not verify.
The payload keeps its headers: FLARE routes a reply by them (the task id is a cookie of the task data, which the
site copies into its reply); a payload cleared of them is a reply the server cannot match to its task, so the
server sends the same task again and again until the round times out (the hang this replaced).
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
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
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


def refuse(payload: Shareable, message: str) -> None:
    """Make `payload` an error in place: its body (the DXO: the model or update) goes, its headers stay (FLARE
    routes it by them), its return code is EXECUTION_EXCEPTION and C.HEADER_SITE_ERROR says why."""
    for key in [k for k in payload if k != ReservedHeaderKey.HEADERS]:
        del payload[key]
    payload.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    payload.set_header(C.HEADER_SITE_ERROR, message[:2000])


class ExchangeRecorder(FLComponent):
    """Appends one record per task payload sent or received to <workspace>/consortium_trail/exchanges.jsonl;
    at the server, also summarises the job's exchanges per site into the job's run record at the end."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._rounds: dict[str, int | None] = {}  # task id -> round of its task data
        self._spent: dict[tuple[str, str], dict | None] = {}  # (job, site) -> DP spent it last reported
        self._records, self._seconds = 0, 0.0  # this process's records and the time it took to write them
        self._refused: dict[str, str] = {}  # task id -> why its task data could not be recorded (site)
        self._panicked = False  # the server stopped the job because its trail failed

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        server = isinstance(fl_ctx.get_engine(), ServerEngineSpec)
        if event_type == EventType.START_RUN:
            return self._check_trail(fl_ctx, server=server)
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
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID)
        with self._lock:
            refused = self._refused.pop(task_id, None) if not server and direction == SENT else None
        if refused:  # its task data went unrecorded: the reply is that error, whatever the executor returned
            refuse(payload, refused)
        start = time.perf_counter()
        try:
            record = self._record(fl_ctx, payload, direction=direction, server=server)
            with self._lock:
                self._records, self._seconds = self._records + 1, self._seconds + time.perf_counter() - start
            self.log_debug(fl_ctx, f"audit trail: {direction} {record['task']} seq {record[chain.SEQ]}")
        except Exception as exc:  # fail closed: a payload that cannot be recorded does not go on
            self._fail(fl_ctx, payload, exc, direction=direction, server=server, task_id=task_id, refused=refused)

    def _fail(self, fl_ctx: FLContext, payload: Shareable, exc: Exception, *, direction: str, server: bool,
              task_id, refused: str | None) -> None:  # fmt: skip
        who = "the server" if server else fl_ctx.get_identity_name()
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, chain.TrailError) else str(exc)
        consequence = "the job stops" if server else f"{who} takes no part in this task"
        message = refused or f"audit trail: {who} could not record the {direction} payload, so {consequence}: {reason}"
        refuse(payload, message)
        if server:
            return self._panic(fl_ctx, message)
        if not refused:  # else logged when the task data came
            self.log_error(fl_ctx, message)
        if direction == RECEIVED:
            with self._lock:
                self._refused[task_id] = message

    def _check_trail(self, fl_ctx: FLContext, *, server: bool) -> None:
        """At the start of a job process: a trail that does not verify is found before any exchange. The server
        then stops the job; a site logs it and refuses each of its tasks (chain.append fails the same way)."""
        path = trail_path(self._root(fl_ctx))
        try:
            chain.check(path)
        except (chain.TrailError, OSError) as exc:
            if server:
                self._panic(fl_ctx, f"audit trail: the server's trail does not verify, so the job does not run: {exc}")
            else:
                self.log_error(fl_ctx, f"audit trail: {fl_ctx.get_identity_name()}'s trail does not verify, so this "
                                       f"site takes part in no task of this job: {exc}")  # fmt: skip

    def _panic(self, fl_ctx: FLContext, message: str) -> None:
        with self._lock:
            if self._panicked:
                return
            self._panicked = True
        self.log_error(fl_ctx, message)
        self.log_info(fl_ctx, f"[progress] {message}")  # the admin's console and `consortium submit` show it
        self.system_panic(message, fl_ctx)

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
