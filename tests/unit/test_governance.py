"""Governance (issue 18 parts 1-2): the charter, jobs' declared purpose and agreement, each hospital's approvals and
its kit's decision; every bad input is refused with a message naming the file and the setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from consortium.config import ConfigError, load_site_configs
from consortium.governance import props as P
from consortium.governance.charter import (
    KIT_CHARTER_FILE,
    check_site_approvals,
    load_charter,
    parse_charter,
    read_kit_charter,
    write_kit_charter,
)
from consortium.governance.gate import BY_JOB, BY_PURPOSE, CharterGate, decide, read_decision
from consortium.governance.jobhash import (
    app_files_from_dir,
    app_files_from_zip,
    exported_job_sha256,
    job_sha256,
    site_app,
)
from consortium.jobs import available_jobs, export_job, load_job_spec
from tests.conftest import REPO, TINY_A, write_site_configs

CONSORTIUM = REPO / "provisioning" / "consortium.yaml"
GOOD = CONSORTIUM.read_text()
SEG = "lesion segmentation research"


@pytest.fixture(scope="module")
def charter():
    return load_charter(CONSORTIUM)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, charter):
    """fedavg exported as `consortium submit` exports it (meta with purpose, agreement, charter and job hash)."""
    out = tmp_path_factory.mktemp("export")
    return export_job(load_job_spec("fedavg", REPO / "jobs", charter=charter), out, charter=charter)


def zipped_app(job_folder: Path) -> bytes:
    """The site's app as FLARE's job store sends it to a site (nvflare zip_directory_to_bytes)."""
    from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes

    return zip_directory_to_bytes(str(site_app(job_folder)), "")


def site_cfg(tmp_path, body: str = ""):
    folder = write_site_configs(tmp_path / "configs", {"site-a": TINY_A + body})
    return load_site_configs(folder)["site-a"]


# -- the charter in consortium.yaml ---------------------------------------------------------------------------
def test_the_repository_charter_loads_and_hashes_its_content_not_its_layout(charter, tmp_path):
    assert SEG in charter.purposes and "re-identification of patients" in charter.forbidden_uses
    assert charter.agreement.id and charter.agreement.version == "1.0"
    raw = yaml.safe_load(GOOD)["charter"]
    shuffled = {**raw, "purposes": list(reversed(raw["purposes"]))}
    assert parse_charter(shuffled, tmp_path / "x.yaml").sha256 == charter.sha256  # order and comments aside
    other = {**raw, "agreement": {**raw["agreement"], "version": "2.0"}}
    assert parse_charter(other, tmp_path / "x.yaml").sha256 != charter.sha256
    from consortium.deploy.provision import load_consortium

    assert load_consortium(CONSORTIUM).charter == charter


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda c: None, "'charter': missing"),
        (lambda c: {**c, "purposes": []}, "charter.purposes"),
        (lambda c: {**c, "purposes": [SEG, "Lesion  Segmentation research"]}, "charter.purposes[1]': 'Lesion"),
        (lambda c: {**c, "purposes": [SEG, "re-identification of patients"]}, "charter.purposes[1]"),
        (lambda c: {**c, "agreement": {"version": "1.0"}}, "charter.agreement.id"),
        (lambda c: {**c, "agreement": {"id": "DSA", "version": None}}, "charter.agreement.version"),
        (lambda c: {**c, "agreement": "DSA-1"}, "charter.agreement"),
        (lambda c: {**c, "agreement": {**c["agreement"], "date": "2026"}}, "charter.agreement.date"),
        (lambda c: {**c, "forbiden_uses": []}, "charter.forbiden_uses': unknown key"),
    ],
)
def test_a_bad_charter_names_the_file_and_field(tmp_path, edit, field):
    raw = yaml.safe_load(GOOD)
    charter = edit(raw["charter"])
    if charter is None:
        raw.pop("charter")
    else:
        raw["charter"] = charter
    path = tmp_path / "consortium.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_charter(path)
    assert str(path) in str(err.value) and field in str(err.value), str(err.value)


# -- jobs declare purpose and agreement --------------------------------------------------------------------------
def test_every_job_declares_a_purpose_and_agreement_of_the_charter(charter):
    for name in available_jobs(REPO / "jobs"):
        spec = load_job_spec(name, REPO / "jobs", charter=charter)  # variants inherit them from their base
        assert spec.purpose in charter.purposes and spec.agreement == charter.agreement.version, name


def write_job(tmp_path, body: str) -> Path:
    (tmp_path / "j").mkdir(parents=True, exist_ok=True)
    (tmp_path / "j" / "job.yaml").write_text("task: seg2d\n" + body)
    return tmp_path


@pytest.mark.parametrize(
    "body, expected",
    [
        ('agreement: "1.0"\n', "field 'purpose': missing"),
        (f"purpose: {SEG}\n", "field 'agreement': missing"),
        ('purpose: lesion segmentaton research\nagreement: "1.0"\n',
         "'lesion segmentaton research' is not a purpose of the charter (" + str(CONSORTIUM) + ": charter.purposes)"
         f"; did you mean '{SEG}'?"),
        ('purpose: Re-identification of patients\nagreement: "1.0"\n', "is a use the charter forbids"),
        (f'purpose: {SEG}\nagreement: "0.9"\n', "version '0.9' is not the version of the charter's data-sharing"),
    ],
)  # fmt: skip
def test_a_job_without_purpose_with_a_typo_or_another_agreement_is_refused_at_load(tmp_path, charter, body, expected):
    jobs = write_job(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_job_spec("j", jobs, charter=charter)
    assert str(jobs / "j" / "job.yaml") in str(err.value) and expected in str(err.value), str(err.value)


def test_a_job_without_purpose_is_refused_even_without_the_charter(tmp_path):
    with pytest.raises(ConfigError, match=r"j/job.yaml: field 'purpose': missing"):
        load_job_spec("j", write_job(tmp_path, 'agreement: "1.0"\n'))


def test_a_yaml_number_agreement_is_the_version_as_written(tmp_path, charter):
    spec = load_job_spec("j", write_job(tmp_path, f"purpose: {SEG}\nagreement: 1.0\n"), charter=charter)
    assert spec.agreement == "1.0"


def test_the_cli_checks_jobs_against_the_consortium_charter(tmp_path):
    jobs = write_job(tmp_path / "jobs", 'purpose: lesion segmentaton research\nagreement: "1.0"\n')
    proc = subprocess.run([sys.executable, "-m", "consortium.cli", "--jobs", str(jobs), "--consortium", str(CONSORTIUM),
                           "job", "hash", "j"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and f"did you mean '{SEG}'?" in proc.stderr and "j/job.yaml" in proc.stderr


# -- hospitals approve -------------------------------------------------------------------------------------------
def test_every_site_config_approves_purposes_of_the_charter(charter):
    for folder in ("site_configs", "site_configs/heart"):
        sites = load_site_configs(REPO / folder)
        check_site_approvals(charter, sites)
        assert all(cfg.approved_purposes for cfg in sites.values())
    assert all(SEG in cfg.approved_purposes for cfg in load_site_configs(REPO / "site_configs").values())  # make demo


@pytest.mark.parametrize(
    "body, expected",
    [
        ("approved_purposes: [re-identification of patients]\n",
         "field 'approved_purposes[0]': 're-identification of patients' is a use the charter forbids"),
        ("approved_purposes: [lesion segmentation reserch]\n", f"did you mean '{SEG}'?"),
    ],
)  # fmt: skip
def test_a_site_approving_a_forbidden_or_unknown_purpose_is_refused_when_kits_are_made(tmp_path, charter, body,
                                                                                        expected):  # fmt: skip
    cfg = site_cfg(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        check_site_approvals(charter, {cfg.name: cfg})
    assert str(cfg.source) in str(err.value) and expected in str(err.value), str(err.value)
    from consortium.deploy.provision import load_consortium, project_dict

    sites = load_site_configs(REPO / "site_configs")
    sites["hospital-a"] = replace(sites["hospital-a"], approved_purposes=cfg.approved_purposes)
    with pytest.raises(ConfigError, match="hospital-a.yaml: field 'approved_purposes"):  # `provision`, `poc up`
        project_dict(load_consortium(CONSORTIUM), sites, site_configs=REPO / "site_configs", storage_root=tmp_path)


@pytest.mark.parametrize(
    "body, field",
    [
        ("approved_purposes: lesion segmentation research\n", "approved_purposes"),
        ("approved_purposes: [lesion segmentation research, lesion segmentation research]\n", "listed twice"),
        ("approved_jobs: [abc123]\n", "'abc123' is not a job hash"),
        ("approved_job: []\n", "'approved_job': unknown key"),
    ],
)
def test_bad_approvals_in_a_site_config_name_the_file_and_field(tmp_path, body, field):
    with pytest.raises(ConfigError) as err:
        site_cfg(tmp_path, body)
    assert "site-a.yaml" in str(err.value) and field in str(err.value), str(err.value)


def test_approved_jobs_are_kept_in_the_kit_copy_of_a_site_config(tmp_path):
    from consortium.config import parse_site_config, site_config_dict

    cfg = site_cfg(tmp_path, f"approved_purposes: [{SEG}]\napproved_jobs: [{'AB' * 32}]\n")
    assert cfg.approved_jobs == ("ab" * 32,)
    again = parse_site_config(site_config_dict(cfg), cfg.source)
    assert (again.approved_purposes, again.approved_jobs) == ((SEG,), ("ab" * 32,))


# -- the job hash ------------------------------------------------------------------------------------------------
def test_the_job_hash_is_what_the_site_receives_and_what_job_hash_prints(exported, charter):
    props = P.declared(json.loads((exported / "meta.json").read_text()))
    assert props[P.PURPOSE] == SEG and props[P.AGREEMENT] == {"id": charter.agreement.id, "version": "1.0"}
    assert props[P.CHARTER_SHA] == charter.sha256
    from_zip = job_sha256(app_files_from_zip(zipped_app(exported)), purpose=SEG, agreement="1.0")
    assert from_zip == props[P.JOB_SHA] == exported_job_sha256(exported, purpose=SEG, agreement="1.0")
    cli = subprocess.run([sys.executable, "-m", "consortium.cli", "--consortium", str(CONSORTIUM), "--jobs",
                          str(REPO / "jobs"), "job", "hash", "fedavg"], capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0 and cli.stdout.split()[0] == props[P.JOB_SHA], cli.stderr
    files = app_files_from_dir(site_app(exported))
    assert job_sha256(files, purpose="data quality assessment", agreement="1.0") != from_zip  # purpose counts
    assert job_sha256(files, purpose=SEG, agreement="1.0", package="consortium 9.9") != from_zip  # the package too


def test_the_job_hash_does_not_depend_on_the_process_and_ignores_resume(tmp_path, charter):
    """FLARE writes filter task lists in set order, which changes with PYTHONHASHSEED; a resumed job is the same job."""
    code = ("import sys; from consortium.jobs import export_job, load_job_spec; from consortium.governance.charter "
            "import load_charter; c = load_charter(sys.argv[1]); "
            "[export_job(load_job_spec(j, sys.argv[2], charter=c), sys.argv[3], charter=c) for j in sys.argv[4:]]")
    jobs = ["fedavg_dp", "heart_fedavg"]
    hashes = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", code, str(CONSORTIUM), str(REPO / "jobs"), str(out), *jobs], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})  # fmt: skip
        hashes.append([P.declared(json.loads((out / j / "meta.json").read_text()))[P.JOB_SHA] for j in jobs])
    assert hashes[0] == hashes[1] and len(set(hashes[0])) == 2
    spec = load_job_spec("fedavg", REPO / "jobs", charter=charter)
    plain = export_job(spec, tmp_path / "a", charter=charter)
    resumed = export_job(spec, tmp_path / "b", charter=charter, resume_from="8a1c-previous-job")
    assert "8a1c-previous-job" in (site_app(resumed) / "config" / "config_fed_server.json").read_text()
    sha = lambda f: P.declared(json.loads((f / "meta.json").read_text()))[P.JOB_SHA]  # noqa: E731
    assert sha(plain) == sha(resumed)
    shorter = export_job(spec.with_overrides("x", rounds=1), tmp_path / "c", charter=charter)
    assert sha(shorter) != sha(plain)


# -- the site decides --------------------------------------------------------------------------------------------
def test_a_site_decides_by_purpose_and_optionally_by_exact_job(tmp_path, exported, charter):
    props = P.declared(json.loads((exported / "meta.json").read_text()))
    files = lambda: app_files_from_zip(zipped_app(exported))  # noqa: E731
    cfg = site_cfg(tmp_path)  # the tiny hospital approves lesion segmentation research (tests/conftest.py)

    ok = decide("site-a", cfg, charter, props, files)
    assert ok.approved and ok.by == BY_PURPOSE and ok.job_sha256 == props[P.JOB_SHA]

    no = decide("site-a", replace(cfg, approved_purposes=("data quality assessment",)), charter, props, files)
    assert not no.approved
    assert no.reason == (f"site-a has not approved the purpose '{SEG}' (its site config site-a.yaml: "
                         "approved_purposes: 'data quality assessment')")  # fmt: skip

    exact = decide("site-a", replace(cfg, approved_jobs=(props[P.JOB_SHA],)), charter, props, files)
    assert exact.approved and exact.by == BY_JOB
    other = decide("site-a", replace(cfg, approved_jobs=("ab" * 32,)), charter, props, files)
    assert not other.approved and f"job {props[P.JOB_SHA]} is not one of site-a's approved jobs" in other.reason

    for bad, expected in [
        ({k: v for k, v in props.items() if k != P.PURPOSE}, "the job declares no purpose"),
        ({**props, P.PURPOSE: "lesion segmentation"}, f"did you mean '{SEG}'?"),
        ({**props, P.PURPOSE: "commercial resale of data or models"}, "is a use the charter forbids"),
        ({**props, P.AGREEMENT: {"id": charter.agreement.id, "version": "2"}}, "version '2' is not the version"),
        ({**props, P.CHARTER_SHA: "0" * 64}, "the job was built under charter 000000000000"),
    ]:
        decision = decide("site-a", cfg, charter, bad, files)
        assert not decision.approved and expected in decision.reason, (expected, decision.reason)
    # a job whose meta claims an approved hash for another app: the site hashes what it received
    forged = decide("site-a", replace(cfg, approved_jobs=("ab" * 32,)), charter, {**props, P.JOB_SHA: "ab" * 32}, files)
    assert not forged.approved and "nor is it the job its meta declares (abababababab)" in forged.reason


def kit_workspace(root: Path, cfg, charter):
    """A hospital kit's workspace as provisioning lays it out: local/consortium/<site>.yaml and charter.json."""
    from nvflare.apis.workspace import Workspace

    from consortium.config import site_config_dict

    folder = root / "local" / "consortium"
    folder.mkdir(parents=True)
    (folder / f"{cfg.name}.yaml").write_text(yaml.safe_dump(site_config_dict(cfg)))
    write_kit_charter(folder, charter)
    (root / "startup").mkdir()
    return Workspace(root_dir=str(root), site_name=cfg.name)


