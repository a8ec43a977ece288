"""`consortium privacy ledger`: a site's privacy spending across jobs (privacy.spending) and what is left."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from consortium import constants as C
from consortium.cli.common import BROKEN_PIPE

COLUMNS = ("job", "rounds", "epsilon", "delta", "counted", "accountant", "time")


def locate(args) -> tuple[Path, Path | None]:
    """(ledger file, the site's kit or workspace folder if known): --path (a ledger file, or a kit or workspace
    folder holding consortium_privacy/), else the site's kit in the local POC consortium."""
    from consortium.privacy import spending

    if args.path:
        p = Path(args.path)
        return (spending.path(p), p) if p.is_dir() else (p, None)
    from consortium.cli.deploy import poc_paths, poc_state

    state = poc_state(args)
    if args.site not in state.get("sites", []):
        from consortium.deploy.poc import PocError

        raise PocError(f"--site {args.site}: not a site of the local consortium ({', '.join(state['sites'])}); "
                       "give --path to read another site's kit or workspace")  # fmt: skip
    kit = poc_paths(args).prod(state["project"]) / args.site
    return spending.path(kit), kit


def site_config(args, kit: Path | None):
    """The site's config: its kit's own copy (local/consortium/), else the one under --site-configs."""
    from consortium.config import ConfigError, load_site_config

    if kit is not None and (kit / "local" / C.KIT_SITE_CONFIG_FOLDER).is_dir():
        return load_site_config(args.site, kit / "local" / C.KIT_SITE_CONFIG_FOLDER)
    try:
        return load_site_config(args.site, args.site_configs)
    except ConfigError as exc:
        print(f"warning: no budget shown: {exc}", file=sys.stderr)
        return None


def rows(ledger) -> list[list[str]]:
    out = []
    for run in ledger.runs.values():
        eps = sum(float(r["epsilon"]) for m, r in run.spent.items() if m != "none")
        delta = sum(float(r["delta"]) for m, r in run.spent.items() if m != "none")
        counted = run.counted()
        if run.refused and not run.spent and run.planned is None:
            spent, counted_text = ("refused", "-"), "0"
        elif not run.private:
            spent, counted_text = ("no DP", "-"), "not bounded"
        else:
            spent, counted_text = (f"{eps:.2f}", f"{delta:g}"), f"{counted[0]:.2f} / {counted[1]:g}"
        out.append([" + ".join(run.jobs), str(len(run.rounds)), *spent, counted_text, run.accountants or "-",
                    run.time])  # fmt: skip
    return out


def table(body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def summary(ledger, cfg) -> str:
    used_eps, used_delta = ledger.counted()
    if cfg is None:
        return f"counted: epsilon {used_eps:.2f}, delta {used_delta:g} (site config not found: budget unknown)"
    budget = cfg.privacy.budget
    if budget is None:
        return (f"counted: epsilon {used_eps:.2f}, delta {used_delta:g}; no budget across jobs (privacy.budget is "
                f"not set in {cfg.source})")  # fmt: skip
    return (f"budget (privacy.budget in {cfg.source}): epsilon {budget.epsilon:g}, delta {budget.delta:g}; counted: "
            f"epsilon {used_eps:.2f}, delta {used_delta:g}; left: epsilon {max(budget.epsilon - used_eps, 0):.2f}, "
            f"delta {max(budget.delta - used_delta, 0):.3g}")  # fmt: skip


def cmd_ledger(args) -> int:
    from consortium.privacy import spending

    file, kit = locate(args)
    ledger = spending.read(file)
    try:
        if not file.exists():
            print(f"{file}: no ledger yet (this site has sent no update of any job)")
        else:
            print(table(rows(ledger)))
            print(f"{file}: {ledger.records} records, {len(ledger.runs)} run(s)")
        print(summary(ledger, site_config(args, kit)), flush=True)
    except BrokenPipeError:  # `| head` stopped reading: leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    for problem in ledger.problems:
        print(f"WARNING {problem}")
    return 0


def add_privacy(sub) -> None:
    privacy = sub.add_parser("privacy", help="a site's privacy spending across jobs (its ledger)")
    cmds = privacy.add_subparsers(dest="privacy_command", required=True, metavar="ACTION")
    ledger = cmds.add_parser("ledger", help="print a site's ledger: per job, rounds, epsilon, delta, accountant, "
                             "time, and the site's remaining budget")  # fmt: skip
    ledger.add_argument("--site", required=True, help="the site's name (its budget: its config)")
    ledger.add_argument("--path", help="the site's ledger file, or its kit or workspace folder (default: its kit in "
                        "the local POC consortium)")  # fmt: skip
    ledger.set_defaults(fn=cmd_ledger)
