"""Roles on a real local consortium: POC kits provisioned for four people, the real server and hospital processes,
each person acting through the FLARE admin API with their own admin kit (`consortium --as PERSON ...`, and the
admin API directly). Nothing of FLARE's authorization is mocked: the server and the sites decide by the
authorization.json our provisioning wrote into their kits."""

import json
import time
from pathlib import Path

import pytest

from consortium.deploy.admin import session
from consortium.deploy.poc import PocPaths, read_state
from tests.system.conftest import cli_runner

pytestmark = [pytest.mark.system, pytest.mark.slow]

PEOPLE = """
  - {name: admin@test.org, org: test_ops, role: project_admin}
  - {name: lead@alpha.org, org: site_a, role: lead}
  - {name: lead@beta.org, org: site_b, role: lead}
  - {name: member@alpha.org, org: site_a, role: member}
"""


def wait_for(sess, job_id: str, done, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while True:
        meta = sess.get_job_meta(job_id)
        if done(meta):
            return meta
        assert time.time() < deadline, f"job {job_id} still {meta.get('status')}: {meta.get('job_deploy_detail')}"
        time.sleep(1)


def test_a_member_cannot_submit_and_a_lead_steers_only_their_own_job(tiny_sites, tmp_path):
    cli = cli_runner(next(iter(tiny_sites.values())).source.parent, tmp_path, admins=PEOPLE)
    paths = PocPaths(tmp_path / "ws" / "poc-consortium")
    cli("poc", "up")
    try:
        kit = paths.prod(read_state(paths)["project"])
        server_policy = json.loads((kit / "localhost" / "local" / "authorization.json").read_text())["permissions"]
        assert server_policy["member"]["submit_job"] == "none" and server_policy["lead"]["manage_job"] == "n:submitter"
        site_policy = json.loads((kit / "site-a" / "local" / "authorization.json").read_text())["permissions"]
        assert site_policy["lead"]["submit_job"] == "any" and site_policy["lead"]["byoc"] == "none"

        # a member's submit is refused by the server; the message names the person, role and right
        refused = cli("--as", "member@alpha.org", "submit", "fedavg", "--rounds", "1", "--no-wait", check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "member@alpha.org (role member, org site_a) may not submit_job (right 'submit_job')" in refused.stderr
        assert "FLARE said: user not authorized for the action 'submit_job" in refused.stderr
        looks = cli("--as", "member@alpha.org", "status")  # a member still sees the consortium
        assert "site-a, site-b" in looks.stdout
        unknown = cli("--as", "nobody@alpha.org", "status", check=False)
        assert unknown.returncode == 2 and "its admins: admin@test.org, lead@alpha.org" in unknown.stderr

        # hospital-a's lead submits: the server accepts the job and both hospitals run it (their deploy check)
        sub = cli("--as", "lead@alpha.org", "submit", "fedavg", "--rounds", "200", "--no-wait")
        job_id = sub.stdout.split("submitted job 'fedavg' as ")[1].split()[0]
        with session("lead@alpha.org", kit / "lead@alpha.org") as sess:
            meta = wait_for(
                sess, job_id, lambda m: m.get("status") == "RUNNING" and len(m.get("job_deploy_detail") or []) >= 3
            )
        assert meta["submitter_name"] == "lead@alpha.org" and meta["submitter_role"] == "lead"
        assert sorted(meta["job_deploy_detail"]) == ["server: OK", "site-a: OK", "site-b: OK"]

        # hospital-b's lead may neither abort nor download it: through our CLI ...
        abort = cli("--as", "lead@beta.org", "abort", job_id, check=False)
        assert abort.returncode == 2, abort.stdout + abort.stderr
        assert "lead@beta.org (role lead, org site_b) may not abort_job (right 'manage_job')" in abort.stderr
        assert "only for jobs they submitted themselves" in abort.stderr
        # ... and through FLARE's admin API with their own kit (FLARE's own refusal)
        from nvflare.fuel.flare_api.api_spec import AuthorizationError
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        raw = new_secure_session("lead@beta.org", str(kit / "lead@beta.org"), timeout=30)
        try:
            with pytest.raises(AuthorizationError, match="not authorized for the action 'abort_job"):
                raw.abort_job(job_id)
            with pytest.raises(AuthorizationError, match="not authorized for the action 'download_job"):
                raw.download_job_result(job_id)
            assert raw.get_job_meta(job_id)["status"] == "RUNNING"  # refused, not aborted
        finally:
            raw.close()

        # the project admin aborts it
        assert "asked the server to abort job" in cli("abort", job_id).stdout
        with session("admin@test.org", kit / "admin@test.org") as sess:
            assert wait_for(sess, job_id, lambda m: m.get("status", "").startswith("FINISHED"))["status"] == (
                "FINISHED:ABORTED"
            )

        # the finished job: hospital-b's lead still may not download it, its submitter and the project admin may
        download = cli("--as", "lead@beta.org", "download", job_id, check=False)
        assert download.returncode == 2, download.stdout + download.stderr
        assert "lead@beta.org (role lead, org site_b) may not download_job (right 'download_job')" in download.stderr
        for person in ("admin@test.org", "lead@alpha.org"):
            with session(person, kit / person) as sess:
                folder = Path(sess.download_job_result(job_id))
            assert folder.is_dir() and (folder / "meta.json").is_file(), (person, sorted(folder.iterdir()))
    finally:
        cli("poc", "down", check=False)
    assert read_state(paths) is None