def test_the_kit_app_deployer_refuses_before_flare_deploys_and_deploys_what_it_approves(tmp_path, exported, charter):
    meta = json.loads((exported / "meta.json").read_text())
    cfg = site_cfg(tmp_path)
    workspace = kit_workspace(tmp_path / "kit-a", cfg, charter)
    gate = CharterGate()
    assert not gate.deploy(workspace, "job-1", meta, "app", zipped_app(exported), None)  # FLARE's deployer: ok
    assert (Path(workspace.get_app_dir("job-1")) / "config" / "config_fed_client.json").is_file()
    assert read_decision(workspace.get_root_dir(), "job-1")["by"] == BY_PURPOSE

    no = kit_workspace(tmp_path / "kit-b", replace(cfg, approved_purposes=("data quality assessment",)), charter)
    text = gate.deploy(no, "job-2", meta, "app", zipped_app(exported), None)
    assert text.startswith(f"site-a refuses job fedavg: site-a has not approved the purpose '{SEG}'")
    assert not Path(no.get_run_dir("job-2")).exists()  # nothing unpacked: no job folder, no job process
    log = (tmp_path / "kit-b" / "consortium_governance" / "decisions.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["approved"] is False and json.loads(log[-1])["job"] == "job-2"


def test_a_charter_file_edited_by_hand_in_a_kit_is_refused_naming_the_file(tmp_path, exported, charter):
    meta = json.loads((exported / "meta.json").read_text())
    workspace = kit_workspace(tmp_path / "kit", site_cfg(tmp_path), charter)
    path = tmp_path / "kit" / "local" / "consortium" / KIT_CHARTER_FILE
    body = json.loads(path.read_text())
    body["charter"]["forbidden_uses"] = []  # someone loosens the charter at one site
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError, match=f"{path}: field 'sha256'.*edited after provisioning"):
        read_kit_charter(path.parent)
    text = CharterGate().deploy(workspace, "job-3", meta, "app", zipped_app(exported), None)
    assert "its charter gate could not decide" in text and str(path) in text


