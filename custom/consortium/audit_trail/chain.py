"""The trail file: JSON lines, each record linked to the one before by its hash, appended under a lock and fsync'd.

A record's `hash` is SHA-256 over the canonical JSON (sorted keys, no spaces) of the record without `hash`;
its `prev_hash` is the previous record's hash (GENESIS for the first) and `seq` counts records from 0. Editing
a record breaks its hash; removing or inserting one breaks the next record's link (and `seq` tells which of the
two happened). Removing records at the end leaves a valid shorter chain: compare the head hash with one kept
elsewhere (the run record keeps the server's head at the end of each job; `consortium audit verify --head`).

No record is appended to a trail that does not verify: a process verifies the whole file before its first append
and, after that, what other processes appended since; it verifies the whole file again if the file is not the one
it left (replaced, shorter, its last record changed, or rewritten at the same size). A broken trail thus stops
the participant's exchanges instead of being continued (a TrailError; the recorder fails the task). An edit in
the middle of the file together with another process's append is found by `consortium audit verify` and by the
next job process, which verifies the whole file again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
SEQ, PREV, HASH = "seq", "prev_hash", "hash"


class TrailError(ValueError):
    """The trail cannot be read or extended; the message names the file and what to do."""


def canonical(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != HASH}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


@dataclass(frozen=True)
class _Verified:
    """How far this process has verified a trail file: its first `end` bytes, `lines` records ending in `last`."""

    file: tuple[int, int]  # (st_dev, st_ino): a file moved aside and replaced is verified afresh
    end: int
    mtime: int  # st_mtime_ns when this process last wrote or read it: same size, other time: edited, all again
    lines: int
    last: bytes  # the last record's line, without its line end
    head: str
    seq: int  # the next record's seq


_verified: dict[str, _Verified] = {}
_verified_lock = threading.Lock()


def _fix(path: Path) -> str:
    return (f"Run `consortium audit verify {path}`, keep the file as evidence (move it aside) and restart the job: a "
            "new trail then begins")  # fmt: skip


def _extend(path: Path, fd: int, state: _Verified | None) -> _Verified:
    """Verify what the file holds beyond `state` (all of it if None, or if it is not the file `state` verified)
    and return the new state; a TrailError naming the first broken line if it does not verify."""
    st = os.fstat(fd)
    file = (st.st_dev, st.st_ino)
    if state is None or state.file != file or state.end > st.st_size:
        state = None
    elif state.end == st.st_size and state.mtime != st.st_mtime_ns:
        state = None  # written since, yet no longer: edited in place
    elif state.last and os.pread(fd, len(state.last) + 1, state.end - len(state.last) - 1) != state.last + b"\n":
        state = None  # the last record this process saw is no longer there
    if state is None:
        state = _Verified(file, 0, 0, 0, b"", GENESIS, 0)
    data = os.pread(fd, st.st_size - state.end, state.end) if st.st_size > state.end else b""
    total = state.lines + data.count(b"\n")  # lines verified and lines to verify
    if data and not data.endswith(b"\n"):
        problem = f"line {total + 1} has no line end: a write cut short, or an edit"
        raise TrailError(f"{path}: its last line is not a trail record ({problem}), so no record can be added to "
                         f"it. {_fix(path)}")  # fmt: skip
    last, head, seq, n = state.last, state.head, state.seq, state.lines
    for raw in data.split(b"\n")[:-1]:
        n += 1
        record, problem = _check(raw.decode("utf-8", errors="replace"), n, head, seq)
        if problem:
            what = "its last line is not a trail record" if n == total else "it does not verify"
            raise TrailError(f"{path}: {what} ({problem}), so no record can be added to it. {_fix(path)}")
        last, head, seq = raw, record[HASH], seq + 1
    return _Verified(file, st.st_size, st.st_mtime_ns, n, last, head, seq)


def _caught_up(path: Path, fd: int) -> _Verified:
    """This process's verified state of the trail at `path`, extended over what was appended since (the caller
    holds the file's lock)."""
    with _verified_lock:
        state = _verified.get(str(path.resolve()))
    return _extend(path, fd, state)


def check(path: str | Path) -> None:
    """Raise a TrailError naming the first broken line unless the trail verifies (or does not exist yet), as
    `append` would before its next record; the state is kept, so the next append reads only what is new."""
    path = Path(path)
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        state = _caught_up(path, fd)
        with _verified_lock:
            _verified[str(path.resolve())] = state
    finally:
        os.close(fd)


def append(path: str | Path, entry: dict) -> dict:
    """Append `entry` as the next record (adds seq, prev_hash, hash) and return it; the write is on disk
    (fsync) when this returns. Safe against other processes appending to the same file (flock). A trail that
    does not verify is not extended: TrailError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        key = str(path.resolve())
        state = _caught_up(path, fd)
        record = {**entry, SEQ: state.seq, PREV: state.head}
        record[HASH] = record_hash(record)
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode()
        os.write(fd, line + b"\n")
        os.fsync(fd)
        mtime = os.fstat(fd).st_mtime_ns
        with _verified_lock:
            _verified[key] = _Verified(state.file, state.end + len(line) + 1, mtime, state.lines + 1, line,
                                       record[HASH], state.seq + 1)  # fmt: skip
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


def _check(line: str, n: int, prev: str, expected_seq: int) -> tuple[dict | None, str | None]:
    """Line `n` as the record after one with hash `prev`: (record, None), or (None, "line N: what is wrong")."""
    try:
        record = json.loads(line)
    except ValueError:
        return None, f"line {n}: not a JSON record (edited by hand, or a write cut short)"
    if not isinstance(record, dict) or not {SEQ, PREV, HASH} <= set(record):
        return None, f"line {n}: not a trail record (needs {SEQ}, {PREV} and {HASH})"
    actual = record_hash(record)
    if record[HASH] != actual:
        return None, (f"line {n} (seq {record.get(SEQ)}): edited: its content hashes to {actual[:16]}..., "
                      f"not to the hash it records, {str(record[HASH])[:16]}...")  # fmt: skip
    if record[PREV] != prev:
        return None, f"line {n} (seq {record.get(SEQ)}): {_link_problem(record, expected_seq, n)}"
    if record[SEQ] != expected_seq:
        return None, f"line {n}: seq {record[SEQ]}, expected {expected_seq}"
    return record, None


def verify(path: str | Path, *, head: str | None = None) -> Verdict:
    """Check every record's hash and link in order; stop at the first broken one. `head`: a head hash kept
    elsewhere, which must be the hash of some record (else records were removed at the end)."""
    records: list[dict] = []
    prev, expected_seq = GENESIS, 0
    for n, line in enumerate(read_lines(path), start=1):
        record, problem = _check(line, n, prev, expected_seq)
        if problem:
            return Verdict(records, problem, n)
        records.append(record)
        prev, expected_seq = record[HASH], expected_seq + 1
    if head and head not in {r[HASH] for r in records}:
        return Verdict(records, f"head {head[:16]}... is not in the trail: records removed at its end, or "
                                "another participant's trail", len(records) + 1)  # fmt: skip
    return Verdict(records)
