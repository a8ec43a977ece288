"""SHA-256 of a task payload (a Shareable's body: its DXO) over a canonical encoding both ends compute alike.

The bytes FLARE puts on the wire (FOBS/msgpack, chunked streaming) are not visible to a component and differ
in framing between sender and receiver, so the hash covers the payload's content instead: every value of the
Shareable except its headers (task id, return code, cookies, peer context: routing, rewritten on the way).
The encoding is typed and length-prefixed: dict keys sorted, lists and tuples alike (msgpack turns tuples into
lists), numpy arrays as dtype + shape + raw bytes (C order), numpy scalars as the Python number they hold,
sets by their sorted parts, any other value FLARE can send by its FOBS bytes;
a `bytes` value of LEAF_BYTES or more (HE ciphertext chunks) enters as its own SHA-256 and length, so the
server, which sends one broadcast model's very same (immutable) chunk objects to every site, hashes each
chunk once (a small identity cache that holds the objects it remembers). With LEAF_THREADS > 1 the leaves of one
payload are hashed on that many threads before the walk (hashlib lets go of the GIL for large buffers); the
encoding, and so every hash, is the same as hashed in order. `bytes` in a record is the payload's size: its raw
bytes plus a few bytes per value.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from nvflare.apis.shareable import ReservedHeaderKey

from consortium.he.wire import is_encrypted

HEADERS = ReservedHeaderKey.HEADERS
DXO_KEY, DXO_KIND, DXO_DATA = "DXO", "kind", "data"  # nvflare.apis.dxo's own (private) key names
LEAF_BYTES = 1 << 16
_CACHE_SIZE = 256  # leaves remembered (a broadcast model has a few dozen chunks)
_leaves: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # id -> (the object itself, its SHA-256)
_leaves_lock = threading.Lock()
# Threads that hash one payload's leaves (1: in the walk, in order). 1: on this 2-core shared machine, 2 threads
# were no faster in wall time and cost ~1 ms more CPU per 12.8 MB (bench/audit_record.py, docs/results.md); a
# server with idle cores may set min(4, os.cpu_count()) (not measured here).
LEAF_THREADS = 1
_pool: ThreadPoolExecutor | None = None


def _leaf_digest(v: bytes) -> bytes:
    """SHA-256 of an immutable bytes object, remembered by identity while the cache holds the object (so its id
    cannot be reused by another object meanwhile)."""
    with _leaves_lock:
        hit = _leaves.get(id(v))
        if hit is not None and hit[0] is v:
            _leaves.move_to_end(id(v))
            return hit[1]
    digest = hashlib.sha256(v).digest()
    with _leaves_lock:
        _leaves[id(v)] = (v, digest)
        while len(_leaves) > _CACHE_SIZE:
            _leaves.popitem(last=False)
    return digest


@dataclass(frozen=True)
class Digest:
    sha256: str
    bytes: int
    kind: str  # the DXO's data kind (WEIGHTS, METRICS, ...), or "none" for a payload without a DXO
    he: bool  # the payload carries CKKS ciphertext (consortium.he.wire)


def _leaf(v) -> bytes:
    return _leaf_digest(v) if isinstance(v, bytes) else hashlib.sha256(memoryview(v).cast("B")).digest()


def _collect_leaves(v, out: list) -> None:
    """The large bytes values in `v`'s dicts, lists and tuples (where the walk meets them as leaves)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        if memoryview(v).nbytes >= LEAF_BYTES:
            out.append(v)
    elif isinstance(v, dict):
        for x in v.values():
            _collect_leaves(x, out)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _collect_leaves(x, out)


def _hash_leaves(body) -> dict[int, bytes]:
    """id -> SHA-256 of every large bytes value in `body`, hashed on LEAF_THREADS threads (the objects stay
    alive in `body` while the walk looks their digests up, so their ids are theirs)."""
    global _pool
    leaves: list = []
    _collect_leaves(body, leaves)
    if len(leaves) < 2 or LEAF_THREADS < 2:
        return {}
    with _leaves_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=LEAF_THREADS, thread_name_prefix="trail-digest")
        pool = _pool
    return {id(v): d for v, d in zip(leaves, pool.map(_leaf, leaves), strict=True)}


