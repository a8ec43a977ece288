"""Benchmark: a job across hospitals on separate hosts (network namespaces) over each link condition.

Usage (root): python bench/links.py [--job fedavg] [--rounds 5] [--links plain,slow,delay,cuts,poor]
          [--site-configs site_configs] [--rate-mbit 20] [--delay-ms 50] [--jitter-ms 10] [--cut-every 20]
          [--round-timeout 240]
Generates the hospitals' data if missing, then runs `consortium netlab run` in a temporary workspace (own
HOME): real kits, each host in its own namespace, one fresh start per link condition. Prints the table:
link condition, rounds, seconds per round (mean of rounds 2..n), round 1, job seconds, cuts, status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="fedavg")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--links", default="plain,slow,delay,cuts,poor")
    parser.add_argument("--site-configs", default=str(ROOT / "site_configs"))
    parser.add_argument("--rate-mbit", default="20")
    parser.add_argument("--delay-ms", default="50")
    parser.add_argument("--jitter-ms", default="10")
    parser.add_argument("--cut-every", default="20")
    parser.add_argument("--timeout", default="1200", help="seconds allowed per job")
    parser.add_argument("--round-timeout", default="240", help="the job's round_timeout (s); poor links need minutes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/links.py needs root: it builds network namespaces", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="consortium-links-"))
    (tmp / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp / "home")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    cli = [sys.executable, "-m", "consortium.cli", "--site-configs", args.site_configs, "--jobs", str(ROOT / "jobs")]
    cli += ["--consortium", str(ROOT / "provisioning/consortium.yaml"), "--workspace", str(tmp / "ws")]
    subprocess.run([*cli, "data", "synth"], env=env, check=True, stdout=subprocess.DEVNULL)
    run = ["netlab", "run", "--job", args.job, "--rounds", str(args.rounds), "--links", args.links]
    run += ["--rate-mbit", args.rate_mbit, "--delay-ms", args.delay_ms, "--jitter-ms", args.jitter_ms]
    run += ["--cut-every", args.cut_every, "--timeout", args.timeout, "--round-timeout", args.round_timeout]
    start = time.perf_counter()
    proc = subprocess.run([*cli, *run], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout
    print(out[: out.rfind("\njob ")] if "\njob " in out else out)  # the run's own progress, per link
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: consortium {' '.join(run)}")
    print(f"slow: {args.rate_mbit} Mbit/s per hospital, both directions (tbf)")
    print(f"delay: {args.delay_ms} +- {args.jitter_ms} ms added each way (relay)")
    print(f"cuts: a connection in mid-transfer reset every ~{args.cut_every} s (relay); poor: all three")
    print(out[out.rfind("\njob ") + 1 :] if "\njob " in out else "")
    print(f"bench total {time.perf_counter() - start:.0f} s; kits and logs in {tmp / 'ws' / 'netlab'}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