def test_a_decisions_log_edited_by_hand_is_named_by_line_and_stops_further_approvals(tmp_path, exported, charter):
    """The site's decisions are hash-chained like the audit trail: `consortium audit verify` names an edited record,
    and a log whose last line is not a record refuses appends, so the gate refuses rather than run unrecorded."""
    meta = json.loads((exported / "meta.json").read_text())
    workspace = kit_workspace(tmp_path / "kit", site_cfg(tmp_path), charter)
    for job in ("job-1", "job-2"):
        assert not CharterGate().deploy(workspace, job, meta, "app", zipped_app(exported), None)
    log = tmp_path / "kit" / "consortium_governance" / "decisions.jsonl"
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    first["approved"] = False  # rewritten afterwards: "site-a refused job-1"
    log.write_text("\n".join([json.dumps(first), lines[1]]) + "\n")
    verify = subprocess.run([sys.executable, "-m", "consortium.cli", "audit", "verify", str(log)], capture_output=True,
                            text=True)  # fmt: skip
    assert verify.returncode == 1 and f"{log}: BROKEN at line 1 (seq 0): edited" in verify.stdout, verify.stdout
    with open(log, "a") as f:
        f.write('{"seq": 2, "cut')
    text = CharterGate().deploy(workspace, "job-3", meta, "app", zipped_app(exported), None)
    assert text.startswith("site-a refuses job fedavg: its decision could not be recorded")


