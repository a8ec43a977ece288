"""The audit trail on a real local consortium (POC kits, real server and hospital processes over mTLS): each
kit keeps its own chain, a site's sent hashes are the server's received hashes, and a hand edit is found."""

import json

import pytest

from consortium import constants as C
from consortium import runrecord as R
from consortium.audit_trail import chain
from consortium.deploy.poc import PocPaths, read_state

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_kits_keep_matching_trails_and_a_hand_edit_is_found(cli):
    paths = PocPaths(cli.tmp / "ws" / "poc-consortium")
    cli("poc", "up")
    try:
        kit = paths.prod(read_state(paths)["project"])
        for name in ("localhost", "site-a", "site-b"):  # the trail recorder in every kit's own privacy.json
            privacy = json.loads((kit / name / "local" / "privacy.json").read_text())
            assert [c["id"] for c in privacy["components"]] == [C.TRAIL_COMPONENT_ID]
        sub = cli("submit", "fedavg", "--rounds", "2")
        assert "FINISHED:COMPLETED" in sub.stdout
        job_id = sub.stdout.split("submitted job 'fedavg' as ")[1].split()[0]
        server = [r for r in chain.read(kit / "localhost" / C.TRAIL_FOLDER / C.TRAIL_FILE) if r["job"] == job_id]
        for site in ("site-a", "site-b"):
            trail = kit / site / C.TRAIL_FOLDER / C.TRAIL_FILE
            mine = {(r["task_id"], r["direction"]): r["sha256"] for r in chain.read(trail) if r["job"] == job_id}
            flip = {"sent": "received", "received": "sent"}
            theirs = {(r["task_id"], flip[r["direction"]]): r["sha256"] for r in server if r["peer"] == site}
            assert mine == theirs and len(mine) >= 4  # 2 rounds of train, each way, and the evaluation tasks
        out = cli.tmp / "runs" / "fedavg"
        exchanges = json.loads((out / C.METRICS_FILE).read_text())[R.EXCHANGES]
        assert exchanges[R.Exchanges.TRAIL] == str(kit / "localhost" / C.TRAIL_FOLDER / C.TRAIL_FILE)
        assert cli("audit", "verify", str(out)).returncode == 0

        trail = kit / "site-a" / C.TRAIL_FOLDER / C.TRAIL_FILE
        lines = trail.read_text().splitlines()
        record = json.loads(lines[1])
        record["bytes"] += 1
        lines[1] = json.dumps(record)
        trail.write_text("\n".join(lines) + "\n")
        broken = cli("audit", "verify", str(kit / "site-a"), check=False)
        assert broken.returncode == 1 and "BROKEN at line 2 (seq 1): edited" in broken.stdout
    finally:
        cli("poc", "down", check=False)
