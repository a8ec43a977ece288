"""Consortium definition: validated on load; project.yml matches the site configs one to one."""

import pytest
import yaml

from consortium.config import ConfigError, load_site_configs
from consortium.deploy.kit_builder import authorization_policy
from consortium.deploy.provision import load_consortium, project_dict, write_project
from tests.conftest import REPO

GOOD = (REPO / "provisioning" / "consortium.yaml").read_text()


def test_every_site_config_is_a_client_and_nothing_else(tmp_path):
    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    sites = load_site_configs(REPO / "site_configs")
    project = project_dict(defn, sites, site_configs=REPO / "site_configs", storage_root=tmp_path)
    clients = {p["name"]: p["org"] for p in project["participants"] if p["type"] == "client"}
    assert clients == {name: cfg.org for name, cfg in sites.items()}
    builders = [b["path"].rsplit(".", 1)[1] for b in project["builders"]]
    assert builders[-1] == "SignatureBuilder" and "HEBuilder" in builders
    assert builders.index("ConsortiumKitBuilder") < builders.index("SignatureBuilder")
    admins = [p for p in project["participants"] if p["type"] == "admin"]
    assert any(a["role"] == "project_admin" for a in admins)


def test_write_project_reports_changes(tmp_path):
    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    sites = load_site_configs(REPO / "site_configs")
    path = tmp_path / "project.yml"
    project = project_dict(defn, sites, site_configs=REPO / "site_configs", storage_root=tmp_path)
    assert write_project(project, path) == ["new project"]
    assert write_project(project, path) == []
    fewer = {k: v for k, v in sites.items() if k != "hospital-c"}
    smaller = project_dict(defn, fewer, site_configs=REPO / "site_configs", storage_root=tmp_path)
    assert write_project(smaller, path) == ["removed client hospital-c"]
    assert yaml.safe_load(path.read_text())["api_version"] == 3


@pytest.mark.parametrize(
    "old, new, field",
    [
        ("name: admin@consortium.org", "name: admin", "admins[0].name"),
        ("role: project_admin", "role: boss", "admins[0].role"),
        ("fed_learn_port: 8102", "fed_learn_port: 80", "server.fed_learn_port"),
        ("name: localhost", "name: bad_host!", "server.name"),
        ("project: hospital_consortium", "project: a b", "'project'"),
        ("he:", "colour: red\nhe:", "'colour'"),
        ("heartbeat_timeout: 60", "heartbeat_timeout: 5", "server.heartbeat_timeout"),
    ],
)
def test_bad_consortium_definition_names_field(tmp_path, old, new, field):
    path = tmp_path / "consortium.yaml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_consortium(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_authorization_policy_follows_site_config(tmp_path):
    from dataclasses import replace

    cfg = load_site_configs(REPO / "site_configs")["hospital-a"]
    policy = authorization_policy(cfg)["permissions"]
    assert policy["project_admin"]["submit_job"] == "any" and policy["project_admin"]["byoc"] == "none"
    assert policy["member"]["submit_job"] == "none"
    open_site = replace(cfg, authorization=replace(cfg.authorization, allow_custom_code=True, submit_roles=("lead",)))
    policy = authorization_policy(open_site)["permissions"]
    assert policy["lead"]["byoc"] == "any" and policy["project_admin"]["submit_job"] == "none"


def test_unknown_role_in_site_config_refused(tmp_path):
    from tests.conftest import TINY_A, write_site_configs

    folder = write_site_configs(tmp_path, {"site-a": TINY_A + "authorization:\n  submit_roles: [janitor]\n"})
    with pytest.raises(ConfigError, match="authorization.submit_roles"):
        load_site_configs(folder)


def test_kits_drop_a_silent_site_after_the_heartbeat_timeout_and_admins_log_in_fast(tmp_path):
    """Real `nvflare provision`: the server's resources (both files, `poc prepare` copies one over the other)
    carry the consortium's heartbeat_timeout, and admin kits the short login challenge timeout."""
    import json

    from consortium.deploy.provision import run_provision

    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    sites = load_site_configs(REPO / "site_configs")
    project = project_dict(defn, sites, site_configs=REPO / "site_configs", storage_root=tmp_path / "storage")
    write_project(project, tmp_path / "project.yml")
    prod = run_provision(tmp_path / "project.yml", tmp_path / "ws")
    for name in ("resources.json", "resources.json.default"):
        resources = json.loads((prod / defn.server_name / "local" / name).read_text())
        assert [s["heart_beat_timeout"] for s in resources["servers"]] == [defn.heartbeat_timeout] == [60]
        assert "consortium.deploy.rejoin.RejoinRunningJobs" in [c["path"] for c in resources["components"]]
    admin = json.loads((prod / "admin@consortium.org" / "startup" / "fed_admin.json").read_text())
    assert admin["admin"]["authenticate_msg_timeout"] == 1.0
    # reliable streaming in the server's and every hospital's kit: a cut link resends chunks, not whole rounds
    for participant in [defn.server_name, *sites]:
        comm = json.loads((prod / participant / "local" / "comm_config.json").read_text())
        assert comm["streaming_reliable"] is True and comm["streaming_read_timeout"] < 300