# -- kits carry the charter and the gate ------------------------------------------------------------------------
def test_kits_carry_the_charter_the_gate_and_the_server_check(tmp_path, charter):
    from consortium.deploy.kit_builder import write_server_local, write_site_local

    cfg = site_cfg(tmp_path)
    for kind in ("site", "server"):
        local = tmp_path / kind / "local"
        local.mkdir(parents=True)
        (local / "resources.json.default").write_text(json.dumps({"format_version": 2, "components": [],
                                                                   "snapshot_persistor": {"args": {"storage": {
                                                                       "args": {}}}}}))  # fmt: skip
    write_site_local(str(tmp_path / "site" / "local"), cfg, charter=charter)
    write_server_local(str(tmp_path / "server" / "local"), storage_root=str(tmp_path), heartbeat_timeout=60,
                       charter=charter)  # fmt: skip
    for name in ("resources.json", "resources.json.default"):
        ids = {c["id"]: c["path"] for c in json.loads((tmp_path / "site" / "local" / name).read_text())["components"]}
        assert ids["app_deployer"] == "consortium.governance.gate.CharterGate"
    server = json.loads((tmp_path / "server" / "local" / "resources.json").read_text())["components"]
    assert "consortium.governance.gate.SubmitCheck" in {c["path"] for c in server}
    for kind in ("site", "server"):
        assert read_kit_charter(tmp_path / kind / "local" / "consortium") == charter


