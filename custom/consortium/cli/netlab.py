"""`consortium netlab run | down | admin`: hospitals on separate hosts of this machine, one run per link condition."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from consortium.argtypes import positive_int


def cmd_run(args) -> int:
    from consortium.cli.common import charter, job_spec
    from consortium.config import load_site_configs, require_data_dirs
    from consortium.deploy.netlab import SERVER_NAME, Lab, NetlabError, check_host, links, on_sigterm
    from consortium.deploy.netlab_run import provision, run_link, table
    from consortium.jobs import export_job

    check_host()
    on_sigterm()
    conditions = links(
        rate=args.rate_mbit,
        delay=args.delay_ms,
        jitter=args.jitter_ms,
        cut_every=args.cut_every,
        first_cut_mb=args.first_cut_mb,
    )
    names = [n.strip() for n in args.links.split(",") if n.strip()]
    unknown = [n for n in names if n not in conditions]
    if unknown:
        raise NetlabError(f"--links: unknown link condition(s) {', '.join(unknown)}; known: {', '.join(conditions)}")
    bad = [e for e in args.kit_env if "=" not in e]
    if bad:
        raise NetlabError(f"--kit-env: expected NAME=VALUE, got {bad[0]!r}")
    kit_env = dict(e.split("=", 1) for e in args.kit_env)
    sites = load_site_configs(args.site_configs)
    require_data_dirs(sites)
    spec = job_spec(args)
    spec = spec.with_overrides(Path(args.jobs) / args.job, rounds=args.rounds, round_timeout=args.round_timeout)
    lab = Lab(Path(args.workspace).resolve() / "netlab" / f"cl{os.getpid()}", list(sites))
    job = export_job(spec, lab.root / "jobs", charter=charter(args))
    env = {**os.environ, "HOME": str(lab.root / "home" / "provision")}
    (lab.root / "home" / "provision").mkdir(parents=True, exist_ok=True)
    prod, consortium = provision(lab.root, consortium=Path(args.consortium), site_configs=Path(args.site_configs),
                                 env=env)  # fmt: skip
    print(f"kits for {SERVER_NAME} and {', '.join(sites)} in {prod}")
    rows = []
    try:
        lab.up()
        print(f"lab {lab.prefix}: " + ", ".join(f"{lab.name(h)} {lab.addr[h]}" for h in ["wan", *lab.hosts]))
        for name in names:
            print(f"== link {name}: {conditions[name]}", flush=True)
            rows.append(run_link(lab, name, conditions[name], prod=prod, consortium=consortium, job=job,
                                 timeout=args.timeout, kit_env=kit_env))  # fmt: skip
            print(table(rows[-1:]).splitlines()[1], flush=True)
    finally:
        lab.down()
        print(f"lab {lab.prefix} removed (namespaces, bridge, veths, qdiscs, hosts files, processes)")
    extra = f"; kit environment {' '.join(args.kit_env)}" if args.kit_env else ""
    print(f"\njob {spec.name}, {spec.rounds} rounds, {len(sites)} hospitals; s/round = mean of rounds 2..n{extra}")
    print(table(rows))
    return 0 if all(r["status"] == "FINISHED:COMPLETED" for r in rows) else 1


def cmd_down(args) -> int:
    """Remove labs a crashed run left behind: only what their own netlab.json says they created."""
    from consortium.deploy.netlab import Lab

    found = sorted((Path(args.workspace).resolve() / "netlab").glob("*/netlab.json"))
    for state in found:
        lab = Lab.load(state.parent)
        lab.down()
        print(f"removed lab {lab.prefix} ({state.parent})")
    if not found:
        print("no lab left from this workspace")
    return 0


def cmd_admin(args) -> int:
    """The admin host's part (run inside its namespace): wait for the sites, submit, follow, download."""
    from consortium import constants as C
    from consortium.deploy.admin import AdminError, clients, download, follow, session, site_errors

    kit, out, start, wanted = Path(args.kit), Path(args.out), time.perf_counter(), set(args.sites.split(","))
    while True:
        try:
            with session(args.name, kit, timeout=10) as sess:
                if wanted <= set(clients(sess)):
                    break
        except AdminError:
            pass
        if time.perf_counter() - start > args.ready_timeout:
            raise AdminError(f"sites {sorted(wanted)} not all registered after {args.ready_timeout:.0f} s")
        time.sleep(2)
    result = {"ready_s": time.perf_counter() - start}
    print(f"all sites registered after {result['ready_s']:.0f} s", flush=True)
    with session(args.name, kit) as sess:
        job_id = sess.submit_job(args.job)
        start = time.perf_counter()
        result.update(job_id=job_id, status=follow(sess, job_id, timeout=args.timeout))
        result.update(job_s=time.perf_counter() - start, errors=site_errors(sess, job_id))
        download(sess, job_id, out)
    if (out / C.METRICS_FILE).exists():
        history = json.loads((out / C.METRICS_FILE).read_text())
        result["round_seconds"] = [r["seconds"] for r in history.get("rounds", [])]
        result["dropped"] = [r.get("dropped", {}) for r in history.get("rounds", [])]  # site: reason, per round
        result["final"] = {s: m.get(C.METRIC_SCORE) for s, m in history.get("final", {}).items()}
        scores = (history.get("cross_site") or {}).get("scores", {})
        result["cross_site"] = [sum(len(v) for v in scores.values()), (len(wanted) + 1) * len(wanted)]
    (out / "netlab.json").write_text(json.dumps(result, indent=1))
    print(f"job {job_id}: {result['status']} after {result['job_s']:.0f} s", flush=True)
    return 0


