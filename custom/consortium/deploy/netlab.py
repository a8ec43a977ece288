"""Hospitals on separate hosts on one machine: Linux network namespaces, rate limits and a delaying relay."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from consortium.deploy.poc import PocError, group_alive

NET = "198.18.0"  # the benchmarking range (RFC 2544): never routed; the lab has no route out of it
SERVER_NAME = "fl-server.lab"
RESULT = "NETLAB_RESULT "


class NetlabError(PocError):
    """The network lab cannot be built, run or removed; the message says what to do."""


@dataclass(frozen=True)
class Link:
    """What a hospital's link to the server looks like; delay or cuts route it through the relay."""

    rate_mbit: float = 0.0  # 0: unlimited
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    cut_every: float = 0.0  # a connection moving data is cut after this many seconds of transfer on average
    first_cut_mb: float = 0.0  # with cuts: one sure cut where the link's traffic passes this many MB

    @property
    def relayed(self) -> bool:
        return self.delay_ms > 0 or self.cut_every > 0


def links(*, rate=20.0, delay=50.0, jitter=10.0, cut_every=20.0, first_cut_mb=4.0) -> dict[str, Link]:
    return {
        "plain": Link(),
        "slow": Link(rate_mbit=rate),
        "delay": Link(delay_ms=delay, jitter_ms=jitter),
        "cuts": Link(cut_every=cut_every, first_cut_mb=first_cut_mb),
        "poor": Link(rate_mbit=rate, delay_ms=delay, jitter_ms=jitter, cut_every=cut_every, first_cut_mb=first_cut_mb),
    }


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetlabError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return proc


class Lab:
    """A wan namespace holding a bridge and the relay, one namespace per host (server, admin, hospitals)
    on it, each with its own 198.18.0.x address and hosts file; records what it made in `root/netlab.json`."""

    def __init__(self, root: Path, hospitals: list[str], *, prefix: str | None = None):
        self.root, self.prefix = Path(root), prefix or f"cl{os.getpid()}"
        self.hosts = ["server", "admin", *hospitals]
        self.addr = {"wan": f"{NET}.1", "server": f"{NET}.2", "admin": f"{NET}.3"}
        self.addr.update({h: f"{NET}.{10 + i}" for i, h in enumerate(hospitals)})
        self.hospitals = hospitals
        self.state = {"prefix": self.prefix, "namespaces": [], "etc": [], "groups": {}}
        self.procs: list[subprocess.Popen] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def name(self, host: str) -> str:
        return SERVER_NAME if host == "server" else f"{host}.lab"

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "netlab.json").write_text(json.dumps(self.state, indent=1))

    def up(self) -> "Lab":
        wan = self.ns("wan")
        for host in ["wan", *self.hosts]:
            if Path(f"/etc/netns/{self.ns(host)}").exists() or Path(f"/run/netns/{self.ns(host)}").exists():
                raise NetlabError(f"{self.ns(host)} exists already: `consortium netlab down` removes a lab left over")
            self.state["namespaces"].append(self.ns(host))
            self._save()  # recorded before it exists: teardown never misses what was made
            _run("ip", "netns", "add", self.ns(host))
            _run("ip", "-n", self.ns(host), "link", "set", "lo", "up")
        _run("ip", "-n", wan, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", wan, "addr", "add", f"{self.addr['wan']}/24", "dev", "br0")
        _run("ip", "-n", wan, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            _run(
                "ip", "-n", wan, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", self.ns(host)
            )
            _run("ip", "-n", wan, "link", "set", f"v{i}", "master", "br0", "up")
            _run("ip", "-n", self.ns(host), "addr", "add", f"{self.addr[host]}/24", "dev", "eth0")
            _run("ip", "-n", self.ns(host), "link", "set", "eth0", "up")
        self.set_link(Link())
        return self

    def set_link(self, link: Link) -> None:
        """Hosts files (hospitals reach the server name at the relay if the link is relayed) and tbf qdiscs."""
        for host in ["wan", *self.hosts]:
            names = {h: self.addr[h] for h in ["wan", *self.hosts]}
            if host in self.hospitals and link.relayed:
                names["server"] = self.addr["wan"]
            etc = Path(f"/etc/netns/{self.ns(host)}")
            if not etc.parent.exists():
                self.state["made_etc_netns"] = True
            if str(etc) not in self.state["etc"]:
                self.state["etc"].append(str(etc))
                self._save()
            etc.mkdir(parents=True, exist_ok=True)
            lines = ["127.0.0.1 localhost", *(f"{a} {self.name(h)}" for h, a in names.items())]
            (etc / "hosts").write_text("\n".join(lines) + "\n")
        for i, host in enumerate(self.hosts):
            if host not in self.hospitals:
                continue
            for ns, dev in ((self.ns(host), "eth0"), (self.ns("wan"), f"v{i}")):  # from and to the hospital
                _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
                if link.rate_mbit:
                    tbf = ["tbf", "rate", f"{link.rate_mbit}mbit", "burst", "64kb", "latency", "200ms"]
                    _run("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf)

    def start(self, host: str, cmd: list[str], *, env: dict, log: Path | None) -> subprocess.Popen:
        """Start `cmd` inside the host's namespace as a process group of its own (output to `log`, or ours)."""
        out = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), *cmd],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        if out is not None:
            out.close()
        self.procs.append(proc)
        self.state["groups"][f"{host}:{proc.pid}"] = proc.pid
        self._save()
        return proc

    def _groups(self) -> set[int]:
        """Process groups this lab started, and those of any process inside its namespaces (FLARE starts
        each job process in a session of its own)."""
        for proc in self.procs:
            proc.poll()  # reap our exited children: a zombie would keep its group "alive"
        groups = set(self.state["groups"].values())
        for ns in self.state["namespaces"]:
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    groups.add(os.getpgid(int(pid)))
                except ProcessLookupError:
                    pass
        return {g for g in groups if g != os.getpgrp() and group_alive(g)}

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM every group at once, then SIGKILL what is left after `grace` s, until no process is left."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            end = time.time() + wait
            while (left := self._groups()) and time.time() < end:
                for pgid in left:
                    try:
                        os.killpg(pgid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(0.3)
        self.state["groups"], self.procs = {}, []
        self._save()

    def down(self) -> None:
        self.stop()
        for ns in self.state["namespaces"]:  # deleting a namespace removes its veth ends, bridge and qdiscs
            _run("ip", "netns", "del", ns, check=False)
        for etc in self.state["etc"]:
            shutil.rmtree(etc, ignore_errors=True)
        if self.state.get("made_etc_netns"):  # /etc/netns itself, if this lab made it and no other lab uses it
            try:
                Path("/etc/netns").rmdir()
            except OSError:
                pass
        self.state["namespaces"], self.state["etc"] = [], []
        (self.root / "netlab.json").unlink(missing_ok=True)

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    @classmethod
    def load(cls, root: Path) -> "Lab":
        state = json.loads((Path(root) / "netlab.json").read_text())
        lab = cls(root, [], prefix=state["prefix"])
        lab.state = state
        return lab


def check_host() -> None:
    if os.geteuid() != 0:
        raise NetlabError("the network lab needs root (it creates network namespaces); run it with sudo")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise NetlabError("the network lab needs iproute2 (`ip`, `tc`)")
    if _run("ip", "netns", "list", check=False).returncode != 0:
        raise NetlabError("`ip netns` does not work on this machine")


def on_sigterm() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the lab's finally-blocks remove what it made."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
