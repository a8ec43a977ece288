"""Jobs declare purpose, sites decide (issue 18 parts 1-2) on a real local consortium (POC kits, server and three
hospital processes over mTLS): a hospital whose site config does not approve the job's purpose refuses it at
deployment in its own kit, with the reason at the admin console, in `submit` and `status` output and in the run
record; the job completes with the other two (min_clients 2). A hospital that approves exact jobs runs only
those; the server refuses at submission a job the charter refuses."""

from __future__ import annotations

import json

import pytest

from consortium import constants as C
from consortium import runrecord as R
from consortium.deploy.poc import read_state
from consortium.governance.charter import KIT_CHARTER_FILE, load_charter
from consortium.governance.gate import DECISIONS_FILE, DECISIONS_FOLDER
from tests.conftest import REPO, TINY_B
from tests.system.conftest import kit, three_site_cli

pytestmark = [pytest.mark.system, pytest.mark.slow]

# site-c's ethics board approved only the pre-flight's data-quality statistics, not lesion segmentation research
TINY_C = (
    TINY_B.replace("org: site_b", "org: site_c").replace("Beta Clinic", "Gamma Hospital")
    + "approved_purposes: [data quality assessment]\n"
)
REFUSAL = "site-c refuses job fedavg: site-c has not approved the purpose 'lesion segmentation research'"


@pytest.fixture
def cli3(tmp_path):
    yield from three_site_cli(tmp_path, TINY_C)


def test_a_site_refuses_a_purpose_it_did_not_approve_and_the_job_runs_on_without_it(cli3):
    cli3("poc", "up")
    charter = load_charter(REPO / "provisioning" / "consortium.yaml")
    for name in ("localhost", "site-a", "site-b", "site-c", "admin@test.org"):  # every kit carries the charter
        carried = json.loads((kit(cli3, name) / "local" / C.KIT_SITE_CONFIG_FOLDER / KIT_CHARTER_FILE).read_text())
        assert carried["sha256"] == charter.sha256
    for name in ("site-a", "site-c"):  # under the kit's signature (POC rewrites the server kit's resources.json)
        assert cli3("kit", "verify", str(kit(cli3, name))).returncode == 0
    resources = json.loads((kit(cli3, "site-c") / "local" / "resources.json").read_text())
    gate = {"id": "app_deployer", "path": "consortium.governance.gate.CharterGate", "args": {}}
    assert gate in resources["components"]  # the hospital's own veto, in its own signed kit

    sub = cli3("submit", "fedavg", "--rounds", "1")
    out = sub.stdout
    assert f"site-c refused the job at deployment: {REFUSAL}" in out, out[-3000:]
    assert "[progress] round 1/1: 2 of 2 sites contributed" in out and "FINISHED:COMPLETED" in out, out[-3000:]
    job_id = out.split("submitted job 'fedavg' as ")[1].split()[0]

    status = cli3("status").stdout
    assert f"job {job_id}: site-c refused the job at deployment: {REFUSAL}" in status, status

    # FLARE's own record of the deployment, as the admin console shows it (list_jobs -d)
    from consortium.deploy.admin import session

    state = read_state(cli3.paths)
    with session(state["admin"], kit(cli3, state["admin"])) as sess:
        detail = sess.get_job_meta(job_id)["job_deploy_detail"]
    assert "site-a: OK" in detail and "site-b: OK" in detail
    assert any(line.startswith("site-c: NVFLARE_ERROR: " + REFUSAL) for line in detail), detail
    assert not (kit(cli3, "site-c") / job_id).exists()  # nothing of the job at the refusing site: no data read
    decisions = (kit(cli3, "site-c") / DECISIONS_FOLDER / DECISIONS_FILE).read_text().splitlines()
    assert json.loads(decisions[-1])["job"] == job_id and not json.loads(decisions[-1])["approved"]

    record = json.loads((cli3.tmp / "runs" / "fedavg" / C.METRICS_FILE).read_text())
    assert set(record[R.FINAL]) == {"site-a", "site-b"}
    governance = record[R.META][R.Meta.GOVERNANCE]
    assert governance["purpose"] == "lesion segmentation research"
    assert governance["agreement"] == {"id": charter.agreement.id, "version": charter.agreement.version}
    assert governance["charter_sha256"] == charter.sha256 and len(governance["job_sha256"]) == 64
    assert {a["site"]: a["by"] for a in governance["approvals"]} == {"site-a": "purpose", "site-b": "purpose"}
    assert [r["site"] for r in governance["refusals"]] == ["site-c"] and REFUSAL in governance["refusals"][0]["reason"]
    report = (cli3.tmp / "runs" / "fedavg" / "report" / "report.md").read_text()
    assert "site-c, reason: " + REFUSAL in report and "| purpose | lesion segmentation research |" in report

    # the pre-flight's purpose site-c did approve: all three take part
    pre = cli3("submit", "preflight")
    assert "refused the job" not in pre.stdout and "FINISHED:COMPLETED" in pre.stdout, pre.stdout[-3000:]

    # a job the charter itself refuses is refused by the server at submission, before any site is asked
    folder = cli3.tmp / "jobs_out"
    cli3("job", "export", "fedavg", "--out", str(folder))
    meta = json.loads((folder / "fedavg" / "meta.json").read_text())
    meta["custom_props"]["purpose"] = "re-identification of patients"
    (folder / "fedavg" / "meta.json").write_text(json.dumps(meta))
    with session(state["admin"], kit(cli3, state["admin"])) as sess:
        with pytest.raises(Exception, match="charter refuses job fedavg: the job's purpose: 're-identification"):
            sess.submit_job(str(folder / "fedavg"))


def test_too_few_approving_sites_end_the_job_at_deployment_with_every_reason(cli3):
    """With site-b approving exact jobs only (another job's hash), fedavg has one approving site, fewer than its
    min_clients 2: FLARE ends it at deployment, and the admin sees each site's reason."""
    configs = cli3.tmp / "site_configs"
    (configs / "site-b.yaml").write_text(TINY_B + "approved_jobs: [" + "ab" * 32 + "]\n")
    cli3("poc", "up")
    sub = cli3("submit", "fedavg", "--rounds", "1", check=False)
    out = sub.stdout
    assert sub.returncode == 1 and "FINISHED:FAILED_TO_RUN" in out, out[-3000:]
    assert f"site-c refused the job at deployment: {REFUSAL}" in out
    assert "site-b refused the job at deployment: site-b refuses job fedavg: job " in out
    assert "is not one of site-b's approved jobs (its site config site-b.yaml: approved_jobs" in out
    assert "deploy: num_ok_sites 1 < required_min_sites 2" in out

    # approving the exact job (its hash, as `consortium job hash` prints it) lets it run at site-b
    sha = cli3("job", "hash", "fedavg", "--rounds", "1").stdout.split()[0]
    (configs / "site-b.yaml").write_text(TINY_B + f"approved_jobs: [{sha}]\n")
    cli3("poc", "up")
    ok = cli3("submit", "fedavg", "--rounds", "1")
    assert "2 of 2 sites contributed" in ok.stdout and "site-b refused" not in ok.stdout
    governance = json.loads((cli3.tmp / "runs" / "fedavg" / C.METRICS_FILE).read_text())[R.META][R.Meta.GOVERNANCE]
    assert governance["job_sha256"] == sha
    approvals = {a["site"]: a["by"] for a in governance["approvals"]}
    assert approvals == {"site-a": "purpose", "site-b": "purpose and job hash"}