# -- the run record and the report -------------------------------------------------------------------------------
def test_the_deployment_record_gives_approvals_and_refusals_for_the_report(tmp_path, charter):
    from consortium import runrecord as R
    from consortium.governance.record import approved_by, governance_meta
    from consortium.report.governance import governance_sections
    from consortium.report.load import load_run

    detail = ["server: OK", "site-a: OK", "site-b: OK",
              f"site-c: NVFLARE_ERROR: site-c refuses job fedavg: site-c has not approved the purpose '{SEG}'",
              "num_ok_sites 2 < required_min_sites 3"]  # fmt: skip
    props = P.job_props(SEG, "1.0", charter) | {P.JOB_SHA: "f" * 64}
    meta = governance_meta(props, detail=detail)
    approved_by(meta, "site-b", BY_JOB)
    assert meta["approvals"] == [{"site": "site-a", "by": "deployment"}, {"site": "site-b", "by": BY_JOB}]
    assert meta["refusals"] == [{"site": "site-c", "reason": detail[3].removeprefix("site-c: NVFLARE_ERROR: ")}]
    record = R.new(task="seg2d", num_rounds=1, meta={R.Meta.JOB: "fedavg", R.Meta.GOVERNANCE: meta})
    record[R.ROUNDS] = [{R.Round.ROUND: 0, R.Round.SITES: {"site-a": {}}}]
    R.write(tmp_path, record)
    governance = next(md for title, md, _ in governance_sections(load_run(tmp_path)) if title == "Governance")
    assert f"| purpose | {SEG} |" in governance and f"| agreement | {charter.agreement} |" in governance
    assert f"| charter sha256 | {charter.sha256} |" in governance and "| job sha256 | " + "f" * 64 in governance
    assert "site: site-c, reason: site-c refuses job fedavg" in governance
    assert "site: site-b, by: purpose and job hash" in governance


def test_the_simulator_applies_the_sites_decisions(tmp_path, charter):
    """`consortium simulate` deploys nothing, so the site configs decide there as their kits would."""
    from argparse import Namespace

    from consortium.cli.common import gate

    folder = write_site_configs(tmp_path / "configs", {"site-a": TINY_A,
                                                      "site-b": TINY_A.replace("site_a", "site_b")
                                                      + "approved_purposes: [data quality assessment]\n"})  # fmt: skip
    chosen = load_site_configs(folder)
    args = Namespace(consortium=str(CONSORTIUM))
    kept, decisions = gate(args, chosen, P.job_props(SEG, "1.0", charter), min_clients=1)
    assert list(kept) == ["site-a"] and [d.approved for d in decisions] == [True, False]
    with pytest.raises(ConfigError, match="only 1 of 2 site\\(s\\) approve this job \\(site-a\\), fewer than its "
                                          "min_clients 2"):  # fmt: skip
        gate(args, chosen, P.job_props(SEG, "1.0", charter), min_clients=2)
