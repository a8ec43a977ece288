"""The consortium's roles: what each person's FLARE role may do, written in full into every kit's
`local/authorization.json` (the server's and each hospital's), and the words a refused person reads.

FLARE 2.9 (nvflare/fuel/sec/authz.py) checks an admin command at the participant that carries it out, against
that participant's own `local/authorization.json`: a right the file does not grant a role is refused. A
condition is `any`, `none`, `n:submitter` (the person submitted the job), `o:submitter` (the person belongs to
the job submitter's org) or `o:site` (the person belongs to the org of the participant deciding). Where each
right is decided (nvflare/private/fed/server/job_cmds.py, job_runner.py, client/admin.py):

* `submit_job`: the server, when the job is submitted (the person's own role), and every hospital when the
  job is deployed there (the submitter's role): a hospital that refuses the submitter does not run the job.
* job rights (`manage_job` = abort, delete; `download_job`, `get_job_log`, `clone_job`, ...): the server.
* `view`: the server (and each hospital for the status of its own client).
* `operate`, `shell_commands`: the server for itself, each hospital for itself.
* `byoc` (jobs that ship code): each participant the job is deployed to, for the submitter.
"""

from __future__ import annotations

import re

from consortium.config import ROLES, AuthorizationConfig, SiteConfig

FORMAT_VERSION = "1.0"

# Rights about jobs other people submitted, all decided by the server, all with one condition per role.
JOB_RIGHTS = ("manage_job", "download_job", "download_job_components", "get_job_log", "list_job", "app_command")
SITE_RIGHTS = ("operate", "report_version", "shell_commands")  # the participant's own machine

# The consortium's policy, role by role, before each hospital's own choices (submit_job, byoc) are applied.
# project_admin: everything everywhere. org_admin: the jobs of their org's people and their org's machines,
# submits nothing. lead: submits, and steers only their own jobs. member: looks, nothing else.
JOBS_OF = {"project_admin": "any", "org_admin": "o:submitter", "lead": "n:submitter", "member": "none"}
MACHINES_OF = {"project_admin": "any", "org_admin": "o:site", "lead": "o:site", "member": "none"}
DEFAULT_SUBMIT_ROLES = AuthorizationConfig().submit_roles  # a site config that names no submit_roles


def role_rights(role: str, *, may_submit: bool, custom_code: bool) -> dict:
    """One role's rights in one kit: `may_submit` whether this participant runs (the server: accepts) jobs
    from this role, `custom_code` whether it runs jobs of this role that ship code."""
    jobs = JOBS_OF[role]
    if may_submit and jobs == "none":  # a role a site lets submit steers its own jobs
        jobs = "n:submitter"
    rights = {"submit_job": "any" if may_submit else "none"}
    rights["clone_job"] = ("any" if role == "project_admin" else "n:submitter") if may_submit else "none"
    rights.update({right: jobs for right in JOB_RIGHTS})
    rights["view"] = "any"
    rights.update({right: MACHINES_OF[role] for right in SITE_RIGHTS})
    rights["byoc"] = "any" if custom_code and may_submit else "none"
    rights["server-predeployed-flwr"] = "none"
    return rights


def site_policy(cfg: SiteConfig) -> dict:
    """A hospital kit's `local/authorization.json`: the consortium's table, with the site's own answer to who may
    run jobs here (`authorization.submit_roles`) and whether jobs may ship code (`allow_custom_code`)."""
    auth = cfg.authorization
    permissions = {
        role: role_rights(role, may_submit=role in auth.submit_roles, custom_code=auth.allow_custom_code)
        for role in ROLES
    }
    return {"format_version": FORMAT_VERSION, "permissions": permissions}


def server_policy(sites) -> dict:
    """The server kit's `local/authorization.json`: the same table; the server accepts a job from a role when at
    least one hospital runs that role's jobs (each hospital still decides for itself when the job reaches it),
    and a job with code when at least one hospital runs such jobs from that role."""
    auths = [cfg.authorization for cfg in sites.values()]
    permissions = {}
    for role in ROLES:
        takers = [a for a in auths if role in a.submit_roles]
        permissions[role] = role_rights(
            role, may_submit=bool(takers), custom_code=any(a.allow_custom_code for a in takers)
        )
    return {"format_version": FORMAT_VERSION, "permissions": permissions}


def default_server_policy() -> dict:
    """The server policy when the hospitals are not known in advance (distributed provisioning): the default
    site config's `submit_roles`, no code in jobs."""
    permissions = {
        role: role_rights(role, may_submit=role in DEFAULT_SUBMIT_ROLES, custom_code=False) for role in ROLES
    }
    return {"format_version": FORMAT_VERSION, "permissions": permissions}


# ---- what a refused person reads ------------------------------------------------------------------------

_CONDITION_WORDS = {
    "any": "for every job and machine",
    "n:submitter": "only for jobs they submitted themselves",
    "o:submitter": "only for jobs submitted by people of their own org",
    "o:site": "only on the machines of their own org",
}


_HOLDER = {
    "any": "the {}",
    "o:submitter": "{} of the submitter's org",
    "n:submitter": "{} for their own jobs",
    "o:site": "{} on their own org's machines",
}


def right_of(command: str) -> str:
    """The right FLARE checks for an admin command (`abort_job` -> `manage_job`); others under their own name."""
    from nvflare.security.security import COMMAND_CATEGORIES

    return COMMAND_CATEGORIES.get(command, command)


def rule(role: str, right: str) -> str:
    """The consortium's rule for `role` and `right`, in words, with the roles that hold it more widely."""
    if role not in ROLES:
        return f"'{role}' is not one of the consortium's roles ({', '.join(ROLES)})"
    if right == "submit_job":
        return (
            f"{_a(role)} may submit only where a hospital's site config lists '{role}' in authorization.submit_roles "
            f"(default: {', '.join(DEFAULT_SUBMIT_ROLES)}); the server accepts jobs from the roles some hospital "
            "runs, and each hospital decides again when the job reaches it"
        )
    if right == "byoc":
        return "jobs that ship code run only where the site config sets authorization.allow_custom_code: true"
    condition = _condition(role, right)
    others = [(r, _condition(r, right)) for r in ROLES if r != role]
    holders = [_HOLDER[c].format(r if c == "any" else _a(r)) for r, c in others if c in _HOLDER]
    held = f"; who may: {', '.join(holders)}" if holders else ""
    if condition == "none":
        return f"the consortium's policy does not grant {_a(role)} '{right}'{held}"
    return f"the consortium's policy grants {_a(role)} '{right}' {_CONDITION_WORDS.get(condition, condition)}{held}"


def _a(role: str) -> str:
    return ("an " if role[0] in "aeiou" else "a ") + role


def _condition(role: str, right: str) -> str:
    return role_rights(role, may_submit=role in DEFAULT_SUBMIT_ROLES, custom_code=False).get(right, "none")


_ACTION_RE = re.compile(r"action '([A-Za-z_]+)")


def refusal(who: str, org: str, role: str, flare_message: str) -> str:
    """The message for a command FLARE refused: who, which right was missing, the rule, FLARE's own words."""
    match = _ACTION_RE.search(flare_message)
    command = match.group(1) if match else "this command"
    right = right_of(command) if match else "?"
    return (
        f"not authorized: {who} (role {role}, org {org}) may not {command} (right '{right}'): "
        f"{rule(role, right)}. FLARE said: {flare_message}"
    )
