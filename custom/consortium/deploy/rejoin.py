"""Server component: a hospital restarted from its kit rejoins the running jobs it took part in."""

from __future__ import annotations

import json
import threading

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode as RC
from nvflare.apis.fl_constant import RunProcessKey
from nvflare.apis.job_def import ALL_SITES
from nvflare.apis.job_scheduler_spec import DispatchInfo
from nvflare.private.admin_defs import Message, MsgHeader, ReturnCode
from nvflare.private.defs import ClientStatusKey, TrainingTopic
from nvflare.private.fed.server.admin import check_client_replies
from nvflare.private.fed.server.job_runner import JobRunner
from nvflare.private.fed.server.server_commands import ServerCommands
from nvflare.private.fed.utils.fed_utils import extract_participants

RESYNC_TOPIC = "consortium.rejoin.resync_clients"


def resync_clients(topic: str, data, fl_ctx) -> dict:
    """In the job process: take the job's clients (names, tokens) again from the server parent, the only
    authority; `data` is ignored, so an admin's `app_command` with this topic can do no more than a re-sync."""
    engine = fl_ctx.get_engine()
    engine.sync_clients_from_main_process()
    return {"clients": sorted(c.name for c in engine.get_clients())}


class RejoinRunningJobs(FLComponent):
    """A component of the server kit's `local/resources.json` (or of a `local/*__resources.json`), so it is built
    in the server parent and in every server job process. In a job process it only registers the re-sync app
    command. In the parent, on a heartbeat of a site that re-registered (new token) since a running job started
    with it and that runs no process for that job, it deploys the job's app to the site again (the site checks
    its own policies again), hands the job process the site's new token, and starts the site's job process.
    A failed attempt is retried on later heartbeats, `attempts` times per registration of the site."""

    def __init__(self, timeout: float = 30.0, attempts: int = 3):
        super().__init__()
        self.timeout, self.attempts = timeout, attempts
        self._tries: dict = {}  # (job_id, site, token) -> attempts left; a key with 0 is done or given up
        self._lock = threading.Lock()
        if RESYNC_TOPIC not in ServerCommands.app_cmd_registry:
            ServerCommands.register_app_command(RESYNC_TOPIC, resync_clients)

    def handle_event(self, event_type: str, fl_ctx) -> None:
        if event_type != EventType.CLIENT_HEARTBEAT_PROCESSED:
            return
        peer = fl_ctx.get_peer_context()
        engine = fl_ctx.get_engine()
        client = engine.get_client_from_name(peer.get_identity_name()) if peer else None
        if client is None or not client.token:
            return
        for job_id, info in list(engine.run_processes.items()):
            participants = info.get(RunProcessKey.PARTICIPANTS) or {}
            if client.token in participants or client.name not in {c.name for c in participants.values()}:
                continue
            key = (job_id, client.name, client.token)
            with self._lock:
                left = self._tries.get(key, self.attempts)
                if left <= 0:
                    continue
                self._tries[key] = 0  # no second thread for this key while one runs
            threading.Thread(target=self._rejoin, args=(engine, key, left - 1, client), daemon=True).start()

    def _rejoin(self, engine, key: tuple, left: int, client) -> None:
        job_id = key[0]
        with engine.new_context() as fl_ctx:
            try:
                outcome = self._try(engine, job_id, client, fl_ctx)
                self.log_info(fl_ctx, f"{client.name} re-registered during job {job_id}: {outcome}")
            except Exception as e:  # a failed rejoin must never take the server down; the site stays out
                self.log_error(
                    fl_ctx, f"{client.name} cannot rejoin job {job_id} ({left} attempts left): {type(e).__name__}: {e}"
                )
                with self._lock:
                    self._tries[key] = left

    def _try(self, engine, job_id: str, client, fl_ctx) -> str:
        job = engine.job_runner.running_jobs.get(job_id)
        if job is None:
            return "job is not running, nothing to do"
        admin = engine.server.admin_server
        status = admin.send_request_to_client(Message(TrainingTopic.CHECK_STATUS, ""), client.token, self.timeout)
        if status is None or status.reply is None:
            raise RuntimeError("no answer to check_status")
        running = [j.get(ClientStatusKey.JOB_ID) for j in json.loads(status.reply.body)[ClientStatusKey.RUNNING_JOBS]]
        if job_id in running:
            return "the site still runs this job, left alone"
        app_name = next(
            (a for a, p in job.get_deployment().items() if {client.name, ALL_SITES} & set(extract_participants(p))),
            None,
        )
        if app_name is None:
            return "the job has no app for this site"
        # DP accounting survives the restart: the site's ledgers (privacy/ledger.py) are on its own disk, outside
        # the job folder, and its new job process continues them, so its max_epsilon still bounds the whole job
        app_data = job.get_application(app_name, fl_ctx)
        need = (job.meta.get("resource_spec") or {}).get(client.name, {})
        checked = engine.check_client_resources(job, {client.name: need}, fl_ctx)
        enough, resource_token = checked.get(client.name, (False, "no answer"))
        if not enough:
            raise RuntimeError(f"site resources not available: {resource_token}")
        deploy = JobRunner._make_deploy_message(job, app_data, app_name, fl_ctx)
        reply = admin.send_requests_and_get_reply_dict({client.token: deploy}, self.timeout).get(client.token)
        if reply is None or reply.get_header(MsgHeader.RETURN_CODE, ReturnCode.OK) != ReturnCode.OK:
            raise RuntimeError(f"deploy refused: {reply.body if reply else 'no reply'}")
        info = engine.run_processes[job_id]
        kept = {t: c for t, c in info[RunProcessKey.PARTICIPANTS].items() if c.name != client.name}
        info[RunProcessKey.PARTICIPANTS] = {**kept, client.token: client}  # new dict: readers never see a half
        result = engine.send_app_command(job_id, RESYNC_TOPIC, {}, self.timeout)
        if result is None or result.get_return_code() != RC.OK:
            raise RuntimeError(f"the job process did not take the new client list: {result}")
        replies = engine.start_client_job(job, {client.name: DispatchInfo(app_name, need, resource_token)}, fl_ctx)
        if check_client_replies(replies, [client.name], f"start job ({job_id})", strict=True):
            raise RuntimeError("no answer to start_job")
        return f"app redeployed, job process has {result.get('data')}, site job process started"
