"""From provisioning/consortium.yaml + site_configs/ to FLARE's project.yml and signed startup kits."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from consortium.config import ORG_RE, ROLES, ConfigError, SiteConfig, read_yaml_mapping
from consortium.governance.charter import Charter, check_site_approvals, parse_charter

HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
PROJECT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class ProvisionError(RuntimeError):
    """FLARE provisioning failed; the message carries its output."""


@dataclass(frozen=True)
class Admin:
    name: str
    org: str
    role: str


@dataclass(frozen=True)
class ConsortiumDef:
    project: str
    description: str
    server_name: str
    server_org: str
    fed_learn_port: int
    admin_port: int
    admins: tuple[Admin, ...]
    he: dict | None
    source: Path
    heartbeat_timeout: int = 60  # seconds of silence after which the server drops a site
    charter: Charter | None = None  # purposes, forbidden uses, data-sharing agreement (governance/charter.py)


def _port(value, source, field) -> int:
    if not isinstance(value, int) or not 1024 <= value <= 65535:
        raise ConfigError(f"{source}: field '{field}': {value!r} is not a port in 1024-65535")
    return value


def load_consortium(path: str | Path) -> ConsortiumDef:
    """Read and validate the consortium definition; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"consortium definition {path} not found (expected provisioning/consortium.yaml)")
    raw = read_yaml_mapping(path)
    known = {"project", "description", "server", "admins", "he", "charter"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: field '{unknown[0]}': unknown key. Allowed: {', '.join(sorted(known))}")
    project = str(raw.get("project", ""))
    if not PROJECT_RE.match(project):
        raise ConfigError(f"{path}: field 'project': {project!r} must use letters, digits, '-' or '_'")
    server = raw.get("server") or {}
    name, org = str(server.get("name", "")), str(server.get("org", ""))
    if not HOST_RE.match(name):
        raise ConfigError(f"{path}: field 'server.name': {name!r} is not a host name (use localhost for POC)")
    if not ORG_RE.match(org):
        raise ConfigError(f"{path}: field 'server.org': {org!r} must use letters, digits and '_' only")
    admins = _admins(raw.get("admins"), path)
    return ConsortiumDef(
        project=project,
        description=str(raw.get("description", "")),
        server_name=name,
        server_org=org,
        fed_learn_port=_port(server.get("fed_learn_port"), path, "server.fed_learn_port"),
        admin_port=_port(server.get("admin_port"), path, "server.admin_port"),
        admins=tuple(admins),
        he=raw.get("he"),
        source=path,
        heartbeat_timeout=_heartbeat(server.get("heartbeat_timeout", 60), path),
        charter=parse_charter(raw.get("charter"), path),
    )


def _heartbeat(value, source) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 30 <= value <= 86400:
        raise ConfigError(
            f"{source}: field 'server.heartbeat_timeout': {value!r} must be whole seconds in 30-86400 "
            "(sites send a heartbeat every 10 s)"
        )
    return value


ADMIN_KEYS = ("name", "org", "role")


def _admins(entries, path) -> tuple[Admin, ...]:
    """The people with an admin kit: e-mail name, org and one of FLARE's four roles each; one project admin at
    least; nobody twice."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: field 'admins': a list of people, each with {', '.join(ADMIN_KEYS)}")
    admins, seen = [], {}
    for i, a in enumerate(entries):
        field = f"admins[{i}]"
        if not isinstance(a, dict):
            raise ConfigError(f"{path}: field '{field}': {a!r} is not a mapping with {', '.join(ADMIN_KEYS)}")
        unknown = sorted(set(a) - set(ADMIN_KEYS))
        if unknown:
            raise ConfigError(f"{path}: field '{field}.{unknown[0]}': unknown key. Allowed: {', '.join(ADMIN_KEYS)}")
        if not EMAIL_RE.match(str(a.get("name", ""))):
            raise ConfigError(f"{path}: field '{field}.name': admin names are e-mail addresses, got {a.get('name')!r}")
        if not ORG_RE.match(str(a.get("org", ""))):
            raise ConfigError(f"{path}: field '{field}.org': {a.get('org')!r} must use letters, digits and '_' only")
        if a.get("role") not in ROLES:
            raise ConfigError(
                f"{path}: field '{field}.role': {a.get('role')!r} is not a role; the roles are {', '.join(ROLES)} "
                "(docs/deployment.md#roles)"
            )
        if a["name"] in seen:
            raise ConfigError(
                f"{path}: field '{field}.name': {a['name']} is listed twice (also admins[{seen[a['name']]}]); "
                "a person has one org and one role"
            )
        seen[a["name"]] = i
        admins.append(Admin(name=a["name"], org=a["org"], role=a["role"]))
    if not any(a.role == "project_admin" for a in admins):
        raise ConfigError(f"{path}: field 'admins': at least one admin needs role project_admin")
    return tuple(admins)


def check_admin_orgs(defn: ConsortiumDef, sites: dict[str, SiteConfig]) -> None:
    """Every admin belongs to the server's org or a hospital's: an org no participant has is a typo, or a
    hospital that left the consortium while its people stayed in consortium.yaml (their kits would still log
    in). Raises ConfigError naming each such admin."""
    orgs = {defn.server_org} | {s.org for s in sites.values()}
    problems = [
        f"field 'admins[{i}].org': {a.name} (role {a.role}) belongs to org '{a.org}', which neither the server nor any "
        "hospital has"
        for i, a in enumerate(defn.admins)
        if a.org not in orgs
    ]
    if problems:
        known = ", ".join([f"{defn.server_org} (server)", *sorted({s.org for s in sites.values()})])
        raise ConfigError(
            f"{defn.source}: {'; '.join(problems)}. The orgs are: {known}. Fix a typo, or remove the people of a "
            "hospital that left from admins:"
        )


def project_dict(
    defn: ConsortiumDef,
    sites: dict[str, SiteConfig],
    *,
    site_configs: Path,
    storage_root: Path,
    ports: tuple[int, int] | None = None,
) -> dict:
    """FLARE's api_version 3 project: server, one client per site config, admins, builders (signature last).
    Raises ConfigError if an admin's org is no participant's (check_admin_orgs)."""
    check_admin_orgs(defn, sites)
    if defn.charter is not None:  # a hospital approves only the charter's purposes, never a forbidden use
        check_site_approvals(defn.charter, sites)
    fed_port, admin_port = ports or (defn.fed_learn_port, defn.admin_port)
    server = {"name": defn.server_name, "type": "server", "org": defn.server_org}
    server.update({"fed_learn_port": fed_port, "admin_port": admin_port})
    participants = [server]
    participants += [{"name": s.name, "type": "client", "org": s.org} for s in sites.values()]
    participants += [{"name": a.name, "type": "admin", "org": a.org, "role": a.role} for a in defn.admins]
    builders = [
        {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder"},
        {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
        {"path": "nvflare.lighter.impl.cert.CertBuilder"},
    ]
    if defn.he:
        builders.append({"path": "nvflare.lighter.impl.he.HEBuilder", "args": dict(defn.he)})
    kit = {"site_configs": str(Path(site_configs).resolve()), "storage_root": str(Path(storage_root).resolve())}
    kit["heartbeat_timeout"] = defn.heartbeat_timeout
    if defn.charter is not None:  # into every kit, under its signature
        kit["charter"] = defn.charter.to_dict()
    builders.append({"path": "consortium.deploy.kit_builder.ConsortiumKitBuilder", "args": kit})
    builders.append({"path": "nvflare.lighter.impl.signature.SignatureBuilder"})  # signs what the others wrote
    return {
        "api_version": 3,
        "name": defn.project,
        "description": defn.description,
        "participants": participants,
        "builders": builders,
    }


def write_project(project: dict, path: Path) -> list[str]:
    """Write project.yml; return human-readable changes against the previous file (empty if none)."""
    old = yaml.safe_load(path.read_text()) if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Generated by `consortium provision` from provisioning/consortium.yaml and site_configs/.\n"
        "# Do not edit: change those files and provision again.\n" + yaml.safe_dump(project, sort_keys=False)
    )
    if old is None:
        return ["new project"]
    changes = []
    before = {p["name"]: p for p in old.get("participants", [])}
    after = {p["name"]: p for p in project["participants"]}
    changes += [f"added {after[n]['type']} {n}" for n in after if n not in before]
    changes += [f"removed {before[n]['type']} {n}" for n in before if n not in after]
    changes += [f"changed {n}" for n in after if n in before and after[n] != before[n]]
    if old.get("builders") != project["builders"]:
        changes.append("builders changed")
    return changes


def run_provision(project_yml: Path, workspace: Path) -> Path:
    """Run `nvflare provision`; return the newest prod_NN folder holding the kits."""
    cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project_yml), "-w", str(workspace), "--force"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ProvisionError(f"nvflare provision failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    name = yaml.safe_load(project_yml.read_text())["name"]
    prods = sorted((workspace / name).glob("prod_*"), key=lambda p: int(p.name.split("_")[1]))
    if not prods:
        raise ProvisionError(f"nvflare provision wrote no prod_NN folder under {workspace / name}")
    return prods[-1]
