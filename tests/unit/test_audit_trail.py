"""The exchange trail (consortium.audit_trail): the chain finds edited, removed and inserted records by line,
the payload digest survives FLARE's own serialisation, `consortium audit show|verify`, and the kits install it."""

import json
import multiprocessing

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.shareable import Shareable

from consortium import constants as C
from consortium.audit_trail import chain
from consortium.audit_trail.digest import payload_digest
from consortium.audit_trail.recorder import dp_spent
from consortium.cli import main


def _trail(tmp_path, n=5):
    path = tmp_path / C.TRAIL_FOLDER / C.TRAIL_FILE
    for i in range(n):
        entry = {"job": "j1", "round": i, "task": "train", "direction": "sent", "peer": "server", "bytes": 10 + i,
                 "sha256": f"{i:064x}", "he": False, "dp_epsilon": {"dp_sgd": 0.5 * i} if i else None}  # fmt: skip
        chain.append(path, entry)
    return path


def _lines(path):
    return path.read_text().splitlines()


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_append_links_every_record_to_the_one_before(tmp_path):
    path = _trail(tmp_path)
    records = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev_hash"] == chain.GENESIS
    pairs = zip(records[:-1], records[1:], strict=True)
    assert all(b["prev_hash"] == a["hash"] == chain.record_hash(a) for a, b in pairs)
    verdict = chain.verify(path)
    assert verdict.problem is None and len(verdict.records) == 5 and verdict.head == records[-1]["hash"]


def test_an_edited_record_is_named_by_its_line(tmp_path):
    path = _trail(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[2])
    record["bytes"] = 999  # someone lowers what was sent
    lines[2] = json.dumps(record)
    _write(path, lines)
    verdict = chain.verify(path)
    assert verdict.line == 3 and "line 3 (seq 2): edited" in verdict.problem and len(verdict.records) == 2


def test_an_edited_and_rehashed_record_breaks_the_next_link(tmp_path):
    path = _trail(tmp_path)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["sha256"] = "f" * 64
    record["hash"] = chain.record_hash(record)
    lines[1] = json.dumps(record)
    _write(path, lines)
    verdict = chain.verify(path)
    assert verdict.line == 3 and "line 2 was replaced" in verdict.problem


def test_a_removed_record_is_named_by_the_line_after_it(tmp_path):
    path = _trail(tmp_path)
    lines = _lines(path)
    del lines[2]
    _write(path, lines)
    verdict = chain.verify(path)
    assert verdict.line == 3 and "1 record(s) removed before it (seq jumps from 1 to 3)" in verdict.problem
    del lines[0]  # the first record gone: the chain no longer starts at GENESIS
    _write(path, lines)
    assert chain.verify(path).line == 1 and "removed" in chain.verify(path).problem


def test_an_inserted_record_is_found(tmp_path):
    path = _trail(tmp_path)
    lines = _lines(path)
    # a forged record with a valid hash, linked to line 2 and numbered as if it belonged there
    before = json.loads(lines[1])
    forged = {**json.loads(lines[2]), "sha256": "e" * 64, "prev_hash": before["hash"]}
    forged["hash"] = chain.record_hash(forged)
    _write(path, lines[:2] + [json.dumps(forged)] + lines[2:])
    verdict = chain.verify(path)
    assert verdict.line == 4 and "a record inserted at or just before this line" in verdict.problem
    # a copy of an earlier record pasted in: its own link is wrong
    _write(path, lines[:3] + [lines[0]] + lines[3:])
    verdict = chain.verify(path)
    assert verdict.line == 4 and "inserted" in verdict.problem


def test_records_cut_off_at_the_end_are_found_with_a_head_kept_elsewhere(tmp_path):
    path = _trail(tmp_path)
    head = chain.verify(path).head
    _write(path, _lines(path)[:-2])
    assert chain.verify(path).problem is None  # a shorter chain is still a chain
    verdict = chain.verify(path, head=head)
    assert "records removed at its end" in verdict.problem


def test_append_refuses_to_continue_a_broken_last_line(tmp_path):
    path = _trail(tmp_path, 2)
    with path.open("a") as f:
        f.write('{"seq": 2, "half a rec\n')
    with pytest.raises(chain.TrailError, match="last line is not a trail record"):
        chain.append(path, {"job": "j1"})
    assert chain.verify(path).line == 3 and "not a JSON record" in chain.verify(path).problem


