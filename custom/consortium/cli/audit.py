"""`consortium audit verify | show`: check and print a participant's trail of model exchanges (audit_trail)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from consortium import constants as C
from consortium.argtypes import positive_int
from consortium.cli.common import BROKEN_PIPE

COLUMNS = ("line", "seq", "time", "job", "round", "task", "direction", "peer", "kind", "bytes", "sha256", "he",
           "dp epsilon")  # fmt: skip


def resolve(path: str) -> tuple[Path, str | None]:
    """The trail file PATH names, and the head hash to expect: PATH is the trail file, a workspace or kit folder
    holding consortium_trail/, or a run folder whose run record names the server's trail and its head."""
    from consortium import runrecord as R

    p = Path(path)
    if p.is_dir():
        if (p / R.FILE).is_file():
            exchanges = (R.read(p).get(R.EXCHANGES)) or {}
            if exchanges.get(R.Exchanges.TRAIL):
                return Path(exchanges[R.Exchanges.TRAIL]), exchanges.get(R.Exchanges.HEAD)
        for candidate in (p / C.TRAIL_FOLDER / C.TRAIL_FILE, p / C.TRAIL_FILE):
            if candidate.is_file():
                return candidate, None
    return p, None


def _epsilon(spent) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in spent.items()) if isinstance(spent, dict) else "-"


def _row(n: int, r: dict) -> list[str]:
    cells = [n, r.get("seq"), str(r.get("time", ""))[:23], r.get("job"), r.get("round"), r.get("task"),
             r.get("direction"), r.get("peer"), r.get("kind"), r.get("bytes"), str(r.get("sha256", ""))[:16],
             "on" if r.get("he") else "off", _epsilon(r.get("dp_epsilon"))]  # fmt: skip
    return ["-" if c is None else str(c) for c in cells]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_verify(args) -> int:
    from consortium.audit_trail.chain import TrailError, verify

    trail, head = resolve(args.path)
    try:
        verdict = verify(trail, head=args.head or head)
    except TrailError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    if verdict.problem:
        print(f"{trail}: BROKEN at {verdict.problem}")
        print(f"  the {len(verdict.records)} record(s) before line {verdict.line} verify; from there on nothing does")
        return 1
    kept = args.head or head
    against = (
        f"; the head kept elsewhere ({'--head' if args.head else 'run record'}) {kept[:16]}... is in it" if kept else ""
    )
    print(f"{trail}: {len(verdict.records)} records, chain intact, head {verdict.head}{against}")
    return 0


def cmd_show(args) -> int:
    from consortium.audit_trail.chain import TrailError, read_lines, verify

    trail, _ = resolve(args.path)
    try:
        lines, verdict = read_lines(trail), verify(trail)
    except TrailError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    rows = []
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = {}
        if isinstance(record, dict) and (not args.job or record.get("job") == args.job):
            rows.append(_row(n, record))
    try:
        print(table(rows[-args.last :] if args.last else rows), flush=True)
    except BrokenPipeError:  # `| head` stopped reading: leave quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    status = f"BROKEN at {verdict.problem}; records from that line on are not trustworthy" if verdict.problem else (
        f"chain intact, head {verdict.head}")  # fmt: skip
    print(f"{trail}: {len(lines)} records; {status}")
    return 1 if verdict.problem else 0


def add_audit(sub) -> None:
    audit = sub.add_parser("audit", help="the server's or a site's hash-chained trail of every model exchange")
    cmds = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    path_help = ("the trail file, a workspace or kit folder with consortium_trail/, or a run folder (its run record "
                 "names the server's trail and its head at the end of the job)")  # fmt: skip
    verify = cmds.add_parser("verify", help="check every record's hash and link; name the first broken one")
    verify.add_argument("path", help=path_help)
    verify.add_argument("--head", help="a head hash kept elsewhere (e.g. in a report): it must be in the trail")
    verify.set_defaults(fn=cmd_verify)
    show = cmds.add_parser("show", help="print the trail as a table (and whether it verifies)")
    show.add_argument("path", help=path_help)
    show.add_argument("--job", help="only this job's records")
    show.add_argument("--last", type=positive_int, help="only the last N records (default: all)")
    show.set_defaults(fn=cmd_show)
