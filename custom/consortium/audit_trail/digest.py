"""SHA-256 of a task payload (a Shareable's body: its DXO) over a canonical encoding both ends compute alike.

The bytes FLARE puts on the wire (FOBS/msgpack, chunked streaming) are not visible to a component and differ
in framing between sender and receiver, so the hash covers the payload's content instead: every value of the
Shareable except its headers (task id, return code, cookies, peer context: routing, rewritten on the way).
The encoding is typed and length-prefixed: dict keys sorted, lists and tuples alike (msgpack turns tuples into
lists), numpy arrays as dtype + shape + raw bytes (C order), numpy scalars as the Python number they hold.
`bytes` in a record is the length of this encoding: the model's raw bytes plus a few bytes per value.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
from nvflare.apis.shareable import ReservedHeaderKey

from consortium.he.wire import is_encrypted

HEADERS = ReservedHeaderKey.HEADERS
DXO_KEY, DXO_KIND, DXO_DATA = "DXO", "kind", "data"  # nvflare.apis.dxo's own (private) key names


@dataclass(frozen=True)
class Digest:
    sha256: str
    bytes: int
    kind: str  # the DXO's data kind (WEIGHTS, METRICS, ...), or "none" for a payload without a DXO
    he: bool  # the payload carries CKKS ciphertext (consortium.he.wire)


class _Hasher:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0

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
            self.put(b"b", memoryview(v).cast("B"))
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
        elif hasattr(v, "numpy") and hasattr(v, "detach"):  # a torch tensor
            self.value(v.detach().cpu().numpy())
        else:
            raise TypeError(f"audit trail: cannot hash a payload value of type {type(v).__name__}")


def payload_digest(shareable: dict) -> Digest:
    """The Digest of a Shareable's body (everything but its headers)."""
    hasher = _Hasher()
    hasher.value({k: v for k, v in shareable.items() if k != HEADERS})
    dxo = shareable.get(DXO_KEY)
    kind = getattr(dxo.get(DXO_KIND), "value", dxo.get(DXO_KIND)) if isinstance(dxo, dict) else "none"
    he = isinstance(dxo, dict) and is_encrypted(dxo.get(DXO_DATA))
    return Digest(sha256=hasher.h.hexdigest(), bytes=hasher.size, kind=kind, he=bool(he))
