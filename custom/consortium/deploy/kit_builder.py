"""A FLARE provisioning Builder that writes each site's own policies into its kit's `local/` before signing."""

from __future__ import annotations

import json
import os

import yaml
from nvflare.lighter.ctx import ProvisionContext
from nvflare.lighter.entity import Project
from nvflare.lighter.spec import Builder

from consortium import constants as C
from consortium.audit_trail.install import with_trail
from consortium.config import SiteConfig, load_site_configs, site_config_dict
from consortium.deploy.policy import with_allow_list
from consortium.deploy.roles import default_server_policy, server_policy, site_policy
from consortium.governance.charter import Charter, parse_charter, write_kit_charter
from consortium.governance.gate import GATE_COMPONENT, SUBMIT_CHECK_COMPONENT


def authorization_policy(cfg: SiteConfig) -> dict:
    """FLARE `local/authorization.json` for a site: the consortium's roles (deploy/roles.py) with the site's own
    choice of who may run jobs there and whether jobs may ship code."""
    return site_policy(cfg)


PRIVACY_SCOPE = "hospital_policy"  # the one privacy scope in every hospital's kit, and its default


def privacy_policy(cfg: SiteConfig) -> dict:
    """FLARE `local/privacy.json` for a site: one scope, the default (jobs name no scope), whose result filter
    is the site's PrivacyGuard with its floor. FLARE refuses to deploy a job that asks for another scope, and
    runs scope filters before the job's own, so no job can remove or reorder the guard."""
    floor = cfg.privacy
    guard = {
        "path": "consortium.filters.dp.PrivacyGuard",
        "args": {"require_dp": floor.require_dp, "max_epsilon": floor.max_epsilon, "delta": floor.delta},
    }
    scope = {"name": PRIVACY_SCOPE, "properties": {"site": cfg.name}, "task_result_filters": [guard]}
    # the site's audit trail of every payload it sends or receives (consortium.audit_trail), also the site's own
    return with_trail({"scopes": [scope], "default_scope": PRIVACY_SCOPE}, default_scope=PRIVACY_SCOPE)


def _resources(local_dir: str) -> dict:
    """The kit's resources with the allow-list admitting `consortium.`; also written back to
    resources.json.default, because `nvflare poc prepare` regenerates the server's resources.json from it."""
    default = os.path.join(local_dir, "resources.json.default")
    with open(default) as f:
        resources = with_allow_list(json.load(f))
    _write_json(default, resources)
    return resources


def _server_storage(resources: dict, storage_root: str) -> None:
    """Keep the server's job and snapshot storage inside the consortium workspace, not /tmp/nvflare."""
    resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"] = os.path.join(storage_root, "snapshots")
    for comp in resources.get("components", []):
        if comp.get("id") == "job_manager":
            comp["args"]["uri_root"] = os.path.join(storage_root, "jobs")


