"""A delaying TCP relay for the network lab: adds latency with jitter per chunk and cuts connections now and then."""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


class Relay:
    """Forward every connection on `listen` to `target`; each direction delays each chunk by delay +- jitter
    seconds (deadlines never go backwards, so a connection keeps its byte order); a connection moving data
    is reset on both sides at random, on average after `cut_every` seconds of transfer. With `first_cut_mb`,
    the connection that carries the relay's total past that many MB is cut there, mid-chunk-stream, so a
    short run on a fast link is cut at least once too (random cuts alone may miss a run of a few seconds)."""

    def __init__(self, listen, target, *, delay=0.0, jitter=0.0, cut_every=0.0, first_cut_mb=0.0, seed=0, log=print):
        self.listen, self.target = listen, target
        self.delay, self.jitter, self.cut_every = delay, jitter, cut_every
        self.first_cut_bytes, self.first_cut_done = int(first_cut_mb * 1e6), False
        self.rng, self.log = random.Random(seed), log
        self.conns: dict[int, dict] = {}
        self.stats = {"connections": 0, "cuts": 0, "bytes": 0}

    async def _pipe(self, conn, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)  # back-pressure: at most 64 chunks in flight

        async def deliver():
            while (item := await queue.get()) is not None:
                due, data = item
                if conn["dead"]:
                    continue  # keep draining so the reading side never blocks on a dead connection
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    self._kill(conn)

        sender = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while data := await reader.read(CHUNK):
                conn["bytes"] += len(data)
                self.stats["bytes"] += len(data)
                if self.first_cut_bytes and not self.first_cut_done and self.stats["bytes"] >= self.first_cut_bytes:
                    self.first_cut_done = True
                    if conn["cid"] in self.conns:
                        self._cut(conn["cid"])
                    break
                delay = max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
                last_due = max(last_due, time.monotonic() + delay)
                await queue.put((last_due, data))
        except (ConnectionError, OSError):
            self._kill(conn)
        await queue.put(None)
        await sender
        if not conn["dead"] and writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be sending

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            self.log(f"relay: cannot reach {self.target[0]}:{self.target[1]}: {exc}")
            writer.close()
            return
        self.stats["connections"] += 1
        cid = self.stats["connections"]
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        conn = {"cid": cid, "writers": (writer, up_writer), "peer": peer, "bytes": 0, "seen": 0, "dead": False}
        self.conns[cid] = conn
        try:
            await asyncio.gather(self._pipe(conn, reader, up_writer), self._pipe(conn, up_reader, writer))
        finally:
            self.conns.pop(cid, None)
            if not conn["dead"]:
                for w in conn["writers"]:
                    w.close()

    @staticmethod
    def _kill(conn, *, reset: bool = False) -> None:
        conn["dead"] = True
        for w in conn["writers"]:
            sock = w.get_extra_info("socket")
            if reset and sock is not None:  # linger 0: close sends RST, as a dropped link looks to both ends
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()

    def _cut(self, cid: int) -> None:
        conn = self.conns.pop(cid)
        self._kill(conn, reset=True)
        self.stats["cuts"] += 1
        when, mb = time.strftime("%H:%M:%S"), conn["bytes"] / 1e6
        self.log(f"relay: {when} cut connection {cid} from {conn['peer']} mid-transfer after {mb:.1f} MB")

    async def _cutter(self, tick: float = 0.1, busy_bytes: int = 32 * 1024) -> None:
        """Each connection that is moving data (>= 32 KB in a tick) is cut with probability tick / cut_every:
        on average after `cut_every` seconds of transfer, at a random point of it, whatever else is going on."""
        while True:
            for conn in self.conns.values():
                conn["seen"] = conn["bytes"]
            await asyncio.sleep(tick)
            for cid, conn in list(self.conns.items()):
                if conn["bytes"] - conn["seen"] >= busy_bytes and self.rng.random() < tick / self.cut_every:
                    self._cut(cid)

    async def run(self, lifetime: float) -> dict:
        server = await asyncio.start_server(self._serve, *self.listen, reuse_address=True)
        self.listen = server.sockets[0].getsockname()[:2]  # the port actually bound, if 0 was asked for
        self.log(f"relay: {self.listen[0]}:{self.listen[1]} -> {self.target[0]}:{self.target[1]} ready")
        tasks = [asyncio.create_task(self._cutter())] if self.cut_every > 0 else []
        try:
            await asyncio.sleep(lifetime)
        finally:
            for t in tasks:
                t.cancel()
            server.close()
            for cid in list(self.conns):
                self._kill(self.conns.pop(cid))
        return self.stats


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", type=_addr, required=True, help="HOST:PORT to accept connections on")
    p.add_argument("--target", type=_addr, required=True, help="HOST:PORT to forward them to")
    p.add_argument("--delay-ms", type=float, default=0.0, help="added one-way delay per chunk")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform +- jitter on that delay")
    p.add_argument("--cut-every", type=float, default=0.0, help="mean seconds of transfer until a cut (0: never)")
    sure = "cut the connection that carries the relay's traffic past this many MB (0: random cuts only)"
    p.add_argument("--first-cut-mb", type=float, default=0.0, help=sure)
    p.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    delay, jitter = a.delay_ms / 1000, a.jitter_ms / 1000
    log = lambda msg: print(msg, flush=True)
    relay = Relay(a.listen, a.target, delay=delay, jitter=jitter, cut_every=a.cut_every,
                  first_cut_mb=a.first_cut_mb, seed=a.seed, log=log)
    stats = asyncio.run(relay.run(a.lifetime))
    print(f"relay: done: {stats}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
