"""A broken audit trail fails closed on a real local consortium (POC kits, server + 3 hospitals over mTLS): a
hospital whose kit's trail ends in a line cut short is dropped with a reason naming that file, and the job
completes with the other two (min_clients 2) or ends at once saying why (min_clients 3); a server whose trail is
broken does not run the job."""

from __future__ import annotations

import json
import shutil

import pytest

from consortium import constants as C
from consortium.audit_trail import chain
from tests.conftest import REPO
from tests.integration.test_audit_trail import CUT_SHORT, SHORT, TINY_C
from tests.system.conftest import kit, three_site_cli

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture
def cli3(tmp_path):
    yield from three_site_cli(tmp_path, TINY_C)


def test_a_broken_trail_drops_its_site_or_stops_the_server(cli3):
    jobs = cli3.tmp / "jobs"
    shutil.copytree(REPO / "jobs" / "fedavg", jobs / "fedavg")
    for n in (2, 3):
        (jobs / f"short{n}").mkdir()
        (jobs / f"short{n}" / "job.yaml").write_text(SHORT + f"min_clients: {n}\n")
    cli3("poc", "up")
    trail_c = kit(cli3, "site-c") / C.TRAIL_FOLDER / C.TRAIL_FILE
    trail_c.parent.mkdir(parents=True, exist_ok=True)
    trail_c.write_text(CUT_SHORT)

    sub = cli3("--jobs", str(jobs), "submit", "short2", "--timeout", "900")
    assert "FINISHED:COMPLETED" in sub.stdout, sub.stdout[-3000:]
    history = json.loads((cli3.tmp / "runs" / "short2" / C.METRICS_FILE).read_text())
    (first,) = history["rounds"]
    assert first["contributed"] == ["site-a", "site-b"]
    reason = first["dropped"]["site-c"]
    assert "site-c could not record the received payload" in reason and f"consortium audit verify {trail_c}" in reason
    assert trail_c.read_text() == CUT_SHORT
    assert "site-c" in cli3("status").stdout  # the site's error is shown to the admin

    sub = cli3("--jobs", str(jobs), "submit", "short3", "--timeout", "900", check=False)
    assert sub.returncode == 1 and "FINISHED:COMPLETED" not in sub.stdout, sub.stdout[-3000:]
    assert "fewer than the job's min_clients 3" in sub.stdout and str(trail_c) in sub.stdout, sub.stdout[-3000:]

    # the site's trail kept aside as evidence; now the server's own trail is cut short
    trail_c.rename(trail_c.with_suffix(".broken"))
    trail_s = kit(cli3, "localhost") / C.TRAIL_FOLDER / C.TRAIL_FILE
    assert chain.verify(trail_s).problem is None
    kept = trail_s.read_text()
    with trail_s.open("a") as f:
        f.write(CUT_SHORT)
    sub = cli3("--jobs", str(jobs), "submit", "short2", "--timeout", "900", check=False)
    assert sub.returncode == 1 and "FINISHED:COMPLETED" not in sub.stdout, sub.stdout[-3000:]
    assert "the server's trail does not verify" in sub.stdout and f"consortium audit verify {trail_s}" in sub.stdout
    assert trail_s.read_text() == kept + CUT_SHORT  # nothing linked to the broken line
