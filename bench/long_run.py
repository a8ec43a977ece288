"""Table: memory of the server and of one hospital every 50 rounds of a long job on a real local consortium.

    python bench/long_run.py [--rounds 300] [--every 50] [--job fedavg] [--tracemalloc]

Three generated hospitals (32 px), HE on by default. Memory is the resident set (RSS) summed over each kit's
processes (the parent and the job process), and the server's job process alone as the workflow records it after
each round (`server_rss_mb` in metrics.json, after glibc's malloc_trim; before it in brackets). Growth after
warm-up (the first sample) is printed per column. --tracemalloc traces Python allocations in the server's job process
(CONSORTIUM_TRACEMALLOC, see custom/consortium/workflows/memory.py) and prints, every --every rounds, the
allocation sites that grew most: growth that shows there is held by Python objects, RSS growth that does not is
native memory."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from faults import Consortium

from consortium.deploy.poc import kit_processes


def rss_mb(c: Consortium, kit: str) -> float:
    total = 0
    for proc in kit_processes(c.paths, c.kit(kit)):
        try:
            total += proc.memory_info().rss
        except Exception:  # a process that just ended
            pass
    return total / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--job", default="fedavg")
    p.add_argument("--tracemalloc", action="store_true", help="trace Python allocations in the server job process")
    args = p.parse_args()
    if args.tracemalloc:  # inherited by the server kit's processes that `poc up` starts
        os.environ["CONSORTIUM_TRACEMALLOC"] = str(args.every)
    rows, traced = [], ""
    with tempfile.TemporaryDirectory() as tmp:
        c = Consortium(Path(tmp))
        c("poc", "up")
        try:
            out = c("submit", args.job, "--rounds", str(args.rounds), "--round-timeout", "60", "--no-wait")
            job = out.stdout.split(" as ")[1].split()[0].rstrip(",")
            start = time.time()
            for n in range(args.every, args.rounds + 1, args.every):
                history = c.history(job, n)
                seconds = sum(r["seconds"] for r in history["rounds"][n - args.every : n]) / args.every
                job_rss = history["rounds"][n - 1].get("server_rss_mb", float("nan"))
                untrimmed = history["rounds"][n - 1].get("server_rss_untrimmed_mb", float("nan"))
                rows.append((n, time.time() - start, seconds, rss_mb(c, "localhost"), job_rss, rss_mb(c, "site-a"),
                             untrimmed))  # fmt: skip
                print(f"round {n}: server {rows[-1][3]:.0f} MB (job process {job_rss:.0f}), site-a "
                      f"{rows[-1][5]:.0f} MB", flush=True)  # fmt: skip
            status, _ = c.wait_done(job, args.job)
            trace = c.kit("localhost") / job / "tracemalloc.txt"
            traced = trace.read_text() if trace.is_file() else ""
        finally:
            c("poc", "down", check=False)
    print(f"\n{args.rounds} rounds of {args.job} (3 sites, 32 px generated), final status {status}")
    print("| round | elapsed s | s per round (last block) | server RSS MB | server job process MB (before trim) "
          "| site-a RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n, elapsed, per_round, server, job_rss, site, untrimmed in rows:
        job = f"{job_rss:.0f} ({untrimmed:.0f})"
        print(f"| {n} | {elapsed:.0f} | {per_round:.2f} | {server:.0f} | {job} | {site:.0f} |")
    first, last = rows[0], rows[-1]
    print(f"growth after round {first[0]}: server {last[3] - first[3]:+.0f} MB (job process "
          f"{last[4] - first[4]:+.0f} MB), site-a {last[5] - first[5]:+.0f} MB")  # fmt: skip
    if traced:
        print("\nPython allocations in the server's job process (tracemalloc), growth since round 1:\n" + traced)


if __name__ == "__main__":
    main()
