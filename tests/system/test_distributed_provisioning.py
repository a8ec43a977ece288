"""Distributed provisioning with real processes: each hospital keeps its key, a third joins a running consortium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from consortium.deploy.poc import group_alive, kill_group, port_free
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


def _party(tmp: Path, site_configs: Path, consortium: Path, name: str):
    """Run `consortium ...` as one party: its own folder and HOME (FLARE writes audit records to ~/.nvflare)."""
    folder = tmp / name
    (folder / "home").mkdir(parents=True)
    env = {**os.environ, "HOME": str(folder / "home")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the kits' scripts run python3
    base = [
        sys.executable,
        "-m",
        "consortium.cli",
        "--site-configs",
        str(site_configs),
        "--consortium",
        str(consortium),
    ]

    def run(*args, check=True):
        proc = subprocess.run(
            [*base, *args, "--dir", str(folder)], env=env, capture_output=True, text=True, timeout=300
        )
        assert not check or proc.returncode == 0, f"{name}: consortium {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    run.folder, run.env = folder, env
    return run


def _join(site, ca, fingerprint: str) -> Path:
    """A hospital requests, the consortium approves, the hospital packages: only zips cross between them."""
    name = site.folder.name
    site("site", "request", "--site", name)
    request_zip = site.folder / "request" / f"{name}.request.zip"
    assert "approved site " + name in ca("ca", "approve", str(request_zip)).stdout
    signed = ca.folder / "signed" / f"{name}.signed.zip"
    assert "root CA fingerprint checked" in site("site", "package", str(signed), "--site", name, "--fingerprint",
                                                 fingerprint).stdout  # fmt: skip
    return next((site.folder / "kits").glob(f"*/prod_00/{name}"))


def _share_key(holder, site) -> None:
    """The key holder seals the secret context to the site's certificate; the site opens it with its own key."""
    ca_certs = holder.folder.parent / "consortium" / "certs"
    to_fp = site("site", "fingerprint", "--site", site.folder.name).stdout.strip()  # by phone, in real life
    from_fp = holder("site", "fingerprint", "--site", holder.folder.name).stdout.strip()
    holder("site", "he-seal", "--site", holder.folder.name, "--to", str(ca_certs / f"{site.folder.name}.crt"),
           "--to-fingerprint", to_fp)  # fmt: skip
    sealed = holder.folder / "he" / f"{site.folder.name}.ckks.sealed"
    out = site("site", "he-unseal", str(sealed), "--site", site.folder.name, "--from-fingerprint", from_fp).stdout
    assert f"HE context from {holder.folder.name}" in out