def test_append_refuses_a_trail_that_no_longer_verifies(tmp_path):
    path = _trail(tmp_path, 3)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["bytes"] += 1  # an edit in the middle: the last line still parses
    lines[1] = json.dumps(record, separators=(",", ":"))
    _write(path, lines)
    with pytest.raises(chain.TrailError, match=r"it does not verify \(line 2 \(seq 1\): edited") as err:
        chain.append(path, {"job": "j1"})
    assert f"consortium audit verify {path}" in str(err.value)
    assert _lines(path) == lines  # nothing appended


def test_append_refuses_a_last_line_cut_short_and_checks_what_others_appended(tmp_path):
    path = _trail(tmp_path, 2)
    with path.open("a") as f:
        f.write('{"seq": 2, "prev_hash": "00')  # a write cut short: no line end
    with pytest.raises(chain.TrailError, match="its last line is not a trail record .line 3 has no line end"):
        chain.check(path)
    with pytest.raises(chain.TrailError, match="last line is not a trail record"):
        chain.append(path, {"job": "j1"})
    # the trail moved aside (kept as evidence): a new one begins, and what another process appends is checked
    path.rename(path.with_suffix(".broken"))
    first = chain.append(path, {"job": "j2"})
    assert first["seq"] == 0 and first["prev_hash"] == chain.GENESIS
    forged = {"job": "j2", "seq": 1, "prev_hash": "f" * 64}
    forged["hash"] = chain.record_hash(forged)
    with path.open("a") as f:  # appended by someone else, linked to nothing
        f.write(json.dumps(forged) + "\n")
    with pytest.raises(chain.TrailError, match="prev_hash does not match"):
        chain.append(path, {"job": "j2"})


def test_a_refused_payload_loses_its_body_and_keeps_what_flare_routes_it_by():
    from nvflare.apis.fl_constant import FLContextKey, ReturnCode
    from nvflare.apis.shareable import ReservedHeaderKey

    from consortium.audit_trail.recorder import refuse

    task = _model_result({"w": np.ones(3, np.float32)})
    task.set_header(ReservedHeaderKey.TASK_ID, "t-1")
    task.add_cookie(FLContextKey.TASK_ID, "t-1")  # the server finds the task of a reply by this cookie
    refuse(task, "audit trail: site-c could not record the received payload")
    assert set(task) == {ReservedHeaderKey.HEADERS}  # no DXO: no model left in it
    assert task.get_cookie(FLContextKey.TASK_ID) == "t-1" and task.get_header(ReservedHeaderKey.TASK_ID) == "t-1"
    assert task.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert task.get_header(C.HEADER_SITE_ERROR) == "audit trail: site-c could not record the received payload"


def _append_many(path, who, n):
    for i in range(n):
        chain.append(path, {"job": who, "round": i})


def test_processes_appending_at_once_keep_one_chain(tmp_path):
    path = tmp_path / "t.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    verdict = chain.verify(path)
    assert verdict.problem is None and len(verdict.records) == 80


def _model_result(weights: dict, epsilon=None) -> Shareable:
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 12, MetaKey.INITIAL_METRICS: {"val_score": 0.5}}
    if epsilon is not None:
        meta[C.METRIC_DP_EPSILON] = epsilon
    return DXO(DataKind.WEIGHTS, data=weights, meta=meta).to_shareable()


def test_the_payload_digest_is_the_same_after_flares_serialisation():
    from nvflare.app_common.decomposers import common_decomposers

    common_decomposers.register()  # numpy arrays, as FLARE's processes register them
    rng = np.random.default_rng(0)
    weights = {"conv.weight": rng.normal(size=(4, 3, 3)).astype(np.float32), "conv.bias": np.zeros(4, np.float32)}
    sent = _model_result(weights, epsilon=1.25)
    sent.set_header("task_id", "t-1")
    received = Shareable.from_bytes(sent.to_bytes())  # FLARE's FOBS, as on the wire
    received.set_header("peer_ctx_extra", "added on the way")  # headers are routing, not payload
    a, b = payload_digest(sent), payload_digest(received)
    assert a == b and a.kind == DataKind.WEIGHTS and not a.he
    assert a.bytes > sum(v.nbytes for v in weights.values())
    changed = dict(weights, **{"conv.bias": np.full(4, 1e-7, np.float32)})
    assert payload_digest(_model_result(changed, epsilon=1.25)).sha256 != a.sha256
    assert payload_digest(_model_result(weights, epsilon=1.26)).sha256 != a.sha256  # the meta is covered
    assert dp_spent(received) == {"dp_sgd": 1.25} and dp_spent(_model_result(weights)) is None