def add_netlab(sub) -> None:
    p = sub.add_parser("netlab", help="hospitals on separate hosts on this machine (network namespaces; root)")
    cmds = p.add_subparsers(dest="netlab_command", required=True)
    run = cmds.add_parser("run", help="build the lab, run a job once per link condition, print a table, remove it")
    run.add_argument("--job", default="fedavg")
    run.add_argument("--rounds", type=int, default=3, help="override the job's rounds (default 3)")
    run.add_argument("--links", default="plain", help="comma-separated: plain, slow, delay, cuts, poor")
    run.add_argument("--rate-mbit", type=float, default=20.0, help="per-hospital rate limit of slow/poor links")
    run.add_argument("--delay-ms", type=float, default=50.0, help="added one-way delay of delay/poor links")
    run.add_argument("--jitter-ms", type=float, default=10.0, help="uniform +- jitter on that delay")
    run.add_argument("--cut-every", type=float, default=20.0, help="cuts/poor: mean seconds of transfer before a cut")
    run.add_argument(
        "--first-cut-mb",
        type=float,
        default=4.0,
        help="cuts/poor: one sure cut where a link's traffic passes this many MB (0: random cuts only)",
    )
    run.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per job")
    run.add_argument("--round-timeout", type=positive_int, default=None,
                     help="override the job's round_timeout (s); poor links need a few minutes")  # fmt: skip
    env_help = "environment of every kit process, e.g. NVFLARE_STREAMING_ACK_PROGRESS_TIMEOUT=10 (repeatable)"
    run.add_argument("--kit-env", action="append", default=[], metavar="NAME=VALUE", help=env_help)
    run.set_defaults(fn=cmd_run)
    down = cmds.add_parser("down", help="remove labs a crashed run left behind in this workspace")
    down.set_defaults(fn=cmd_down)
    adm = cmds.add_parser("admin", help="(run by `netlab run` inside the admin host) submit and follow a job")
    adm.add_argument("--kit", required=True)
    adm.add_argument("--name", required=True)
    adm.add_argument("--sites", required=True)
    adm.add_argument("--job", required=True)
    adm.add_argument("--out", required=True)
    adm.add_argument("--timeout", type=float, default=900.0)
    adm.add_argument("--ready-timeout", type=float, default=180.0)
    adm.set_defaults(fn=cmd_admin)
