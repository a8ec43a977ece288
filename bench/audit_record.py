"""Table: where one audit-trail record's time goes for an HE-sized payload, outside FLARE.

    python bench/audit_record.py [--mb 12.8] [--chunk-kb 256] [--repeats 7] [--threads 1,2]

The recorder's work per record (audit_trail/recorder.py) is the payload's digest (digest.py: SHA-256 of every
ciphertext chunk, then of the canonical encoding around them) and one append (chain.py: the trail's new part
verified, the record's JSON and hash, write, one fsync). This times each part on a payload of --mb megabytes of
random "ciphertext" chunks (the demo UNet's HE update is 12.8 MB), fresh objects every time (the receiving end:
no chunk cache), with the leaves hashed on each of --threads threads, in alternation, median over --repeats:
wall and CPU seconds of the digest, the pure SHA-256 of the same bytes in one loop (the floor any SHA-256 of the
payload pays), and the append. The trail's rounds (bench/audit_cost.py) pay about two of these per site and
round, and at the server one broadcast (its chunks hashed once for all sites) and one per site received.
Record `uptime` beside the table: wall times grow with the machine's load, CPU times much less.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def payload(mb: float, chunk_kb: int):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey

    from consortium.he.wire import PAYLOAD_KEY

    n = max(1, round(mb * 1e6 / (chunk_kb * 1024)))
    chunks = [os.urandom(chunk_kb * 1024) for _ in range(n)]
    data = {PAYLOAD_KEY: {"chunks": chunks, "weight": 3.0, "layout": {"names": [f"l{i}" for i in range(40)]}}}
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 12, MetaKey.INITIAL_METRICS: {"val_score": 0.5}}
    return DXO(DataKind.WEIGHTS, data=data, meta=meta).to_shareable(), chunks


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    from consortium.audit_trail import chain, digest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=12.8)
    p.add_argument("--chunk-kb", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", default="1,2")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    results: dict[str, list[tuple[float, float]]] = {}
    entry = {"participant": "site-a", "job": "x" * 36, "round": 1, "task": "train", "task_id": "y" * 36,
             "direction": "sent", "peer": "server", "kind": "WEIGHTS", "rc": "OK", "bytes": 12_845_678,
             "sha256": "a" * 64, "he": True, "dp_epsilon": None}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trail = Path(tmp) / "exchanges.jsonl"
        for _ in range(200):  # a trail of some length: what verifying only its new part saves
            chain.append(trail, entry)
        for _ in range(args.repeats):
            for t in threads:
                shareable, chunks = payload(args.mb, args.chunk_kb)  # fresh objects: no chunk cache
                digest.LEAF_THREADS = t
                results.setdefault(f"digest, leaves on {t} thread(s)", []).append(
                    timed(lambda s=shareable: digest.payload_digest(s)))  # fmt: skip
            _, chunks = payload(args.mb, args.chunk_kb)
            results.setdefault("SHA-256 of the same bytes, one loop (floor)", []).append(
                timed(lambda c=chunks: [hashlib.sha256(x).digest() for x in c]))  # fmt: skip
            results.setdefault("append (verify new part, JSON, hash, write, fsync)", []).append(
                timed(lambda: chain.append(trail, entry)))  # fmt: skip
    print(f"\n{args.mb} MB payload in {args.chunk_kb} KiB chunks, median of {args.repeats}, {os.cpu_count()} cores\n")
    print("| part of one record | wall ms | CPU ms |")
    print("|---|---|---|")
    for name, values in results.items():
        wall = statistics.median(w for w, _ in values) * 1000
        cpu = statistics.median(c for _, c in values) * 1000
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