class _Hasher:
    def __init__(self, leaves: dict[int, bytes] | None = None) -> None:
        self.h = hashlib.sha256()
        self.size = 0
        self.leaves = leaves or {}  # id -> SHA-256 of the large bytes values, hashed beforehand

    def put(self, tag: bytes, payload: bytes | memoryview = b"") -> None:
        self.h.update(tag + struct.pack("<Q", len(payload)))
        self.h.update(payload)
        self.size += len(tag) + 8 + len(payload)

    def value(self, v) -> None:  # noqa: C901 - one branch per type is the clearest way to spell the encoding
        if isinstance(v, np.generic) and not isinstance(v, np.void):
            v = v.item()
        if v is None:
            self.put(b"N")
        elif isinstance(v, bool):
            self.put(b"T" if v else b"F")
        elif isinstance(v, int):
            self.put(b"i", str(v).encode())
        elif isinstance(v, float):
            self.put(b"f", struct.pack("<d", v))
        elif isinstance(v, str):
            self.put(b"s", v.encode("utf-8"))
        elif isinstance(v, (bytes, bytearray, memoryview)):
            raw = memoryview(v).cast("B")
            if len(raw) < LEAF_BYTES:
                self.put(b"b", raw)
                return
            leaf = self.leaves.get(id(v)) or _leaf(v)
            self.put(b"L", leaf + struct.pack("<Q", len(raw)))
            self.size += len(raw) - 40  # the payload's size counts the leaf's own bytes, not its digest
        elif isinstance(v, np.ndarray):
            if v.dtype.hasobject:
                self.put(b"o", str(list(v.shape)).encode())
                self.value(v.tolist())
                return
            a = np.ascontiguousarray(v)
            self.put(b"a", f"{a.dtype.str}{list(a.shape)}".encode())
            self.put(b"d", memoryview(a.view(np.uint8).reshape(-1)) if a.size else b"")
        elif isinstance(v, dict):
            items = sorted(((str(k), x) for k, x in v.items()), key=lambda kv: kv[0])
            self.put(b"{", struct.pack("<Q", len(items)))
            for key, x in items:
                self.put(b"k", key.encode("utf-8"))
                self.value(x)
        elif isinstance(v, (list, tuple)):
            self.put(b"[", struct.pack("<Q", len(v)))
            for x in v:
                self.value(x)
        elif isinstance(v, (set, frozenset)):  # iteration order differs between processes: sort the parts
            parts = sorted(_part(x) for x in v)
            self.put(b"(", struct.pack("<Q", len(parts)) + b"".join(parts))
        elif hasattr(v, "numpy") and hasattr(v, "detach"):  # a torch tensor
            self.value(v.detach().cpu().numpy())
        else:  # anything else FLARE can send (its own decomposers): its FOBS bytes, as they go on the wire
            from nvflare.fuel.utils import fobs

            self.put(b"x", f"{type(v).__module__}.{type(v).__qualname__}".encode())
            self.put(b"b", fobs.dumps(v))


def _part(v) -> bytes:
    part = _Hasher()
    part.value(v)
    return part.h.digest()


def payload_digest(shareable: dict) -> Digest:
    """The Digest of a Shareable's body (everything but its headers)."""
    body = {k: v for k, v in shareable.items() if k != HEADERS}
    hasher = _Hasher(_hash_leaves(body))
    hasher.value(body)
    dxo = shareable.get(DXO_KEY)
    kind = getattr(dxo.get(DXO_KIND), "value", dxo.get(DXO_KIND)) if isinstance(dxo, dict) else "none"
    he = isinstance(dxo, dict) and is_encrypted(dxo.get(DXO_DATA))
    return Digest(sha256=hasher.h.hexdigest(), bytes=hasher.size, kind=kind, he=bool(he))
