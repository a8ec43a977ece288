"""Driving a network lab: kits for the lab's host names, one job run per link condition, the table of results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from consortium.deploy.netlab import SERVER_NAME, Lab, Link, NetlabError


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
