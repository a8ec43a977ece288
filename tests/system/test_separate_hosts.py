"""Hospitals on separate hosts: server, admin and each hospital in its own network namespace, real kits."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consortium.deploy.netlab import SERVER_NAME, Lab, Link
from consortium.deploy.relay import Relay

pytestmark = pytest.mark.system


def _why_no_netns() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (`ip`, `tc`) is not installed"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "`ip netns` is unavailable on this machine"
    return None


needs_netns = pytest.mark.skipif(_why_no_netns() is not None, reason=str(_why_no_netns()))


def _in_ns(lab: Lab, host: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = ["ip", "netns", "exec", lab.ns(host), sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _leftovers(prefix: str, root: Path) -> list[str]:
    """Namespaces, hosts folders and processes of a lab that should all be gone."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    left = [n for n in names if n.startswith(prefix + "-")]
    left += [str(p) for p in Path("/etc/netns").glob(prefix + "-*")] if Path("/etc/netns").exists() else []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(root) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                left.append(f"process {proc.name}")
        except OSError:
            pass
    return left


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1] if len(sys.argv) > 1 else {host!r}, {port}), timeout=3).close()
    print("connected")
except OSError as exc:
    print("refused", exc)
"""


@needs_netns
def test_lab_gives_each_host_its_address_and_name_and_removes_everything(tmp_path):
    lab = Lab(tmp_path / "lab", ["hospital-a", "hospital-b"], prefix=f"cl{os.getpid()}t")
    try:
        lab.up()
        listener = [sys.executable, "-c", "import socket,time; s=socket.create_server(('', 18102)); time.sleep(60)"]
        lab.start("server", listener, env=dict(os.environ), log=tmp_path / "listener.log")
        time.sleep(1.0)
        reached = _in_ns(lab, "hospital-a", CONNECT.format(host=SERVER_NAME, port=18102))
        assert reached.stdout.startswith("connected"), reached.stdout + reached.stderr  # by host name
        # the lab is closed: no route out of it, and no lab address in the machine's own namespace
        out = _in_ns(lab, "hospital-a", CONNECT.format(host="203.0.113.5", port=18102))
        assert out.stdout.startswith("refused") and "unreachable" in out.stdout, out.stdout
        own = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        assert "198.18.0." not in own
        routes = subprocess.run(["ip", "-n", lab.ns("hospital-a"), "route"], capture_output=True, text=True).stdout
        assert "default" not in routes and "198.18.0.0/24" in routes
        lab.set_link(Link(rate_mbit=20))
        for ns, dev in ((lab.ns("hospital-a"), "eth0"), (lab.ns("wan"), "v2")):
            shown = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", dev], capture_output=True, text=True)
            assert "tbf" in shown.stdout and "20Mbit" in shown.stdout, shown.stdout
        lab.set_link(Link(delay_ms=50))  # a relayed link: hospitals find the server name at the relay
        assert f"198.18.0.1 {SERVER_NAME}" in Path(f"/etc/netns/{lab.ns('hospital-b')}/hosts").read_text()
        assert f"198.18.0.2 {SERVER_NAME}" in Path(f"/etc/netns/{lab.ns('admin')}/hosts").read_text()
    finally:
        lab.down()
    assert _leftovers(lab.prefix, tmp_path / "lab") == []


def test_relay_delays_keeps_order_and_cuts_a_busy_connection():
    async def scenario():
        async def echo(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        relay = Relay(("127.0.0.1", 0), target, delay=0.05, jitter=0.02, cut_every=0.5, log=lambda m: None)
        task = asyncio.create_task(relay.run(lifetime=30))
        while relay.listen[1] == 0:
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection(*relay.listen)
        start = time.monotonic()
        writer.write(b"x")
        await reader.readexactly(1)
        rtt = time.monotonic() - start
        payload = bytes(range(256)) * 2000
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        try:  # keep the connection busy until the relay cuts it
            while True:
                writer.write(b"y" * 100_000)
                await reader.readexactly(100_000)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            cut = exc
        task.cancel()
        server.close()
        return rtt, echoed == payload, cut, relay.stats

    rtt, in_order, cut, stats = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert rtt >= 2 * 0.03  # a lower bound (delay - jitter, each way): noise can only add to it
    assert in_order  # jittered per-chunk delays never reorder a connection's bytes
    assert stats["cuts"] == 1 and cut is not None


def test_relay_cuts_once_where_the_traffic_passes_first_cut_mb():
    async def scenario():
        async def sink(reader, writer):
            try:
                while await reader.read(65536):
                    pass
            except ConnectionError:
                pass
            writer.close()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        relay = Relay(("127.0.0.1", 0), target, first_cut_mb=1.0, log=lambda m: None)  # no random cuts
        task = asyncio.create_task(relay.run(lifetime=30))
        while relay.listen[1] == 0:
            await asyncio.sleep(0.05)
        sent, cut = 0, None
        for _ in range(2):  # a second connection after the cut is never cut: the sure cut happens once
            reader, writer = await asyncio.open_connection(*relay.listen)
            try:
                for _ in range(30):  # 3 MB per connection, fast
                    writer.write(b"z" * 100_000)
                    await writer.drain()
                    sent += 100_000
                    await asyncio.sleep(0.01)
            except ConnectionError as exc:
                cut = exc
            writer.close()
            await asyncio.sleep(0.2)
        stats = dict(relay.stats)
        task.cancel()
        server.close()
        return cut, sent, stats

    cut, sent, stats = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert stats["cuts"] == 1 and stats["connections"] == 2
    assert cut is not None and sent < 6_000_000  # the first connection was reset mid-stream
    assert stats["bytes"] >= 1_000_000


def _prefix(stdout: str) -> str:
    return re.search(r"^lab (cl\d+):", stdout, re.M).group(1)


@needs_netns
def test_a_job_runs_across_separate_hosts(cli):
    try:
        run = cli("netlab", "run", "--job", "fedavg", "--rounds", "2", "--links", "plain", check=False, timeout=900)
    finally:  # a run killed on timeout cannot clean up after itself: remove what its netlab.json lists
        cli("netlab", "down", check=False)
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-4000:]
    assert re.search(r"^plain\s+2 .* FINISHED:COMPLETED$", out, re.M), out[-2000:]
    assert "all sites registered" in out
    assert f"{SERVER_NAME} 198.18.0.2" in out and "site-a.lab 198.18.0.10" in out
    prefix = _prefix(out)
    lab_root = cli.tmp / "ws" / "netlab" / prefix
    # the hospitals reached the server by its lab host name, at its namespace address
    site_log = (lab_root / "logs" / "plain" / "site-a.log").read_text()
    assert f"{SERVER_NAME}:" in site_log
    assert _leftovers(prefix, lab_root) == []


@needs_netns
@pytest.mark.slow
def test_a_job_completes_over_poor_links(cli):
    try:
        # cuts every ~5 s of transfer, and a round timeout a consortium on such links would set
        run = cli("netlab", "run", "--rounds", "2", "--links", "slow,delay,cuts,poor", "--cut-every", "5",
                  "--round-timeout", "240", check=False, timeout=3600)  # fmt: skip
    finally:
        cli("netlab", "down", check=False)
    out = run.stdout
    print(out[out.rfind("link ") :])  # the measured table, for `pytest -s`
    for link in ("slow", "delay", "cuts", "poor"):
        assert re.search(rf"^{link}\s+2 .* FINISHED:COMPLETED$", out, re.M), out[-3000:]
    cuts = [int(m) for m in re.findall(r"^(?:cuts|poor)\s+\d+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\d+)", out, re.M)]
    assert cuts and all(n >= 1 for n in cuts), out[-2000:]  # connections were cut, and the job still completed
    assert run.returncode == 0
    prefix = _prefix(out)
    assert _leftovers(prefix, cli.tmp / "ws" / "netlab" / prefix) == []
