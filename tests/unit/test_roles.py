"""The consortium's roles: admins validated at load, the authorization.json every kit gets, evaluated by FLARE's own
authorizer (nvflare.security.security.FLAuthorizer, as the server and sites load it), and a refusal's words."""

import json
from dataclasses import replace

import pytest
from nvflare.apis.fl_constant import AdminCommandNames
from nvflare.fuel.sec.authz import AuthzContext, Person
from nvflare.security.security import FLAuthorizer

from consortium.config import ROLES, ConfigError, load_site_configs
from consortium.deploy import roles as R
from consortium.deploy.provision import load_consortium, project_dict, run_provision, write_project
from tests.conftest import REPO

GOOD = (REPO / "provisioning" / "consortium.yaml").read_text()
SITES = load_site_configs(REPO / "site_configs")

PA = Person("admin@consortium.org", "consortium_ops", "project_admin")
LEAD_A = Person("lead@northfield.org", "northfield_general", "lead")  # hospital-a's org
LEAD_B = Person("lead@stmary.org", "st_mary_university", "lead")  # hospital-b's org
MEMBER_A = Person("member@northfield.org", "northfield_general", "member")
ORG_ADMIN_A = Person("it@northfield.org", "northfield_general", "org_admin")
ORG_ADMIN_B = Person("it@stmary.org", "st_mary_university", "org_admin")


def allowed(policy: dict, site_org: str, user: Person, command: str, submitter: Person | None = None) -> bool:
    ok, _ = FLAuthorizer(site_org, policy).authorize(AuthzContext(right=command, user=user, submitter=submitter))
    return ok


