"""The trail file: JSON lines, each record linked to the one before by its hash, appended under a lock and fsync'd.

A record's `hash` is SHA-256 over the canonical JSON (sorted keys, no spaces) of the record without `hash`;
its `prev_hash` is the previous record's hash (GENESIS for the first) and `seq` counts records from 0. Editing
a record breaks its hash; removing or inserting one breaks the next record's link (and `seq` tells which of the
two happened). Removing records at the end leaves a valid shorter chain: compare the head hash with one kept
elsewhere (the run record keeps the server's head at the end of each job; `consortium audit verify --head`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
SEQ, PREV, HASH = "seq", "prev_hash", "hash"
_TAIL_CHUNK = 8192


class TrailError(ValueError):
    """The trail cannot be read or extended; the message names the file and what to do."""


def canonical(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def _last_line(fd: int) -> bytes:
    end = os.lseek(fd, 0, os.SEEK_END)
    data, pos = b"", end
    while pos > 0 and data.count(b"\n") < 2:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
    lines = data.rstrip(b"\n").split(b"\n")
    return lines[-1] if lines and lines[-1] else b""


def append(path: str | Path, entry: dict) -> dict:
    """Append `entry` as the next record (adds seq, prev_hash, hash) and return it; the write is on disk
    (fsync) when this returns. Safe against other processes appending to the same file (flock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = _last_line(fd)
        seq, prev = 0, GENESIS
        if last:
            try:
                record = json.loads(last)
                seq, prev = int(record[SEQ]) + 1, str(record[HASH])
            except (ValueError, KeyError, TypeError):
                raise TrailError(
                    f"{path}: its last line is not a trail record, so no record can be linked to it. Run "
                    f"`consortium audit verify {path}`, keep the file as evidence (move it aside) and restart: "
                    "a new trail then begins"
                ) from None
        record = {**entry, SEQ: seq, PREV: prev}
        record[HASH] = record_hash(record)
        os.write(fd, json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
        os.fsync(fd)
        return record
    finally:
        os.close(fd)  # closing releases the lock


def read_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TrailError(f"{path}: no trail file there (the server's and each site's trail is "
                         "<workspace>/consortium_trail/exchanges.jsonl)")  # fmt: skip
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def read(path: str | Path) -> list[dict]:
    """Every record of a trail that verifies; a TrailError names the first broken line otherwise."""
    verdict = verify(path)
    if verdict.problem:
        raise TrailError(f"{path}: {verdict.problem}")
    return verdict.records


@dataclass
class Verdict:
    records: list[dict]  # the records before the first problem
    problem: str | None = None  # "line N: what is wrong", None if the whole chain holds
    line: int | None = None  # 1-based line of the first broken record

    @property
    def head(self) -> str:
        return self.records[-1][HASH] if self.records else GENESIS


def _link_problem(record: dict, expected_seq: int, line: int) -> str:
    seq = record.get(SEQ)
    if isinstance(seq, int) and seq > expected_seq:
        what = f"{seq - expected_seq} record(s) removed before it (seq jumps from {expected_seq - 1} to {seq})"
    elif isinstance(seq, int) and seq < expected_seq:
        what = f"a record inserted at or just before this line (seq {seq} comes after {expected_seq - 1})"
    else:
        what = f"line {line - 1} was replaced by a record with a valid hash of its own, or edited and re-hashed"
    return f"its prev_hash does not match the hash of the record before it: {what}"


def verify(path: str | Path, *, head: str | None = None) -> Verdict:
    """Check every record's hash and link in order; stop at the first broken one. `head`: a head hash kept
    elsewhere, which must be the hash of some record (else records were removed at the end)."""
    records: list[dict] = []
    prev, expected_seq = GENESIS, 0
    for n, line in enumerate(read_lines(path), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            return Verdict(records, f"line {n}: not a JSON record (edited by hand, or a write cut short)", n)
        if not isinstance(record, dict) or not {SEQ, PREV, HASH} <= set(record):
            return Verdict(records, f"line {n}: not a trail record (needs {SEQ}, {PREV} and {HASH})", n)
        actual = record_hash(record)
        if record[HASH] != actual:
            return Verdict(
                records,
                f"line {n} (seq {record.get(SEQ)}): edited: its content hashes to {actual[:16]}..., "
                f"not to the hash it records, {str(record[HASH])[:16]}...",
                n,
            )
        if record[PREV] != prev:
            return Verdict(records, f"line {n} (seq {record.get(SEQ)}): {_link_problem(record, expected_seq, n)}", n)
        if record[SEQ] != expected_seq:
            return Verdict(records, f"line {n}: seq {record[SEQ]}, expected {expected_seq}", n)
        records.append(record)
        prev, expected_seq = record[HASH], expected_seq + 1
    if head and head not in {r[HASH] for r in records}:
        return Verdict(records, f"head {head[:16]}... is not in the trail: records removed at its end, or "
                                "another participant's trail", len(records) + 1)  # fmt: skip
    return Verdict(records)
