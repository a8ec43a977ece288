"""Table: what each fault costs a real local consortium (server + 3 generated hospitals, mTLS on loopback).

    python bench/faults.py [--rounds 8] [--round-timeout 15]

Faults: none (reference); hospital-c's train task raising (its device set to a GPU this machine lacks); hospital-c's
processes killed by PID after round 2; the server's processes killed after round 2, started again from its kit and
the job resumed with `consortium submit --resume`. Columns: what happened, rounds in which not every site
contributed (or that ran twice), seconds against the reference, final Dice of the sites every run kept."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ helpers: the tiny generated hospitals

from consortium.config import load_site_configs  # noqa: E402
from consortium.data.synth import generate_site  # noqa: E402
from consortium.deploy.poc import PocPaths, kill_kit, read_state, start_kit  # noqa: E402
from tests.conftest import TINY_A, TINY_B, write_site_configs  # noqa: E402
from tests.system.conftest import write_consortium  # noqa: E402

TINY_C = TINY_B.replace("org: site_b", "org: site_c").replace("Beta Clinic", "Gamma Hospital")


def _stop_on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Consortium:
    """A local consortium for a bench. A stop signal (SIGTERM, SIGHUP) raises KeyboardInterrupt like Ctrl-C, so the
    bench's `finally: c("poc", "down")` still stops the server and the sites (it left them running before)."""

    def __init__(self, tmp: Path, site_c: str = TINY_C):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _stop_on_term)
        folder = write_site_configs(tmp / "site_configs", {"site-a": TINY_A, "site-b": TINY_B, "site-c": site_c})
        for cfg in load_site_configs(folder).values():
            generate_site(cfg, seed=0, size=32)
        (tmp / "home").mkdir()
        self.env = {**os.environ, "HOME": str(tmp / "home")}
        consortium = write_consortium(tmp / "consortium.yaml")
        self.base = [sys.executable, "-m", "consortium.cli", "--site-configs", str(folder), "--jobs",
                     str(ROOT / "jobs"), "--consortium", str(consortium), "--workspace", str(tmp / "ws"),
                     "--runs", str(tmp / "runs")]  # fmt: skip
        self.paths, self.tmp = PocPaths(tmp / "ws" / "poc-consortium"), tmp

    def __call__(self, *args, check=True):
        proc = subprocess.run(self.base + list(args), env=self.env, capture_output=True, text=True, timeout=1800)
        if check and proc.returncode != 0:
            raise RuntimeError(f"consortium {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def kit(self, name: str) -> Path:
        return self.paths.prod(read_state(self.paths)["project"]) / name

    def history(self, job: str, rounds: int) -> dict:
        path = self.kit("localhost") / job / "metrics.json"
        while True:
            try:
                history = json.loads(path.read_text())
                if len(history["rounds"]) >= rounds:
                    return history
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)

    def kill(self, name: str) -> None:
        kill_kit(self.paths, self.kit(name))

    def restart(self, name: str) -> None:
        start_kit(self.paths, self.kit(name))

    def wait_done(self, job: str, name: str = "fedavg") -> tuple[str, dict]:
        """The finished job's status and its downloaded metrics.json (`name`: the job definition it ran)."""
        while True:
            line = next((ln for ln in self("status", check=False).stdout.splitlines() if job in ln), "")
            if "FINISHED" in line:
                self("download", job)
                return line.split()[-1], json.loads((self.tmp / "runs" / name / "metrics.json").read_text())
            time.sleep(2)


def submit(c: Consortium, args, *extra) -> str:
    out = c("submit", "fedavg", "--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout), *extra)
    return out.stdout.split(" as ")[1].split()[0].rstrip(",")


def row(name: str, happened: str, history: dict, seconds: float) -> dict:
    partial = [r for r in history["rounds"] if len(r.get("contributed", [])) < len(r.get("targets", []))]
    final = {s: m.get("val_score") for s, m in history.get("final", {}).items()}
    return {"fault": name, "happened": happened, "partial_rounds": len(partial), "seconds": seconds, "final": final}


def run_faults(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        c = Consortium(Path(tmp))
        c("poc", "up")
        try:
            for name, fault in (("none", None), ("site-c killed after round 2", "site-c")):
                start = time.time()
                job = submit(c, args, "--no-wait")
                if fault:
                    c.history(job, 2)
                    c.kill(fault)
                status, history = c.wait_done(job)
                rows.append(row(name, status, history, time.time() - start))

            start = time.time()
            job = submit(c, args, "--no-wait")
            c.history(job, 2)
            c.kill("localhost")
            c.restart("localhost")
            while "site-a, site-b" not in c("status", check=False).stdout:
                time.sleep(2)
            c("submit", "fedavg", "--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout), "--resume")
            history = json.loads((c.tmp / "runs" / "fedavg" / "metrics.json").read_text())
            happened = f"resumed after round {history['resumed'][0]['after_round']}: {status_of(c)}"
            rows.append(row("server killed after round 2, resumed", happened, history, time.time() - start))
        finally:
            c("poc", "down", check=False)
    with tempfile.TemporaryDirectory() as tmp:
        c = Consortium(Path(tmp), TINY_C + "resources:\n  device: cuda\n")
        start = time.time()
        c("simulate", "fedavg", "--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout))
        history = json.loads((c.tmp / "runs" / "fedavg" / "metrics.json").read_text())
        rows.append(row("site-c's train task raises (simulator)", "COMPLETED", history, time.time() - start))
    return rows


def status_of(c: Consortium) -> str:
    lines = [ln for ln in c("status", check=False).stdout.splitlines() if ln.startswith("job ")]
    return lines[-1].split()[-1] if lines else "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--round-timeout", type=int, default=15)
    args = p.parse_args()
    rows = run_faults(args)
    ref = rows[0]
    print(f"\n{args.rounds} rounds, round_timeout {args.round_timeout} s, 3 sites (32 px generated), HE on")
    print("| fault | what happened | rounds not all sites contributed | seconds (vs none) | final Dice a / b |")
    print("|---|---|---|---|---|")
    for r in rows:
        dice = " / ".join(f"{r['final'].get(s, float('nan')):.3f}" for s in ("site-a", "site-b"))
        ref_dice = " / ".join(f"{ref['final'].get(s, float('nan')):.3f}" for s in ("site-a", "site-b"))
        print(
            f"| {r['fault']} | {r['happened']} | {r['partial_rounds']} | {r['seconds']:.0f} "
            f"({r['seconds'] - ref['seconds']:+.0f}) | {dice} (none: {ref_dice}) |"
        )


if __name__ == "__main__":
    main()
