"""Real FLARE server and hospital processes over mTLS on loopback, driven through the admin API and console."""

import json
import subprocess

import pytest

from consortium.deploy.poc import PocPaths, group_alive, port_free, read_state

pytestmark = pytest.mark.system


def test_poc_consortium_runs_a_job_through_the_admin_api(cli):
    paths = PocPaths(cli.tmp / "ws" / "poc-consortium")
    cli("poc", "up")
    stale = read_state(paths)
    up = cli("poc", "up")  # as after a crash of the tool: the consortium it started before is stopped first
    try:
        assert "started earlier from this workspace: stopping it first" in up.stdout
        assert not group_alive(stale["pgid"])
        assert "registered sites: site-a, site-b" in up.stdout
        state = read_state(paths)
        assert group_alive(state["pgid"]) and not any(port_free(p) for p in state["ports"])
        kit = paths.prod(state["project"])
        # each hospital's kit carries its own policies, written before signing
        auth = json.loads((kit / "site-a/local/authorization.json").read_text())
        assert auth["permissions"]["project_admin"]["byoc"] == "none"
        assert (kit / "site-a/local/consortium/site-a.yaml").exists()

        sub = cli("submit", "fedavg", "--rounds", "2")
        assert "[progress] round 2/2: 2 of 2 sites contributed" in sub.stdout
        assert "FINISHED:COMPLETED" in sub.stdout
        out = cli.tmp / "runs" / "fedavg"
        history = json.loads((out / "metrics.json").read_text())
        assert set(history["final"]) == {"site-a", "site-b"} and len(history["rounds"]) == 2
        assert (out / "global_model.pt").stat().st_size > 100_000
        # cross-site evaluation between real processes, HE on: ciphertext models forwarded, decrypted at sites
        matrix = history["cross_site"]
        assert matrix["models"] == ["global", "site-a", "site-b"] and matrix["sites"] == ["site-a", "site-b"]
        assert all(0 <= matrix["scores"][m][s] <= 1 for m in matrix["models"] for s in matrix["sites"])
        assert "[progress] cross-site: global model" in sub.stdout
        assert (out / "report" / "report.html").is_file()  # every submitted job ends with its report

        status = cli("status")
        assert "site-a, site-b" in status.stdout and "FINISHED:COMPLETED" in status.stdout
        job_id = sub.stdout.split("submitted job 'fedavg' as ")[1].split()[0]
        logs = cli("logs", job_id, "--site", "site-a", "--tail", "400")
        assert "site-a round 1: Dice of received model" in logs.stdout  # a site's own log, via the server

        # the real admin console of the admin kit, non-interactively
        console = kit / "admin@test.org" / "startup" / "fl_admin.sh"
        session = subprocess.run(
            ["bash", str(console)],
            input=f"list_jobs\ndownload_job {job_id}\nbye\n",
            env=cli.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job_id[:8] in session.stdout and "FINISHED:COMPLETED" in session.stdout, session.stdout[-2000:]
        assert (kit / "admin@test.org" / "transfer" / job_id).is_dir()

        # a job that ships its own code is refused: no hospital's authorization.json runs it (byoc none), so the
        # server's does not either (deploy/roles.py)
        cli("job", "export", "fedavg", "--out", str(cli.tmp / "byoc"))
        custom = cli.tmp / "byoc" / "fedavg" / "app" / "custom"
        custom.mkdir(parents=True)
        (custom / "extra.py").write_text("print('code a site has not reviewed')\n")
        from consortium.deploy.admin import session

        with session(state["admin"], kit / state["admin"]) as sess:
            byoc_job = sess.submit_job(str(custom.parent.parent))
            meta = sess.wait_for_job(byoc_job, timeout=120, poll_interval=2)
        assert meta["status"] == "FINISHED:FAILED_TO_RUN", meta
        assert "server: BYOC not permitted" in meta["job_deploy_detail"], meta["job_deploy_detail"]

        # a site that cannot run the job: its own error text reaches the admin
        data_b = cli.tmp / "site_configs" / "data" / "site-b"
        data_b.rename(data_b.with_name("moved"))
        failed = cli("submit", "fedavg", "--rounds", "1", check=False)
        assert failed.returncode == 1 and "site-b" in failed.stdout and "does not exist" in failed.stdout
        status = cli("status")
        assert "[site-error] site-b" in status.stdout and "consortium data synth" in status.stdout
    finally:
        cli("poc", "down", check=False)
    assert read_state(paths) is None
    assert not group_alive(state["pgid"]), "poc down left processes behind"
    assert all(port_free(p) for p in state["ports"])


def test_submit_without_a_consortium_is_a_clear_error(cli):
    proc = cli("submit", "fedavg", check=False)
    assert proc.returncode == 2 and "not up: run `consortium poc up`" in proc.stderr
    proc = cli("submit", "nosuchjob", check=False)
    assert proc.returncode == 2 and "unknown job 'nosuchjob'" in proc.stderr


def test_tampered_kit_is_refused(cli):
    cli("provision")
    prod = next((cli.tmp / "ws" / "prod" / "test_consortium").glob("prod_*"))
    kit = prod / "site-a"
    assert "OK" in cli("kit", "verify", str(kit)).stdout
    fed_client = kit / "startup" / "fed_client.json"
    fed_client.write_text(fed_client.read_text().replace('"retry_timeout"', '"retry_timeout" ', 1) + " ")
    verify = cli("kit", "verify", str(kit), check=False)
    assert verify.returncode == 1 and "startup/fed_client.json: signature does not match" in verify.stdout
    # FLARE itself refuses to start the tampered kit (one attempt, no respawn loop)
    start = subprocess.run(
        ["bash", str(kit / "startup" / "sub_start.sh"), "--once"],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert start.returncode != 0 and "not secure content" in start.stdout + start.stderr
    assert "fed_client.json" in start.stdout + start.stderr


def test_provisioning_twice_reports_changes(cli, tiny_sites):
    first = cli("provision")
    assert "new project" in first.stdout
    assert "unchanged since last time" in cli("provision").stdout
    site_configs = next(iter(tiny_sites.values())).source.parent
    (site_configs / "site-c.yaml").write_text((site_configs / "site-b.yaml").read_text().replace("site_b", "site_c"))
    assert "added client site-c" in cli("provision").stdout