def _start(kit: Path, env: dict) -> subprocess.Popen:
    """The kit's own start script, once (no respawn loop), in a process group of its own (group id = its pid)."""
    log = open(kit / "test_start.log", "w")
    cmd = ["bash", str(kit / "startup" / "sub_start.sh"), "--once"]
    return subprocess.Popen(cmd, cwd=kit, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the group we started, and FLARE's job processes, which its kit process starts in groups of their own."""
    import psutil

    pgid = proc.pid
    try:
        children = psutil.Process(pgid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    groups = {pgid}
    for child in children:
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:
            pass
    for group in sorted(groups, key=lambda g: g == pgid):  # job processes first, then the kit's group
        kill_group(group)
    proc.wait(timeout=30)  # reap it: a zombie leader would still count as a live group


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and "startup" in p.parts}  # fmt: skip


def _contents(path: Path):
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                yield zf.read(member)


def _leaks(secret: bytes, root: Path, allowed: Path) -> list[str]:
    """Files under `root` (zip members too) outside `allowed` that contain `secret`."""
    return [str(p) for p in root.rglob("*") if p.is_file() and allowed not in p.parents
            and any(secret in blob for blob in _contents(p))]  # fmt: skip


def test_distributed_consortium_with_a_hospital_joining_later(tiny_sites, tmp_path):
    import tenseal as ts

    from consortium.config import load_site_configs
    from consortium.data.synth import generate_site
    from consortium.deploy.admin import clients, download, follow, session
    from consortium.he.release import decrypt_model_file, is_encrypted
    from consortium.jobs import export_job, load_job_spec

    site_configs = next(iter(tiny_sites.values())).source.parent
    (site_configs / "site-c.yaml").write_text(SITE_C)
    generate_site(load_site_configs(site_configs)["site-c"], seed=0, size=32)
    consortium = write_consortium(tmp_path / "consortium.yaml")
    ports = [int(p) for p in re.findall(r"_port: (\d+)", consortium.read_text())]
    parties = tmp_path / "parties"
    ca, a, b, c = (_party(parties, site_configs, consortium, n) for n in ("consortium", "site-a", "site-b", "site-c"))
    timings, groups = _Timings(), []
    start = time.time()
    init = ca("ca", "init").stdout
    fingerprint = re.search(r"root CA fingerprint: (SHA256:[0-9A-F:]+)", init).group(1)
    server_kit = next((ca.folder / "kits").glob("*/prod_00/localhost"))
    admin_kit = server_kit.parent / "admin@test.org"
    kits = {"site-a": _join(a, ca, fingerprint), "site-b": _join(b, ca, fingerprint)}
    wrong = b("site", "package", str(ca.folder / "signed" / "site-b.signed.zip"), "--site", "site-b", "--force",
              "--fingerprint", "SHA256:" + ":".join(["00"] * 32), check=False)  # fmt: skip
    assert wrong.returncode == 2 and "fingerprint does not match" in wrong.stderr
    a("site", "he-keygen", "--site", "site-a")
    _share_key(a, b)
    ca("ca", "install-he", str(a.folder / "he" / "server_context.tenseal"))
    timings["provision 2 sites + HE"] = time.time() - start
    secret = (kits["site-a"] / "startup" / "client_context.tenseal").read_bytes()
    assert (kits["site-b"] / "startup" / "client_context.tenseal").read_bytes() == secret
    auth = (kits["site-a"] / "local" / "authorization.json").read_text()
    assert '"byoc": "none"' in auth and (kits["site-a"] / "local" / "consortium" / "site-a.yaml").is_file()
    try:
        start = time.time()
        groups.append(_start(server_kit, ca.env))
        groups += [_start(kits[s], party.env) for s, party in (("site-a", a), ("site-b", b))]
        _wait_for(lambda: _registered(admin_kit) == ["site-a", "site-b"], 120, "site-a and site-b to register")
        timings["start server + 2 sites"] = time.time() - start
        before = {k: _digest(k) for k in (server_kit, kits["site-a"], kits["site-b"])}

        start = time.time()  # a third hospital joins the running consortium; nobody else is re-provisioned
        kits["site-c"] = _join(c, ca, fingerprint)
        _share_key(a, c)
        groups.append(_start(kits["site-c"], c.env))
        _wait_for(lambda: _registered(admin_kit) == ["site-a", "site-b", "site-c"], 120, "site-c to register")
        timings["site-c joins"] = time.time() - start
        assert {k: _digest(k) for k in before} == before

        start = time.time()
        spec = replace(load_job_spec("fedavg", REPO / "jobs"), rounds=2, min_clients=3)
        job = export_job(spec, tmp_path / "jobs")
        progress = []
        with session("admin@test.org", admin_kit) as sess:
            assert clients(sess) == ["site-a", "site-b", "site-c"]
            job_id = sess.submit_job(str(job))
            status = follow(sess, job_id, timeout=600, log=progress.append)
            assert status == "FINISHED:COMPLETED", (status, progress)
            out = download(sess, job_id, tmp_path / "results")
        timings["HE job, 2 rounds"] = time.time() - start
        assert any("[progress] round 2/2" in line for line in progress), progress  # the lead reads the server log
        history = json.loads((out / "metrics.json").read_text())
        three = {"site-a", "site-b", "site-c"}
        assert [set(r["sites"]) for r in history["rounds"]] == [three, three] and set(history["final"]) == three
        # the server's checkpoint is ciphertext; site-c, which got the key sealed, decrypts it
        model = next(out.rglob("global_model.pt"))
        assert is_encrypted(model)
        decrypt_model_file(model, kits["site-c"] / "startup" / "client_context.tenseal", tmp_path / "plain.pt")
    finally:
        for proc in reversed(groups):
            _stop(proc)
    assert not any(group_alive(proc.pid) for proc in groups)
    _wait_for(lambda: all(port_free(p) for p in ports), 30, f"ports {ports} to be free")
    # no hospital's private key and no secret context outside the hospitals' folders, zips included
    for site, kit in kits.items():
        key = (kit / "startup" / "client.key").read_bytes()
        assert key == (parties / site / "request" / f"{site}.key").read_bytes()
        assert _leaks(key.splitlines()[5], tmp_path, parties / site) == [], site
    # the secret context exists only in the hospitals' kits; every context the consortium holds is public
    holders = sorted(str(p.relative_to(parties)) for p in parties.rglob("*.tenseal") if p.read_bytes() == secret)
    assert holders == [str(k.relative_to(parties) / "startup" / "client_context.tenseal") for k in kits.values()]
    assert _leaks(secret, ca.folder, allowed=tmp_path / "nobody") == []
    for context in ca.folder.rglob("*.tenseal"):
        assert not ts.context_from(context.read_bytes()).has_secret_key(), context
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def _registered(admin_kit: Path) -> list[str]:
    from consortium.deploy.admin import clients, session

    with session("admin@test.org", admin_kit, timeout=10) as sess:
        return clients(sess)


class _Timings(dict):
    def __setitem__(self, key, value):
        print(f"[timing] {key}: {value:.1f} s", flush=True)
        super().__setitem__(key, value)
