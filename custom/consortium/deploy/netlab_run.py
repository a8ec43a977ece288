"""`consortium netlab ...`: provision kits for the lab's host names, run a job over each link condition, tabulate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from consortium.argtypes import positive_int
from consortium.deploy.netlab import SERVER_NAME, Lab, Link, NetlabError, check_host, links, on_sigterm


def provision(root: Path, *, consortium: Path, site_configs: Path, env: dict) -> tuple[Path, dict]:
    """Real FLARE kits (`consortium provision`) for a copy of the consortium whose server is the lab's host."""
    raw = yaml.safe_load(Path(consortium).read_text())
    raw["server"]["name"] = SERVER_NAME
    (root / "consortium.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--workspace", str(root / "ws")]
    proc = subprocess.run([*cmd, "--consortium", str(root / "consortium.yaml"), "provision"], env=env, text=True,
                          capture_output=True)  # fmt: skip
    if proc.returncode != 0:
        raise NetlabError(f"consortium provision failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    prods = sorted((root / "ws" / "prod" / raw["project"]).glob("prod_*"), key=lambda p: int(p.name.split("_")[1]))
    return prods[-1], raw


def run_link(lab: Lab, name: str, link: Link, *, prod, consortium: dict, job, timeout: float, kit_env=None) -> dict:
    """Start the relay (if the link needs it), the server and every hospital from their own kits, each in its
    own namespace; submit the job from the admin host; stop everything; return the measured row."""
    lab.set_link(link)
    logs, port = lab.root / "logs" / name, consortium["server"]["fed_learn_port"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("NVFLARE_POC_WORKSPACE", None)
    home = lambda host: {**env, **(kit_env or {}), "HOME": str(lab.root / "home" / host)}  # own ~/.nvflare
    for host in ("server", "admin", *lab.hospitals):
        (lab.root / "home" / host).mkdir(parents=True, exist_ok=True)
    if link.relayed:
        relay = [sys.executable, "-m", "consortium.deploy.relay", "--listen", f"{lab.addr['wan']}:{port}"]
        relay += ["--target", f"{lab.addr['server']}:{port}", "--delay-ms", str(link.delay_ms)]
        relay += ["--jitter-ms", str(link.jitter_ms), "--cut-every", str(link.cut_every)]
        relay += ["--first-cut-mb", str(link.first_cut_mb)]
        lab.start("wan", [*relay, "--lifetime", str(timeout + 600)], env=env, log=logs / "relay.log")
    admin = next(a["name"] for a in consortium["admins"] if a["role"] == "project_admin")
    kits = {"server": prod / SERVER_NAME, **{h: prod / h for h in lab.hospitals}}
    start = time.perf_counter()
    try:
        for host, kit in kits.items():
            lab.start(host, ["bash", str(kit / "startup" / "start.sh")], env=home(host), log=logs / f"{host}.log")
        cmd = [sys.executable, "-m", "consortium.cli", "netlab", "admin", "--kit", str(prod / admin), "--name", admin]
        cmd += ["--sites", ",".join(lab.hospitals), "--job", str(job), "--timeout", str(timeout)]
        cmd += ["--out", str(logs / "result")]
        lab.start("admin", cmd, env=home("admin"), log=None).wait(timeout + 600)
    finally:
        lab.stop()
    result_file = logs / "result" / "netlab.json"
    row = json.loads(result_file.read_text()) if result_file.exists() else {"status": "no result (see logs)"}
    relay_log = logs / "relay.log"
    row["cuts"] = relay_log.read_text().count(" cut connection ") if relay_log.exists() else 0
    row.update(link=name, total_s=time.perf_counter() - start, logs=str(logs))
    return row


def table(rows: list[dict]) -> str:
    """One line per link condition: rounds done, mean seconds of rounds 2..n, round 1, job, readiness, cuts,
    site-rounds dropped (a site's update missing from a round), cross-site scores received / expected."""
    out = ["link     rounds  s/round  round 1 s   job s  ready s  cuts  dropped  cross-site  status"]
    cell = lambda v, w, f=".1f": f"{v:{w}{f}}" if v is not None else f"{'-':>{w}s}"
    for r in rows:
        rounds = r.get("round_seconds", [])
        later = rounds[1:] or rounds
        per = sum(later) / len(later) if later else None
        first = rounds[0] if rounds else None
        cells = [cell(per, 8), cell(first, 10), cell(r.get("job_s"), 7, ".0f"), cell(r.get("ready_s"), 8, ".0f")]
        xsite = "{}/{}".format(*r["cross_site"]) if r.get("cross_site") else "-"
        dropped = sum(len(d) for d in r.get("dropped", []))
        line = f"{r['link']:7s} {len(rounds):7d} {' '.join(cells)} {r['cuts']:5d} {dropped:8d} {xsite:>11s}"
        out.append(f"{line}  {r['status']}")
    return "\n".join(out)


def cmd_run(args) -> int:
    from consortium.config import load_site_configs, require_data_dirs
    from consortium.jobs import export_job, load_job_spec

    check_host()
    on_sigterm()
    conditions = links(rate=args.rate_mbit, delay=args.delay_ms, jitter=args.jitter_ms, cut_every=args.cut_every,
                       first_cut_mb=args.first_cut_mb)
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
    spec = load_job_spec(args.job, args.jobs)
    spec = spec.with_overrides(Path(args.jobs) / args.job, rounds=args.rounds, round_timeout=args.round_timeout)
    lab = Lab(Path(args.workspace).resolve() / "netlab" / f"cl{os.getpid()}", list(sites))
    job = export_job(spec, lab.root / "jobs")
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


def register(sub) -> None:
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
    run.add_argument("--first-cut-mb", type=float, default=4.0,
                     help="cuts/poor: one sure cut where a link's traffic passes this many MB (0: random cuts only)")
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