def test_sets_and_other_values_flare_sends_hash_alike_after_fobs():
    import datetime

    payload = Shareable({"tags": {"b", "a", "c"}, "when": datetime.datetime(2026, 12, 4, 1, 2, 3)})
    assert payload_digest(Shareable.from_bytes(payload.to_bytes())) == payload_digest(payload)
    assert payload_digest(Shareable({"tags": {"a", "b"}})) != payload_digest(Shareable({"tags": {"a", "c"}}))


def test_an_encrypted_payload_is_marked_he_and_its_chunks_hashed_alike_at_both_ends():
    import os

    from consortium.audit_trail.digest import LEAF_BYTES
    from consortium.he.wire import PAYLOAD_KEY

    chunks = [os.urandom(LEAF_BYTES + 7), os.urandom(300), os.urandom(2 * LEAF_BYTES)]
    sent = DXO(DataKind.WEIGHTS, data={PAYLOAD_KEY: {"chunks": chunks, "weight": 3.0}}).to_shareable()
    digest = payload_digest(sent)
    assert digest.he and digest.bytes > sum(map(len, chunks))
    assert payload_digest(sent) == digest  # again, from the server's cache of the same chunk objects
    received = Shareable.from_bytes(sent.to_bytes())  # new objects, hashed afresh
    assert payload_digest(received) == digest
    as_bytearray = [bytearray(c) for c in chunks]
    assert payload_digest(DXO(DataKind.WEIGHTS, data={PAYLOAD_KEY: {"chunks": as_bytearray, "weight": 3.0}})
                          .to_shareable()) == digest  # fmt: skip
    flipped = [chunks[0][:-1] + bytes([chunks[0][-1] ^ 1]), *chunks[1:]]
    other = DXO(DataKind.WEIGHTS, data={PAYLOAD_KEY: {"chunks": flipped, "weight": 3.0}}).to_shareable()
    assert payload_digest(other).sha256 != digest.sha256  # one bit of one ciphertext chunk


def test_leaves_hashed_on_threads_give_the_digest_of_the_walk_in_order(monkeypatch):
    from consortium.audit_trail import digest
    from consortium.he.wire import PAYLOAD_KEY

    rng = np.random.default_rng(1)
    chunks = [rng.bytes(digest.LEAF_BYTES + i) for i in range(12)] + [rng.bytes(100)]
    data = {PAYLOAD_KEY: {"chunks": chunks, "weight": 3.0}, "bias": np.ones(4, np.float32)}
    payload = DXO(DataKind.WEIGHTS, data=data, meta={"round": 1}).to_shareable()
    monkeypatch.setattr(digest, "LEAF_THREADS", 4)
    threaded = digest.payload_digest(payload)
    monkeypatch.setattr(digest, "LEAF_THREADS", 1)  # every leaf hashed in the walk, one after another
    digest._leaves.clear()
    assert digest.payload_digest(payload) == threaded


def test_audit_show_prints_a_table_and_verify_names_the_broken_line(tmp_path, capsys):
    path = _trail(tmp_path)
    assert main(["audit", "show", str(tmp_path)]) == 0  # a workspace folder: its consortium_trail/
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["line", "seq", "time", "job", "round", "task", "direction", "peer", "kind", "bytes",
                              "sha256", "he", "dp", "epsilon"]  # fmt: skip
    assert len(out) == 2 + 5 + 1 and out[3].split()[:2] == ["2", "1"] and "dp_sgd 0.50" in out[3]
    assert "5 records; chain intact" in out[-1]
    assert main(["audit", "show", str(path), "--last", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 2 + 1
    assert main(["audit", "verify", str(path)]) == 0 and "5 records, chain intact" in capsys.readouterr().out
    lines = _lines(path)
    _write(path, lines[:1] + lines[2:])
    assert main(["audit", "verify", str(path)]) == 1
    assert "BROKEN at line 2 (seq 2)" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "nothing.jsonl")]) == 2
    assert "no trail file there" in capsys.readouterr().err


