"""Distributed provisioning with real processes: each hospital keeps its key, a third joins a running consortium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.deploy.poc import group_alive, port_free
from tests.conftest import REPO
from tests.system.conftest import write_consortium

pytestmark = [pytest.mark.system, pytest.mark.slow]

SITE_C = """
org: site_c
synthetic:
  institution: Gamma Hospital
  manufacturer: Acme Medical
  slices_per_patient: 2
  patients: 6
  noise_hu: 12
  lesion_contrast_hu: -40
  lesion_radius: [4.0, 6.0]
  prevalence: 0.8
"""


def _party(parties: Path, site_configs: Path, consortium: Path, name: str):
    """`consortium ...` run as one party: in its own folder, with its own HOME (FLARE writes ~/.nvflare)."""
    folder = parties / name
    (folder / "home").mkdir(parents=True)
    (folder / "inbox").mkdir()  # what other parties sent this one
    env = {**os.environ, "HOME": str(folder / "home")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the kits' scripts run python3
    base = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs)]
    base += ["--consortium", str(consortium)]

    def run(*args, check=True):
        cmd = [*base, *args, "--dir", str(folder)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert not check or proc.returncode == 0, f"{name}: consortium {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    run.folder, run.env, run.name = folder, env, name
    return run


def _send(path: Path, to) -> Path:
    """Hand a file to another party (e-mail, upload, USB stick): a copy in its inbox."""
    return Path(shutil.copy2(path, to.folder / "inbox" / path.name))


def _join(site, ca, fingerprint: str) -> Path:
    """The hospital requests, the consortium approves, the hospital packages: only the two zips cross."""
    site("site", "request", "--site", site.name)
    request = _send(site.folder / "request" / f"{site.name}.request.zip", ca)
    assert not any(b"PRIVATE KEY" in blob for blob in _contents(request))
    assert f"approved site {site.name}" in ca("ca", "approve", str(request)).stdout
    signed = _send(ca.folder / "signed" / f"{site.name}.signed.zip", site)
    out = site("site", "package", str(signed), "--site", site.name, "--fingerprint", fingerprint).stdout
    assert "root CA fingerprint checked" in out
    return next((site.folder / "kits").glob(f"*/prod_00/{site.name}"))


def _share_key(holder, site, ca) -> None:
    """The key holder seals the secret context to the site's certificate; the sealed file travels via the
    consortium admin; the site opens it with its own private key. Fingerprints are checked both ways."""
    to_fp = site("site", "fingerprint", "--site", site.name).stdout.strip()  # by phone, in real life
    from_fp = holder("site", "fingerprint", "--site", holder.name).stdout.strip()
    cert = _send(ca.folder / "certs" / f"{site.name}.crt", holder)
    holder("site", "he-seal", "--site", holder.name, "--to", str(cert), "--to-fingerprint", to_fp)
    relayed = _send(_send(holder.folder / "he" / f"{site.name}.ckks.sealed", ca), site)
    out = site("site", "he-unseal", str(relayed), "--site", site.name, "--from-fingerprint", from_fp).stdout
    assert f"HE context from {holder.name}" in out


def _start(kit: Path, env: dict) -> subprocess.Popen:
    """The kit's own start script, once (no respawn loop), in a process group of its own (group id = its pid)."""
    log = open(kit / "test_start.log", "w")
    cmd = ["bash", str(kit / "startup" / "sub_start.sh"), "--once"]
    return subprocess.Popen(cmd, cwd=kit, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the groups we started and FLARE's job processes, which a kit process starts in groups of their own."""
    import psutil

    groups = {p.pid for p in procs}
    for proc in procs:
        try:
            groups |= {os.getpgid(c.pid) for c in psutil.Process(proc.pid).children(recursive=True)}
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        for proc in procs:  # reap our own: a zombie leader still counts as a live group
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(group_alive(g) for g in groups):
            time.sleep(0.2)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the server is not up yet
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _registered(admin_kit: Path) -> list[str]:
    from consortium.deploy.admin import clients, session

    with session("admin@test.org", admin_kit, timeout=10) as sess:
        return clients(sess)


def _startup_digest(kit: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (kit / "startup").iterdir() if p.is_file()}


def _contents(path: Path):
    yield path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield from (zf.read(member) for member in zf.namelist())


def _leaks(secret: bytes, root: Path, allowed: Path | None = None) -> list[str]:
    """Files under `root` (zip members too), outside `allowed`, that contain `secret`."""
    files = [p for p in root.rglob("*") if p.is_file() and (allowed is None or allowed not in p.parents)]
    return [str(p) for p in files if any(secret in blob for blob in _contents(p))]


def test_distributed_consortium_with_a_hospital_joining_later(tiny_sites, tmp_path):
    import tenseal as ts

    from consortium.config import load_site_configs
    from consortium.data.synth import generate_site
    from consortium.deploy.admin import download, follow, session
    from consortium.he.release import decrypt_model_file, is_encrypted
    from consortium.jobs import export_job, load_job_spec

    site_configs = next(iter(tiny_sites.values())).source.parent
    (site_configs / "site-c.yaml").write_text(SITE_C)
    generate_site(load_site_configs(site_configs)["site-c"], seed=0, size=32)
    consortium = write_consortium(tmp_path / "consortium.yaml")
    ports = [int(p) for p in re.findall(r"_port: (\d+)", consortium.read_text())]
    parties = tmp_path / "parties"
    ca, a, b, c = (_party(parties, site_configs, consortium, n) for n in ("consortium", "site-a", "site-b", "site-c"))
    timings, procs, clock = {}, [], time.time()

    fingerprint = re.search(r"root CA fingerprint: (SHA256:[0-9A-F:]+)", ca("ca", "init").stdout).group(1)
    server_kit = next((ca.folder / "kits").glob("*/prod_00/localhost"))
    admin_kit = server_kit.parent / "admin@test.org"
    kits = {"site-a": _join(a, ca, fingerprint), "site-b": _join(b, ca, fingerprint)}
    signed_b = b.folder / "inbox" / "site-b.signed.zip"
    wrong = b("site", "package", str(signed_b), "--site", "site-b", "--force", "--fingerprint",
              "SHA256:" + ":".join(["00"] * 32), check=False)  # fmt: skip
    assert wrong.returncode == 2 and "fingerprint does not match" in wrong.stderr
    a("site", "he-keygen", "--site", "site-a")
    _share_key(a, b, ca)
    ca("ca", "install-he", str(_send(a.folder / "he" / "server_context.tenseal", ca)))
    timings["provision (CA, server, 2 sites, HE key)"] = time.time() - clock
    secret = (kits["site-a"] / "startup" / "client_context.tenseal").read_bytes()
    assert (kits["site-b"] / "startup" / "client_context.tenseal").read_bytes() == secret
    assert '"byoc": "none"' in (kits["site-a"] / "local" / "authorization.json").read_text()
    assert (kits["site-a"] / "local" / "consortium" / "site-a.yaml").is_file()
    try:
        clock = time.time()
        procs.append(_start(server_kit, ca.env))
        procs += [_start(kits[party.name], party.env) for party in (a, b)]
        _wait_for(lambda: _registered(admin_kit) == ["site-a", "site-b"], 180, "site-a and site-b to register")
        timings["start server + 2 sites"] = time.time() - clock
        before = {kit: _startup_digest(kit) for kit in (server_kit, kits["site-a"], kits["site-b"])}

        clock = time.time()  # a third hospital joins the running consortium; nobody else is re-provisioned
        kits["site-c"] = _join(c, ca, fingerprint)
        _share_key(a, c, ca)
        procs.append(_start(kits["site-c"], c.env))
        _wait_for(lambda: _registered(admin_kit) == ["site-a", "site-b", "site-c"], 180, "site-c to register")
        timings["site-c joins (request .. registered)"] = time.time() - clock
        assert {kit: _startup_digest(kit) for kit in before} == before

        clock, progress = time.time(), []
        job = export_job(replace(load_job_spec("fedavg", REPO / "jobs"), rounds=2, min_clients=3), tmp_path / "jobs")
        with session("admin@test.org", admin_kit) as sess:
            job_id = sess.submit_job(str(job))
            status = follow(sess, job_id, timeout=900, log=progress.append)
            assert status == "FINISHED:COMPLETED", (status, progress)
            out = download(sess, job_id, tmp_path / "results")
        timings["HE job, 2 rounds, 3 sites"] = time.time() - clock
        assert any("[progress] round 2/2" in line for line in progress), progress  # the lead reads the server log
        history = json.loads((out / "metrics.json").read_text())
        three = {"site-a", "site-b", "site-c"}
        assert [set(r["sites"]) for r in history["rounds"]] == [three, three] and set(history["final"]) == three
        assert is_encrypted(out / "global_model.pt")  # the server's checkpoint is ciphertext; site-c decrypts it
        decrypt_model_file(out / "global_model.pt", kits["site-c"] / "startup" / "client_context.tenseal",
                           tmp_path / "plain.pt")  # fmt: skip
    finally:
        clock = time.time()
        _stop(procs)
        timings["stop"] = time.time() - clock
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    assert not any(group_alive(p.pid) for p in procs)
    _wait_for(lambda: all(port_free(p) for p in ports), 30, f"ports {ports} to be free")

    # no hospital's private key outside its own folder (its request folder and its kit), zip members included
    for site, kit in kits.items():
        key = (parties / site / "request" / f"{site}.key").read_bytes()
        assert (kit / "startup" / "client.key").read_bytes() == key
        assert _leaks(key.splitlines()[5], tmp_path, allowed=parties / site) == [], site
    # the secret context is only in the hospitals' kits; every context the consortium holds is public
    holders = sorted(p for p in parties.rglob("*.tenseal") if p.read_bytes() == secret)
    assert holders == [kit / "startup" / "client_context.tenseal" for kit in kits.values()]
    assert _leaks(secret, ca.folder) == []
    for context in ca.folder.rglob("*.tenseal"):
        assert not ts.context_from(context.read_bytes()).has_secret_key(), context