def test_the_demo_consortium_has_a_project_admin_two_leads_and_a_member():
    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    people = {a.name: (a.role, a.org) for a in defn.admins}
    by_org = {cfg.org: name for name, cfg in SITES.items()}
    assert people["admin@consortium.org"] == ("project_admin", defn.server_org)
    leads = {by_org[org] for role, org in people.values() if role == "lead"}
    assert {"hospital-a", "hospital-b"} <= leads
    assert any(role == "member" and org in by_org for role, org in people.values())
    project_dict(defn, SITES, site_configs=REPO / "site_configs", storage_root=REPO / "workspace")  # orgs check out


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("role: project_admin", "role: boss", "'admins[0].role': 'boss' is not a role; the roles are project_admin"),
        ("role: lead\n", "role: Lead\n", "'admins[1].role': 'Lead' is not a role"),
        ("name: lead@stmary.org", "name: lead@northfield.org", "'admins[2].name': lead@northfield.org is listed twice"),
        ("  - name: lead@stmary.org", "  - lead@stmary.org\n  - name: x@stmary.org", "'admins[2]': 'lead@stmary.org'"),
        ("    role: member", "    role: member\n    site: hospital-a", "'admins[3].site': unknown key"),
        ("    role: project_admin\n", "    role: lead\n", "'admins': at least one admin needs role project_admin"),
    ],
)
def test_bad_admins_are_refused_at_load_naming_the_field(tmp_path, old, new, message):
    path = tmp_path / "consortium.yaml"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_consortium(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_an_admin_whose_org_no_participant_has_is_refused(tmp_path):
    path = tmp_path / "consortium.yaml"
    path.write_text(GOOD.replace("org: st_mary_university", "org: st_marys_university", 1))
    defn = load_consortium(path)  # the org is well-formed: only the site configs tell it is nobody's
    with pytest.raises(ConfigError) as err:
        project_dict(defn, SITES, site_configs=REPO / "site_configs", storage_root=tmp_path)
    text = str(err.value)
    assert "'admins[2].org': lead@stmary.org (role lead) belongs to org 'st_marys_university'" in text
    assert "consortium_ops (server), lakeside_community, northfield_general, st_mary_university" in text
    # a hospital that left while its people stayed in consortium.yaml: all of them are named
    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    left = {name: cfg for name, cfg in SITES.items() if cfg.org != "northfield_general"}
    with pytest.raises(ConfigError) as err:
        project_dict(defn, left, site_configs=REPO / "site_configs", storage_root=tmp_path)
    assert "lead@northfield.org" in str(err.value) and "member@northfield.org" in str(err.value)
    assert "remove the people of a hospital that left" in str(err.value)


def test_the_server_policy_follows_the_roles():
    policy = R.server_policy(SITES)
    server = "consortium_ops"
    assert set(policy["permissions"]) == set(ROLES)
    # submit: the project admin and leads; a member and an org_admin not
    assert allowed(policy, server, PA, "submit_job") and allowed(policy, server, LEAD_A, "submit_job")
    assert not allowed(policy, server, MEMBER_A, "submit_job")
    assert not allowed(policy, server, ORG_ADMIN_A, "submit_job")
    # a lead steers only their own job; an org_admin the jobs of their org's people; the project admin all
    for command in ("abort_job", "delete_job", "download_job", "get_job_log", "clone_job", "list_job"):
        assert allowed(policy, server, LEAD_A, command, submitter=LEAD_A), command
        assert not allowed(policy, server, LEAD_B, command, submitter=LEAD_A), command
        assert not allowed(policy, server, MEMBER_A, command, submitter=LEAD_A), command
        assert allowed(policy, server, PA, command, submitter=LEAD_A), command
    for command in ("abort_job", "download_job", "get_job_log"):
        assert allowed(policy, server, ORG_ADMIN_A, command, submitter=LEAD_A), command
        assert not allowed(policy, server, ORG_ADMIN_B, command, submitter=LEAD_A), command
    # everyone sees jobs and status; only the project admin (the server's org) operates the server
    for person in (PA, LEAD_A, MEMBER_A, ORG_ADMIN_B):
        assert allowed(policy, server, person, "list_jobs") and allowed(policy, server, person, "check_status")
        assert allowed(policy, server, person, "get_job_meta", submitter=LEAD_A)
    assert allowed(policy, server, PA, "shutdown") and not allowed(policy, server, LEAD_A, "shutdown")
    # no hospital runs jobs that ship code: the server accepts none either, from anyone
    assert not any(allowed(policy, server, p, "byoc", submitter=p) for p in (PA, LEAD_A))


def test_a_hospital_policy_decides_who_runs_jobs_there_and_who_operates_it():
    cfg = SITES["hospital-a"]  # org northfield_general
    policy = R.site_policy(cfg)
    assert policy == json.loads(json.dumps(policy))  # plain JSON, as written into the kit
    # the deploy check: the job's submitter is the user
    assert allowed(policy, cfg.org, LEAD_B, "submit_job", submitter=LEAD_B)
    assert not allowed(policy, cfg.org, MEMBER_A, "submit_job", submitter=MEMBER_A)
    assert not allowed(policy, cfg.org, LEAD_A, "byoc", submitter=LEAD_A)
    # its own org's lead and org_admin operate it; another hospital's do not
    assert allowed(policy, cfg.org, LEAD_A, "restart")
    assert allowed(policy, cfg.org, ORG_ADMIN_A, AdminCommandNames.SHELL_CAT)
    assert not allowed(policy, cfg.org, LEAD_B, "restart") and not allowed(policy, cfg.org, ORG_ADMIN_B, "sys_info")
    assert not allowed(policy, cfg.org, MEMBER_A, "restart")
    # a site that runs only its project admin's jobs, with code: leads are refused there, and at the server only
    # if no other hospital takes them
    strict = replace(
        cfg, authorization=replace(cfg.authorization, submit_roles=("project_admin",), allow_custom_code=True)
    )
    policy = R.site_policy(strict)
    assert not allowed(policy, cfg.org, LEAD_A, "submit_job", submitter=LEAD_A)
    assert allowed(policy, cfg.org, PA, "byoc", submitter=PA)
    server = R.server_policy({**SITES, "hospital-a": strict})
    assert allowed(server, "consortium_ops", LEAD_A, "submit_job")  # hospital-b and -c still run leads' jobs
    assert allowed(server, "consortium_ops", PA, "byoc", submitter=PA)  # hospital-a runs the project admin's code
    assert not allowed(server, "consortium_ops", LEAD_A, "byoc", submitter=LEAD_A)
    only_pa = {
        n: replace(c, authorization=replace(c.authorization, submit_roles=("project_admin",))) for n, c in SITES.items()
    }
    assert not allowed(R.server_policy(only_pa), "consortium_ops", LEAD_A, "submit_job")


def test_the_project_admin_holds_every_right_flare_checks_against_the_policy():
    """A role's rights are a list in our policy (the site decides byoc for the project admin too), and FLARE refuses
    what a list leaves out: every admin command FLARE authorizes by the policy must be in the project admin's."""
    # decided without the policy: study commands (by certificate role), project-admin-only commands, and internal
    # messages between server and sites that are no admin command
    not_by_policy = {"register_study", "add_study_site", "remove_study_site", "remove_study", "list_studies"}
    not_by_policy |= {"show_study", "add_study_user", "remove_study_user", "admin_check_status", "dead"}
    not_by_policy |= {"abort_task", "aux_command", "check_resources", "deploy_app"}
    commands = {v for k, v in vars(AdminCommandNames).items() if k.isupper() and isinstance(v, str)}
    policy = R.server_policy(SITES)
    missing = [
        c for c in sorted(commands - not_by_policy) if not allowed(policy, "consortium_ops", PA, c, submitter=PA)
    ]
    assert missing == ["byoc"] or missing == [], missing  # byoc: no hospital runs code from anyone
    site = R.site_policy(SITES["hospital-a"])
    missing = [
        c for c in sorted(commands - not_by_policy) if not allowed(site, "northfield_general", PA, c, submitter=PA)
    ]
    assert missing in ([], ["byoc"]), missing


def test_a_refusal_names_the_person_the_right_and_who_may():
    text = R.refusal(
        "lead@stmary.org", "st_mary_university", "lead", "user not authorized for the action 'abort_job 1a2b: '"
    )
    assert "lead@stmary.org (role lead, org st_mary_university) may not abort_job (right 'manage_job')" in text
    assert "only for jobs they submitted themselves" in text and "the project_admin" in text
    assert "an org_admin of the submitter's org" in text and "FLARE said: user not authorized" in text
    text = R.refusal(
        "member@northfield.org", "northfield_general", "member", "user not authorized for the action 'submit_job /j'"
    )
    assert "may not submit_job (right 'submit_job')" in text and "authorization.submit_roles" in text
    text = R.refusal(
        "lead@stmary.org", "st_mary_university", "lead", "user not authorized for the action 'download_job 1a2b'"
    )
    assert "right 'download_job'" in text and "only for jobs they submitted themselves" in text


def test_every_kit_carries_the_consortium_policy_and_each_admin_kit_its_role(tmp_path):
    """Real `nvflare provision`: the server's and every hospital's local/authorization.json (and .default) are
    the policy above, and each person's kit certifies their org and role."""
    from consortium.deploy.admin import kit_identity

    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    project = project_dict(defn, SITES, site_configs=REPO / "site_configs", storage_root=tmp_path / "storage")
    write_project(project, tmp_path / "project.yml")
    prod = run_provision(tmp_path / "project.yml", tmp_path / "ws")
    for name in ("authorization.json", "authorization.json.default"):
        assert json.loads((prod / defn.server_name / "local" / name).read_text()) == R.server_policy(SITES)
        for site, cfg in SITES.items():
            assert json.loads((prod / site / "local" / name).read_text()) == R.site_policy(cfg)
    for admin in defn.admins:
        assert kit_identity(prod / admin.name) == (admin.name, admin.org, admin.role)
