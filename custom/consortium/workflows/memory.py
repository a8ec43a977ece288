"""The server's memory per round: resident set size in the run record, and, on request, where Python memory grew.

Every round's entry gets `server_rss_mb` (the job process's RSS after the round's aggregate and checkpoint), so
a long run's growth is visible in metrics.json without an outside tool. With the environment variable
CONSORTIUM_TRACEMALLOC=N set in the server's environment (N >= 1: every N rounds), the job process also traces
Python allocations (tracemalloc) and appends, every N rounds, the 15 allocation sites that grew most since
the first round to <run dir>/tracemalloc.txt: memory that grows there is held by Python objects; growth of
RSS that does not show there is native (SEAL's memory pool, the C allocator's fragmentation, torch).

After each round the probe also asks glibc to give freed heap pages back to the system (malloc_trim): a round
allocates and frees hundreds of MB of ciphertext and checkpoint bytes in FLARE's many threads, and glibc keeps
what each thread's arena freed. `server_rss_mb` is the RSS after that, `server_rss_untrimmed_mb` before it, so
a long run shows how much of its growth was memory the allocator held but nobody used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
import tracemalloc

import psutil

from consortium.runrecord import Round

ENV = "CONSORTIUM_TRACEMALLOC"
FILE = "tracemalloc.txt"
TOP = 15


def _malloc_trim():
    """glibc's malloc_trim(0), or None where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def _every() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    try:
        every = int(raw)
    except ValueError:
        every = 0
    if every < 1:
        raise ValueError(f"{ENV}={raw!r}: expected a whole number of rounds >= 1 (or unset it)")
    return every


class MemoryProbe:
    """One per server job process; sample() after each round returns what goes into the round's entry."""

    def __init__(self) -> None:
        self.every = _every()
        self._process = psutil.Process()
        self._first: tracemalloc.Snapshot | None = None
        self._trim = _malloc_trim()
        if self.every and not tracemalloc.is_tracing():
            tracemalloc.start(12)

    def sample(self, round_number: int, run_dir: str) -> dict:
        before = self._process.memory_info().rss / 2**20
        if self._trim is not None:
            self._trim(0)
        rss = self._process.memory_info().rss / 2**20
        if self.every:
            self._trace(round_number, run_dir, rss)
        return {Round.SERVER_RSS_MB: round(rss, 1), Round.SERVER_RSS_UNTRIMMED_MB: round(before, 1)}

    def _trace(self, round_number: int, run_dir: str, rss: float) -> None:
        ignored = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib.*")]
        snapshot = tracemalloc.take_snapshot().filter_traces(ignored)
        if self._first is None:
            self._first = snapshot
            return
        if (round_number + 1) % self.every:
            return
        traced, peak = tracemalloc.get_traced_memory()
        lines = [
            f"== round {round_number + 1}, {time.strftime('%H:%M:%S')}: RSS {rss:.0f} MB, traced by Python "
            f"{traced / 2**20:.1f} MB (peak {peak / 2**20:.1f} MB); growth since round 1 by allocation site:"
        ]
        for stat in snapshot.compare_to(self._first, "traceback")[:TOP]:
            frames = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno}" for f in list(stat.traceback)[::-1][:4])
            lines.append(f"{stat.size_diff / 2**20:+9.2f} MB {stat.count_diff:+8d} blocks  {frames}")
        with open(os.path.join(run_dir, FILE), "a") as f:
            f.write("\n".join(lines) + "\n")
