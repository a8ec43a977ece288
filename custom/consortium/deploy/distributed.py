"""Distributed provisioning: each hospital makes its own key and request; the consortium signs; the site packages."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from consortium.deploy.provision import ConsortiumDef, ProvisionError

ADMIN_ROLE = {"project_admin": "lead"}  # roles `nvflare cert request` accepts: org_admin, lead, member
STATIC = {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}}


def nvflare(*args: str) -> dict:
    """Run an `nvflare` command with JSON output; its `data`, or a ProvisionError with FLARE's message and hint."""
    cmd = [sys.executable, "-m", "nvflare.cli", "--format", "json", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or reply.get("status") != "ok":
        why = " ".join(str(reply.get(k)) for k in ("message", "hint", "detail") if reply.get(k))
        raise ProvisionError(f"nvflare {' '.join(args[:2])} failed: {why or (proc.stdout + proc.stderr)[-1500:]}")
    return reply["data"]


def project_profile(defn: ConsortiumDef) -> dict:
    """FLARE's project profile: what `cert approve` writes into every signed zip (server endpoint, security)."""
    server = {"host": defn.server_name, "fed_learn_port": defn.fed_learn_port, "admin_port": defn.admin_port}
    return {"name": defn.project, "scheme": "grpc", "connection_security": "mtls", "server": server}


def request(project: str, participant: dict, out: Path, *, force: bool = False) -> dict:
    """`nvflare cert request` for one participant: key, CSR and request zip in `out` (the key never leaves it)."""
    out.mkdir(parents=True, exist_ok=True)
    definition = out.parent / f"{participant['name']}.participant.yaml"
    definition.write_text(yaml.safe_dump({"name": project, "participants": [participant], "builders": [STATIC]}))
    data = nvflare("cert", "request", "-p", str(definition), "--out", str(out), *(["--force"] if force else []))
    data["public_key_sha256"] = json.loads((out / "request.json").read_text())["public_key_sha256"]
    return data


def request_name(request_zip: Path) -> str:
    if not request_zip.is_file():
        raise ProvisionError(f"{request_zip}: no such file; the hospital makes it with `consortium site request`")
    try:
        with zipfile.ZipFile(request_zip) as zf:
            return json.loads(zf.read("request.json"))["name"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        raise ProvisionError(f"{request_zip}: not a request zip from `consortium site request`") from None


def approve(request_zip: Path, consortium_dir: Path, *, force: bool = False) -> dict:
    """Sign a request with the consortium CA; the signed zip goes to signed/, the (public) certificate to certs/."""
    name = request_name(request_zip)
    signed = consortium_dir / "signed" / f"{name}.signed.zip"
    signed.parent.mkdir(parents=True, exist_ok=True)
    ca, profile = consortium_dir / "ca", consortium_dir / "project_profile.yaml"
    args = ["cert", "approve", str(request_zip), "-c", str(ca), "--profile", str(profile), "--out", str(signed)]
    data = nvflare(*args, *(["--force"] if force else []))
    if data.get("kind") == "site":  # a hospital's certificate is public: the HE key holder seals to it
        certs = consortium_dir / "certs"
        certs.mkdir(exist_ok=True)
        with zipfile.ZipFile(signed) as zf:
            (certs / f"{name}.crt").write_bytes(zf.read(f"{name}.crt"))
        data["certificate"] = str(certs / f"{name}.crt")
    return data


def package(signed_zip: Path, request_dir: Path, *, fingerprint: str, workspace: Path, force: bool = False) -> Path:
    """`nvflare package`: the kit from the signed zip and the local private key; checks the root CA fingerprint."""
    if not fingerprint:
        raise ProvisionError("--fingerprint is empty: ask the consortium admin for the root CA fingerprint")
    args = ["package", str(signed_zip), "--request-dir", str(request_dir), "--fingerprint", fingerprint]
    data = nvflare(*args, "-w", str(workspace), *(["--force"] if force else []))
    return Path(data["output_dir"])


def find_kit(folder: Path, name: str) -> Path:
    """The newest kit of participant `name` that `nvflare package` built under `folder`/kits."""
    kits = sorted((folder / "kits").glob(f"*/prod_*/{name}"), key=lambda p: p.parent.name)
    if not kits:
        raise ProvisionError(
            f"no kit of {name!r} under {folder / 'kits'}: build it first (see docs/distributed_provisioning.md)"
        )
    return kits[-1]


def write_site_policies(kit: Path, cfg, *, charter=None) -> None:
    """The hospital's own policies into its kit's local/, exactly as the central kit builder writes them (with
    the consortium definition's `charter`)."""
    from consortium.deploy.kit_builder import write_site_local

    write_site_local(str(kit / "local"), cfg, charter=charter)


def write_server_policies(kit: Path, storage_root: Path, *, heartbeat_timeout: int = 60, charter=None) -> None:
    """The server kit's local/ as the central kit builder writes it (allow-list, job storage, heartbeat
    timeout) and the consortium's roles (deploy/roles.py) for hospitals not known yet: the default site
    config's submit_roles. The distributed flow issues no project_admin; the consortium's lead admin follows
    its own jobs through the server's log (get_job_log n:submitter)."""
    from consortium.deploy.kit_builder import write_server_local

    write_server_local(str(kit / "local"), storage_root=str(storage_root), heartbeat_timeout=heartbeat_timeout,
                       charter=charter)  # fmt: skip


def init(defn: ConsortiumDef, consortium_dir: Path) -> dict:
    """CA, server kit and the consortium's own admin kits in `consortium_dir`; returns the kits and fingerprint."""
    if (consortium_dir / "ca" / "rootCA.key").exists():
        raise ProvisionError(
            f"{consortium_dir / 'ca'} holds a CA already: approve new hospitals with `consortium ca approve`; "
            "re-initialising would cut every hospital off"
        )
    consortium_dir.mkdir(parents=True, exist_ok=True)
    (consortium_dir / "project_profile.yaml").write_text(yaml.safe_dump(project_profile(defn), sort_keys=False))
    # no --org: FLARE names the issuer of the certificates it signs by the project alone
    ca = nvflare(
        "cert", "init", "--profile", str(consortium_dir / "project_profile.yaml"), "-o", str(consortium_dir / "ca")
    )
    server = {"name": defn.server_name, "type": "server", "org": defn.server_org}
    server.update(fed_learn_port=defn.fed_learn_port, admin_port=defn.admin_port)
    # FLARE's distributed flow issues no project_admin certificates: the consortium's admins get `lead` kits
    # (submit and manage their jobs, operate the server); other orgs' admins request their own kits.
    admins = [{"name": a.name, "type": "admin", "org": a.org, "role": ADMIN_ROLE.get(a.role, a.role)}
              for a in defn.admins if a.org == defn.server_org]  # fmt: skip
    kits = {}
    for participant in [server, *admins]:
        folder = consortium_dir / "requests" / participant["name"]
        req = request(defn.project, participant, folder)
        signed = approve(Path(req["request_zip"]), consortium_dir)
        kit = package(Path(signed["signed_zip"]), folder, fingerprint=ca["rootca_fingerprint_sha256"],
                      workspace=consortium_dir / "kits")  # fmt: skip
        kits[participant["name"]] = kit
    write_server_policies(kits[defn.server_name], consortium_dir / "storage", heartbeat_timeout=defn.heartbeat_timeout,
                          charter=defn.charter)  # fmt: skip
    return {"fingerprint": ca["rootca_fingerprint_sha256"], "kits": kits}