def test_every_kit_and_the_simulator_install_the_recorder_where_flare_builds_it(tmp_path):
    """FLARE's own privacy configurator builds the recorder from the site's and the server's privacy.json."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    from consortium.audit_trail.recorder import ExchangeRecorder
    from consortium.config import load_site_configs
    from consortium.deploy.kit_builder import PRIVACY_SCOPE, privacy_policy, write_server_local
    from consortium.deploy.policy import write_trail_policy
    from tests.conftest import REPO

    cfg = load_site_configs(REPO / "site_configs")["hospital-c"]
    site, server, sim = tmp_path / "site", tmp_path / "server", tmp_path / "sim"
    for root in (site, server, sim):
        (root / "local").mkdir(parents=True)
        (root / "startup").mkdir()
    (site / "local" / "privacy.json").write_text(json.dumps(privacy_policy(cfg)))
    (server / "local" / "resources.json.default").write_text(json.dumps({"snapshot_persistor": {"args": {"storage": {
        "args": {}}}}, "components": [{"id": "job_manager", "args": {}}]}))  # fmt: skip
    write_server_local(str(server / "local"), storage_root=str(tmp_path / "storage"), heartbeat_timeout=60)
    write_trail_policy(sim / "local")
    write_trail_policy(sim / "local")  # idempotent: one recorder
    for root, name, is_server in ((site, "hospital-c", False), (server, "server", True), (sim, "site-1", False)):
        manager = create_privacy_manager(Workspace(str(root), name), names_only=False, is_server=is_server)
        assert manager.is_policy_defined() and manager.get_scope("") is not None  # jobs naming no scope pass
        assert manager.get_scope(PRIVACY_SCOPE) is not None
        assert list(manager.components) == [C.TRAIL_COMPONENT_ID]
        assert isinstance(manager.components[C.TRAIL_COMPONENT_ID], ExchangeRecorder)


def test_the_report_renders_governance_and_exchanges_or_says_not_recorded(tmp_path):
    from consortium import runrecord as R
    from consortium.audit_trail.summary import job_exchanges
    from consortium.report.governance import governance_sections
    from consortium.report.load import load_run

    trail = tmp_path / "server" / C.TRAIL_FOLDER / C.TRAIL_FILE
    for direction, sha, eps in (("sent", "a" * 64, None), ("received", "b" * 64, {"dp_sgd": 1.5}),
                                ("received", "c" * 64, {"dp_sgd": 2.25})):  # fmt: skip
        chain.append(trail, {"job": "j1", "direction": direction, "peer": "site-a", "bytes": 2_000_000,
                             "sha256": sha, "dp_epsilon": eps})  # fmt: skip
    chain.append(trail, {"job": "other", "direction": "sent", "peer": "site-a", "bytes": 5, "sha256": "d" * 64})
    record = R.new(task="seg2d", num_rounds=1, meta={R.Meta.JOB: "fedavg"})
    record[R.ROUNDS] = [{R.Round.ROUND: 0, R.Round.SITES: {"site-a": {}}}]
    R.write(tmp_path, record)
    governance, exchanges = (md for _, md, _ in governance_sections(load_run(tmp_path)))
    assert "| purpose | not recorded |" in governance and "| audit trail | not recorded |" in governance
    assert "Not recorded" in exchanges

    record[R.EXCHANGES] = job_exchanges(trail, "j1")
    record[R.META]["governance"] = {"purpose": "lesion segmentation research",
                                    "agreement": {"id": "DSA-7", "version": "2"},
                                    "approvals": [{"site": "site-a", "by": "purpose"}],
                                    "refusals": [{"site": "site-b", "reason": "purpose not approved"}]}  # fmt: skip
    R.write(tmp_path, record)
    governance, exchanges = (md for _, md, _ in governance_sections(load_run(tmp_path)))
    assert "| purpose | lesion segmentation research |" in governance
    assert (
        "| agreement | DSA-7 version 2 |" in governance and "site: site-b, reason: purpose not approved" in governance
    )
    assert "4 records" in governance and "verified when the job ended" in governance
    row = next(line for line in exchanges.splitlines() if line.startswith("| site-a"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["site-a", "1", "2.00 MB", "aaaaaaaaaaaa / aaaaaaaaaaaa", "2", "4.00 MB",
                     "bbbbbbbbbbbb / cccccccccccc", "dp_sgd 2.25"]  # fmt: skip