def _fast_admin_login(path: str) -> None:
    """FLARE's admin login sends its first identity challenge before the connection is up and waits 5 s for
    it (authenticate_msg_timeout) before retrying; 1 s makes every admin API call and `status` about 2 s faster
    (measured 5.3 -> 3.3 s per login). Admin kits are not signed, so this edit is allowed."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        config = json.load(f)
    config.setdefault("admin", {})["authenticate_msg_timeout"] = 1.0
    _write_json(path, config)


# FLARE's message streaming (every model up- and download) loses the chunks in flight when a connection drops:
# the receiver then waits streaming_read_timeout (300 s) for them, and the round times the site out (seen on a
# 20 Mbit/s link cut mid-upload). Reliable streaming keeps unacknowledged chunks and resends them over the
# reconnected link for up to streaming_retry_timeout seconds; a stream that still fails is noticed after
# streaming_read_timeout and the site resends its whole result.
COMM_CONFIG = {
    "streaming_reliable": True,
    "streaming_retry_wait": 2.0,
    "streaming_retry_timeout": 120.0,
    "streaming_read_timeout": 120,
    "streaming_ack_wait": 120,
}


def _write_comm_config(local: str) -> None:
    _write_json(os.path.join(local, "comm_config.json"), COMM_CONFIG)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


class ConsortiumKitBuilder(Builder):
    """Writes site policies into every kit; must run after StaticFileBuilder and before SignatureBuilder."""

    def __init__(self, site_configs: str, storage_root: str, heartbeat_timeout: int = 60, charter: dict | None = None):
        self.site_configs = site_configs
        self.storage_root = storage_root
        self.heartbeat_timeout = heartbeat_timeout
        self.charter = charter  # the consortium definition's charter (Charter.to_dict())

    def build(self, project: Project, ctx: ProvisionContext):
        sites = load_site_configs(self.site_configs)
        clients = {p.name for p in project.get_clients()}
        if clients != set(sites):
            raise ValueError(f"project clients {sorted(clients)} differ from site configs {sorted(sites)}")
        charter = parse_charter(self.charter, "consortium.yaml") if self.charter is not None else None
        write_server_local(
            ctx.get_local_dir(project.get_server()),
            storage_root=self.storage_root,
            heartbeat_timeout=self.heartbeat_timeout,
            authorization=server_policy(sites),
            charter=charter,
        )
        for admin in project.get_admins():
            _fast_admin_login(os.path.join(ctx.get_kit_dir(admin), "fed_admin.json"))
            if charter is not None:  # every kit carries the charter (admin kits are not signed by FLARE)
                write_kit_charter(os.path.join(ctx.get_local_dir(admin), C.KIT_SITE_CONFIG_FOLDER), charter)
        for client in project.get_clients():
            write_site_local(ctx.get_local_dir(client), sites[client.name], charter=charter)


def _with_component(resources: dict, component: dict) -> dict:
    """`resources` with `component` among its components (replacing one of the same id)."""
    kept = [c for c in resources.get("components", []) if c.get("id") != component["id"]]
    resources["components"] = kept + [dict(component)]
    return resources


REJOIN_COMPONENT = {"id": "rejoin_running_jobs", "path": "consortium.deploy.rejoin.RejoinRunningJobs", "args": {}}


def write_server_local(
    local: str, *, storage_root: str, heartbeat_timeout: int, authorization: dict | None = None,
    charter: Charter | None = None,
) -> dict:
    """The server kit's local/resources.json (and .default): the allow-list with `consortium.`, job storage
    inside the consortium workspace, the heartbeat timeout after which a silent site is dropped, and reliable
    streaming (comm_config.json); local/privacy.json with the audit trail; local/authorization.json (and
    .default, so no other policy lies beside it) with the consortium's roles (deploy/roles.py; by default
    for hospitals with the default site config's submit_roles)."""
    resources = _resources(local)
    _server_storage(resources, storage_root)
    # FLARE drops a silent site after this many seconds (its default 600): until then a finished job whose
    # site was lost stays RUNNING, waiting for that site's outcome. Sites send a heartbeat every 10 s.
    for server_cfg in resources.get("servers", []):
        server_cfg["heart_beat_timeout"] = heartbeat_timeout
    # a hospital restarted from its kit rejoins the running job (deploy/rejoin.py); built in the server parent
    # and in every server job process, which is why it is a component of resources.json
    components = [c for c in resources.setdefault("components", []) if c.get("id") != REJOIN_COMPONENT["id"]]
    resources["components"] = components + [dict(REJOIN_COMPONENT)]
    # the charter (governance/): its file in the kit, and the check that refuses at submission what it refuses
    _with_component(resources, SUBMIT_CHECK_COMPONENT)
    if charter is not None:
        write_kit_charter(os.path.join(local, C.KIT_SITE_CONFIG_FOLDER), charter)
    for name in ("resources.json", "resources.json.default"):  # `poc prepare` rewrites the first from the second
        _write_json(os.path.join(local, name), resources)
    _write_comm_config(local)
    for name in ("authorization.json", "authorization.json.default"):
        _write_json(os.path.join(local, name), authorization or default_server_policy())
    # the server's audit trail (consortium.audit_trail): FLARE builds privacy.json's components into every server
    # job process; the one (empty) scope is the sites' own, so the server admits the same jobs they do
    _write_json(os.path.join(local, "privacy.json"), with_trail({}, default_scope=PRIVACY_SCOPE))
    return resources


def write_site_local(local: str, cfg: SiteConfig, *, charter: Charter | None = None) -> None:
    """A hospital kit's local/: resources (allow-list; the charter gate as FLARE's app deployer), authorization and
    privacy policies, reliable streaming, its site config and the consortium's charter. Without a charter the
    gate refuses every job (it has nothing to check them against)."""
    resources = _with_component(_resources(local), GATE_COMPONENT)  # governance/gate.py: the site decides
    for name in ("resources.json", "resources.json.default"):
        _write_json(os.path.join(local, name), resources)
    for name in ("authorization.json", "authorization.json.default"):  # no other policy beside the site's own
        _write_json(os.path.join(local, name), authorization_policy(cfg))
    _write_json(os.path.join(local, "privacy.json"), privacy_policy(cfg))
    _write_comm_config(local)
    folder = os.path.join(local, C.KIT_SITE_CONFIG_FOLDER)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{cfg.name}.yaml"), "w") as f:
        f.write(f"# {cfg.name}'s resolved site config, from {cfg.source.name} at provisioning time.\n")
        yaml.safe_dump(site_config_dict(cfg), f, sort_keys=False)
    if charter is not None:
        write_kit_charter(folder, charter)
