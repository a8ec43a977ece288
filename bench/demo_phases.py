"""Table: where `consortium demo` (= `make demo`) spends its time, phase by phase.

    python bench/demo_phases.py [--runs N] [--keep DIR] [--fresh-data] [--log DEMO_LOG ...]

Runs `consortium demo` N times (default 2: the first provisions kits, the next may reuse them) against a copy
of site_configs/ in a temp folder of its own (own --workspace, --runs, data), so nobody else's consortium or
results are touched; `--fresh-data` generates the demo data in that folder first (the "data" phase), else
the copy points at the repository's data/ (generate it once with `consortium data synth`). `--log FILE`
analyses a saved timestamped output instead (each line "<seconds> <HH:MM:SS> <text>", as this bench writes
to DIR/demo_N.log). Phases come from the demo's own output (arrival time of each line) and, inside the job,
from the server's job log (runs/fedavg/download/workspace/log.txt), which has exact times:

  data        data synth (or finding it exists)
  kits        project.yml, provisioning the POC kits or reusing them
  poc up      starting the server and hospitals until all registered
  submit      admin login, job export, upload
  job start   the server schedules and deploys the job, starts the job processes (server + 3 sites)
  rounds      the 30 federated rounds
  final val   final validation + 2 fine-tuning epochs at each site
  alone       each hospital trains alone (train_alone)
  cross-site  cross-site evaluation
  audit       membership-inference audit
  job end     the job's processes end; FLARE marks it finished; the demo notices
  download    download, decryption with a hospital key, summary, report
  poc down    stopping every process
Record `uptime` beside the table (printed before and after each run): the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("data", "kits", "poc up", "submit", "job start", "rounds", "final val", "alone", "cross-site", "audit",
          "job end", "download", "poc down")  # fmt: skip


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_demo(root: Path, n: int, python: str) -> Path:
    """One `consortium demo` with its output timestamped line by line into root/demo_<n>.log."""
    log = root / f"demo_{n}.log"
    cmd = [python, "-m", "consortium.cli", "--site-configs", str(root / "site_configs"), "--jobs", str(REPO / "jobs"),
           "--consortium", str(REPO / "provisioning" / "consortium.yaml"), "--workspace", str(root / "ws"),
           "--runs", str(root / f"runs_{n}"), "demo"]  # fmt: skip
    env = {**os.environ, "HOME": str(root / "home"), "PYTHONUNBUFFERED": "1"}
    (root / "home").mkdir(exist_ok=True)
    t0 = time.time()
    with open(log, "w") as out:
        out.write(f"# {uptime()}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            now = time.time()
            out.write(f"{now - t0:8.2f} {datetime.fromtimestamp(now).strftime('%H:%M:%S.%f')[:-3]} {line}")
            out.flush()
        code = proc.wait()
        out.write(f"# exit {code}; {uptime()}\n")
    if code:
        sys.exit(f"consortium demo exited {code}; see {log}")
    return log


def _server_log(lines: list[tuple[float, str]], demo_log: Path) -> Path | None:
    for _, text in lines:
        if text.startswith("metrics:"):
            found = Path(text.split(":", 1)[1].strip()).parent / "download" / "workspace" / "log.txt"
            return found if found.exists() else None
    return None


def phases(demo_log: Path) -> tuple[dict[str, float], float, list[str]]:
    """Seconds per phase, the total and the uptime lines of one timestamped demo output."""
    lines, loads, start_wall = [], [], None
    for raw in demo_log.read_text().splitlines():
        m = re.match(r"\s*(\d+\.\d+) (\d\d:\d\d:\d\d(?:\.\d+)?) (.*)$", raw)
        if not m:
            if "load average" in raw:
                loads.append(raw.lstrip("# ").strip())
            continue
        secs, clock, text = float(m.group(1)), m.group(2), m.group(3)
        lines.append((secs, text.strip()))
        if start_wall is None:  # the clock at the start: the first line's clock less its seconds
            fmt = "%H:%M:%S.%f" if "." in clock else "%H:%M:%S"
            start_wall = datetime.strptime(clock, fmt) - timedelta(seconds=secs)
    first = lambda pat: next(t for t, s in lines if re.search(pat, s))  # noqa: E731
    total = lines[-1][0]
    marks = {"data": first(r"^starting the local consortium"), "kits": None, "poc up": first(r"^registered sites"),
             "submit": first(r"^submitted job")}  # fmt: skip
    up_in = float(re.search(r"up in (\d+) s", next(s for _, s in lines if s.startswith("up in "))).group(1))
    marks["kits"] = marks["poc up"] - up_in
    server = _server_log(lines, demo_log)
    job_marks = {}
    if server is not None:  # the server's own clock, aligned by the submission line's arrival (same machine)
        stamps = []
        for raw in server.read_text(errors="replace").splitlines():
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (\S+) - \w+ - (.*)", raw)
            if m:
                stamps.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(3)))
        t0 = datetime.combine(stamps[0][0].date(), start_wall.time())
        rel = lambda when: (when - t0).total_seconds()  # noqa: E731

        def last(pat):
            found = [rel(w) for w, s in stamps if re.search(pat, s)]
            return found[-1] if found else None

        job_marks = {
            "job start": next(rel(w) for w, s in stamps if "Sending task train" in s),
            "rounds": last(r"\[progress\] round \d+/\d+:"),
            "final val": last(r"\[progress\] (final global model|after \d+ fine-tuning)"),
            "alone": last(r"\[progress\] trained alone"),
            "cross-site": last(r"\[progress\] cross-site"),
            "audit": last(r"\[progress\] audit "),
        }
    marks.update({k: v for k, v in job_marks.items() if v is not None})
    marks["job end"] = first(r"^job \S+: FINISHED")
    marks["download"] = first(r"^report:")
    marks["poc down"] = first(r"^consortium stopped")
    out, prev = {}, 0.0
    for name in PHASES:
        if marks.get(name) is not None:
            out[name], prev = marks[name] - prev, marks[name]
    return out, total, loads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--keep", help="folder for the runs (default: a temp folder, removed unless --keep)")
    ap.add_argument("--fresh-data", action="store_true", help="generate the data in the temp copy (data phase)")
    ap.add_argument("--log", nargs="*", help="analyse these saved outputs instead of running")
    args = ap.parse_args()
    logs = [Path(p) for p in args.log or []]
    if not logs:
        root = Path(args.keep or tempfile.mkdtemp(prefix="demo_phases_")).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "site_configs").exists():
            shutil.copytree(REPO / "site_configs", root / "site_configs")
            if not args.fresh_data:  # the copy's ../data/{site} is this folder's data/: the repository's data
                (root / "data").symlink_to(REPO / "data")
        logs = [run_demo(root, n, sys.executable) for n in range(1, args.runs + 1)]
        print(f"outputs: {root}")
    results = [(log, *phases(log)) for log in logs]
    print("\n| phase | " + " | ".join(log.stem for log, *_ in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in PHASES:
        print(f"| {name} | " + " | ".join(f"{r[1].get(name, float('nan')):.1f}" for r in results) + " |")
    print("| **total** | " + " | ".join(f"**{r[2]:.1f}**" for r in results) + " |")
    for log, _, _, loads in results:
        print(f"{log.stem}: " + " / ".join(loads))


if __name__ == "__main__":
    main()
