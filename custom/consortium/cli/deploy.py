"""`consortium provision | kit verify | poc up | poc down`, and the admin session every consortium command uses."""

from __future__ import annotations

import time
from pathlib import Path

from consortium.config import load_site_configs


def poc_paths(args):
    """The local POC consortium's folders under --workspace."""
    from consortium.deploy.poc import PocPaths

    return PocPaths(Path(args.workspace).resolve() / "poc-consortium")


def poc_state(args) -> dict:
    """The running local consortium's state; a clear error when it is not up."""
    from consortium.deploy.poc import PocError, read_state

    state = read_state(poc_paths(args))
    if state is None:
        raise PocError("the consortium is not up: run `consortium poc up` first")
    return state


def admin_session(args):
    """An admin API session: from `--admin-kit` (a production or distributed admin kit), else the local POC's
    kit of `--as PERSON` (default: its project admin's)."""
    from consortium.deploy.admin import AdminError, session
    from consortium.deploy.poc import admin_kit, admin_kits

    person = getattr(args, "as_person", None)
    if getattr(args, "admin_kit", None):
        if person:
            raise AdminError("--as picks a person's kit of the local POC consortium; with --admin-kit, pass only that")
        kit = Path(args.admin_kit)
        return session(args.admin or kit.resolve().name, kit)
    state = poc_state(args)
    if not person:
        return session(state["admin"], admin_kit(poc_paths(args), state))
    kits = admin_kits(poc_paths(args), state)
    if person not in kits:
        raise AdminError(
            f"--as {person}: the local consortium has no admin kit of that name; its admins: {', '.join(sorted(kits))} "
            f"(the admins: of {args.consortium})"
        )
    return session(person, kits[person])


def cmd_provision(args) -> int:
    from consortium.deploy.provision import load_consortium, project_dict, run_provision, write_project

    defn = load_consortium(args.consortium)
    sites = load_site_configs(args.site_configs)
    out = Path(args.workspace).resolve() / "prod"
    project = project_dict(defn, sites, site_configs=Path(args.site_configs), storage_root=out / "storage")
    changes = write_project(project, out / "project.yml")
    start = time.perf_counter()
    prod = run_provision(out / "project.yml", out)
    print(f"project.yml ({out / 'project.yml'}): {', '.join(changes) if changes else 'unchanged since last time'}")
    print(f"startup kits in {prod} [{time.perf_counter() - start:.1f} s]:")
    for kit in sorted(p for p in prod.iterdir() if p.is_dir()):
        print(f"  {kit.name}")
    print("Give each participant only its own kit; keep them secret (they hold private keys).")
    return 0


def cmd_kit_verify(args) -> int:
    from consortium.deploy.kits import verify_kit

    kit = Path(args.path)
    problems, checked = verify_kit(kit)
    if not checked and (kit / "startup" / "fl_admin.sh").exists():
        print(f"{kit}: admin kit; FLARE does not sign admin kits (the server checks its certificate at login)")
        return 0
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"{kit}: {len(problems)} problem(s); re-provision or restore the kit from its original copy")
        return 1
    print(f"{kit}: OK, every signed file intact ({', '.join(checked)})")
    return 0


def cmd_poc_up(args) -> int:
    from consortium.deploy import poc

    paths = poc_paths(args)
    print(f"starting the local consortium (server + {len(load_site_configs(args.site_configs))} hospitals) ...")
    state = poc.up(paths, consortium_file=Path(args.consortium), site_configs=Path(args.site_configs))
    print(f"up in {state['ready_seconds']:.0f} s: server on 127.0.0.1:{state['ports'][0]} (admin {state['ports'][1]})")
    print(f"registered sites: {', '.join(state['registered'])}")  # as the server listed them to the admin API
    print(f"kits and logs: {paths.prod(state['project'])}")
    return 0


def cmd_poc_down(args) -> int:
    from consortium.deploy import poc

    if poc.down(poc_paths(args)):
        print("stopped; no process of the local consortium is left running and its ports are free")
    else:
        print("no consortium was running from this workspace")
    return 0


def add_provision(sub) -> None:
    sub.add_parser("provision", help="write project.yml and signed startup kits").set_defaults(fn=cmd_provision)


def add_kit(sub) -> None:
    kit = sub.add_parser("kit", help="startup kit checks").add_subparsers(dest="action", required=True)
    verify = kit.add_parser("verify", help="check a kit's signatures; names every file that fails")
    verify.add_argument("path")
    verify.set_defaults(fn=cmd_kit_verify)


def add_poc(sub) -> None:
    poc_cmd = sub.add_parser("poc", help="a real local consortium (FLARE POC)").add_subparsers(
        dest="action", required=True
    )
    up_help = "provision POC kits (reused while unchanged), start server + hospitals, wait for registration"
    poc_cmd.add_parser("up", help=up_help).set_defaults(fn=cmd_poc_up)
    poc_cmd.add_parser("down", help="stop every process of the local consortium").set_defaults(fn=cmd_poc_down)
