"""The audit trail in a real FLARE simulator run of the (HE) fedavg job: the server and each site kept their own
chain, and every payload one side recorded as sent the other recorded as received, with the same hash."""

import json
import subprocess

import pytest

from consortium import constants as C
from consortium import runrecord as R
from consortium.audit_trail import chain
from tests.integration.test_simulator import simulate_cmd

pytestmark = pytest.mark.integration


def _key(record):
    return record["job"], record["task_id"]


def test_each_sides_sent_hash_is_the_other_sides_received_hash(tiny_sites, tmp_path):
    cmd, env = simulate_cmd(tiny_sites, tmp_path, "fedavg", "--rounds", "2", "--local-epochs", "1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workspace = tmp_path / "runs" / "fedavg" / "workspace"
    trails = {p: chain.read(workspace / p / C.TRAIL_FOLDER / C.TRAIL_FILE) for p in ("server", *tiny_sites)}
    server = trails.pop("server")
    for site, records in trails.items():
        from_server = {_key(r): r for r in server if r["peer"] == site and r["direction"] == "sent"}
        to_server = {_key(r): r for r in server if r["peer"] == site and r["direction"] == "received"}
        received = {_key(r): r for r in records if r["direction"] == "received"}
        sent = {_key(r): r for r in records if r["direction"] == "sent"}
        assert set(received) == set(from_server) and set(sent) == set(to_server) and sent
        for mine, theirs in ((received, from_server), (sent, to_server)):
            for key, record in mine.items():
                other = theirs[key]
                assert (record["sha256"], record["bytes"], record["he"]) == (other["sha256"], other["bytes"],
                                                                             other["he"]), (site, record)  # fmt: skip
                assert (record["task"], record["round"]) == (other["task"], other["round"])
        train = [r for r in records if r["task"] == C.TASK_TRAIN]
        assert sorted((r["round"], r["direction"]) for r in train) == [
            (0, "received"), (0, "sent"), (1, "received"), (1, "sent")]  # fmt: skip
        # HE: the site's update left it as ciphertext, and round 1's global model came back as ciphertext
        assert all(r["he"] and r["kind"] == "WEIGHTS" for r in train if r["direction"] == "sent")
        assert [r["he"] for r in train if r["direction"] == "received"] == [False, True]
        assert all(r["participant"] == site and r["dp_epsilon"] is None for r in records)

    # the server summarised the job's exchanges into its run record, and the CLI verifies against its head
    run = tmp_path / "runs" / "fedavg"
    exchanges = json.loads((run / C.METRICS_FILE).read_text())[R.EXCHANGES]
    assert exchanges[R.Exchanges.HEAD] == server[-1]["hash"] and exchanges[R.Exchanges.PROBLEM] is None
    for site in tiny_sites:
        counts = {w: exchanges[R.Exchanges.SITES][site][w][R.Exchanges.COUNT] for w in ("to_site", "from_site")}
        by_way = {"to_site": "sent", "from_site": "received"}
        assert counts == {w: sum(r["peer"] == site and r["direction"] == d for r in server) for w, d in by_way.items()}
    verify = subprocess.run([*cmd[: cmd.index("simulate")], "audit", "verify", str(run)], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr
    report = (run / "report" / "report.md").read_text()
    assert "## Exchanges per site" in report and "| site-a |" in report
