"""Table: memory of the server and of one hospital every 50 rounds of a long job on a real local consortium.

    python bench/long_run.py [--rounds 300] [--every 50] [--job fedavg] [--tracemalloc]

Three generated hospitals (32 px), HE on by default. Memory is the resident set (RSS) summed over each kit's
processes (the parent and the job process), and the server's job process alone as the workflow records it after
each round (`server_rss_mb` in metrics.json, after glibc's malloc_trim; before it in brackets). One sample at a
round's end swings by 100-300 MB with what that round left in flight (2026-12-07), so the table also gives the
job process's minimum, median and maximum over every round of the block: a leak raises the minimum and the
median block after block, a swing does not. Growth after warm-up (the first block) is printed per column.
--tracemalloc traces Python allocations in the server's job process (CONSORTIUM_TRACEMALLOC, see
custom/consortium/workflows/memory.py) and prints, every --every rounds, the allocation sites that grew most:
growth that shows there is held by Python objects, RSS growth that does not is native memory."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from faults import Consortium

from consortium.deploy.poc import kit_processes


class Row(NamedTuple):
    round: int
    elapsed: float
    per_round: float  # mean seconds per round over the block
    server: float  # RSS of the server kit's processes now
    site: float  # RSS of site-a's processes now
    job: list  # the server job process's RSS after each round of the block (after malloc_trim)
    untrimmed: float  # the same before the trim, last round of the block


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
                block = history["rounds"][n - args.every : n]
                seconds = sum(r["seconds"] for r in block) / args.every
                rows.append(Row(n, time.time() - start, seconds, rss_mb(c, "localhost"), rss_mb(c, "site-a"),
                                [r.get("server_rss_mb", float("nan")) for r in block],
                                block[-1].get("server_rss_untrimmed_mb", float("nan"))))  # fmt: skip
                row = rows[-1]
                print(f"round {n}: server {row.server:.0f} MB (job process {row.job[-1]:.0f}, block min "
                      f"{min(row.job):.0f} median {statistics.median(row.job):.0f} max {max(row.job):.0f}), "
                      f"site-a {row.site:.0f} MB", flush=True)  # fmt: skip
            status, metrics = c.wait_done(job, args.job)
            job_rss_per_round = [r.get("server_rss_mb", float("nan")) for r in metrics["rounds"]]
            trace = c.kit("localhost") / job / "tracemalloc.txt"
            traced = trace.read_text() if trace.is_file() else ""
        finally:
            c("poc", "down", check=False)
    print(f"\n{args.rounds} rounds of {args.job} (3 sites, 32 px generated), final status {status}")
    print("| round | elapsed s | s per round (last block) | server RSS MB | server job process MB (before trim) "
          "| job process over the block: min / median / max MB | site-a RSS MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        spread = f"{min(r.job):.0f} / {statistics.median(r.job):.0f} / {max(r.job):.0f}"
        print(f"| {r.round} | {r.elapsed:.0f} | {r.per_round:.2f} | {r.server:.0f} | {r.job[-1]:.0f} "
              f"({r.untrimmed:.0f}) | {spread} | {r.site:.0f} |")  # fmt: skip
    first, last = rows[0], rows[-1]
    print(f"growth after round {first.round}: server {last.server - first.server:+.0f} MB, job process at the "
          f"round {last.job[-1] - first.job[-1]:+.0f} MB, its block minimum {min(last.job) - min(first.job):+.0f} "
          f"MB and median {statistics.median(last.job) - statistics.median(first.job):+.0f} MB, site-a "
          f"{last.site - first.site:+.0f} MB")  # fmt: skip
    after = [(n, mb) for n, mb in enumerate(job_rss_per_round) if n >= args.every]
    if len(after) >= 2:
        trend = statistics.linear_regression([n for n, _ in after], [mb for _, mb in after]).slope * 100
        print(
            f"trend after round {args.every}: the job process's RSS after each round grows {trend:+.1f} MB per "
            f"100 rounds (least squares over {len(after)} rounds; a leak of 1 MB a round would show +100)"
        )
    if traced:
        print("\nPython allocations in the server's job process (tracemalloc), growth since round 1:\n" + traced)


if __name__ == "__main__":
    main()
