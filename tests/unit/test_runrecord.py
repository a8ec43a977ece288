"""The run record's schema: constants and shapes agree, the writers' keys are declared, read/write round trip."""

import json
import typing

import pytest

from consortium import runrecord as R


def _constants(namespace) -> set[str]:
    return {v for k, v in vars(namespace).items() if k.isupper() and isinstance(v, str)}


@pytest.mark.parametrize(
    "namespace, shape",
    [(R.Meta, R.RunMeta), (R.Round, R.RoundEntry), (R.Matrix, R.CrossSiteMatrix), (R.Refusal, R.RefusalEntry),
     (R.Resume, R.ResumeEntry)],
)  # fmt: skip
def test_key_constants_and_typed_shapes_agree(namespace, shape):
    keys = _constants(namespace) - ({R.Matrix.GLOBAL} if namespace is R.Matrix else set())
    assert keys == set(typing.get_type_hints(shape))


def test_top_level_keys_agree():
    names = ("VERSION", "TASK", "NUM_ROUNDS", "META", "ROUNDS", "FINAL", "ALONE", "CROSS_SITE", "PRESENT",
             "REFUSED", "ERRORS", "STOPPED", "RESUMED", "WALL_SECONDS", "EXCHANGES", "AUDIT")  # fmt: skip
    top = {getattr(R, k) for k in names}
    assert top == set(typing.get_type_hints(R.RunRecord))
    assert set(R.DP_EPSILON) == set(R.DP_SETTINGS) <= _constants(R.Meta)


def test_what_the_writers_write_is_declared(tmp_path):
    """The job's run_info (jobs.py), a round's outcome (rounds.py) and a resumed record (checkpoint.py)."""
    from pathlib import Path

    from consortium.jobs import export_job, load_job_spec
    from consortium.workflows.checkpoint import continued_history
    from consortium.workflows.rounds import RoundOutcome

    repo = Path(__file__).resolve().parents[2]
    folder = export_job(load_job_spec("fedavg", repo / "jobs"), tmp_path / "out")
    server = json.loads((folder / "app/config/config_fed_server.json").read_text())
    run_info = next(w["args"]["run_info"] for w in server["workflows"] if "run_info" in w.get("args", {}))
    assert set(run_info) <= _constants(R.Meta)
    assert set(RoundOutcome(0, ["a"]).record()) <= _constants(R.Round)
    old = {R.META: {R.Meta.RUN_CHAIN: ["j1"]}, R.ROUNDS: [{R.Round.ROUND: 0}], R.REFUSED: {}, R.ERRORS: {}}
    merged = continued_history(old, R.new(task="seg2d", num_rounds=2, meta={}), "j2")
    assert set(merged) <= set(typing.get_type_hints(R.RunRecord))
    assert set(merged[R.RESUMED][0]) == _constants(R.Resume)


def test_write_then_read_and_versions(tmp_path):
    record = R.new(task="seg2d", num_rounds=3, meta={R.Meta.JOB: "fedavg"})
    path = R.write(tmp_path, record)
    assert R.read(tmp_path) == record and json.loads(path.read_text())[R.VERSION] == R.SCHEMA_VERSION
    assert not (tmp_path / (R.FILE + ".tmp")).exists()
    assert R.read(tmp_path / "none", missing_ok=True) == {}
    with pytest.raises(R.RecordError, match="run a job first"):
        R.read(tmp_path / "none")
    path.write_text(json.dumps({R.ROUNDS: []}))  # written before the version existed: version 1
    assert R.read(tmp_path) == {R.ROUNDS: []}
    path.write_text(json.dumps({R.VERSION: R.SCHEMA_VERSION + 1}))
    with pytest.raises(R.RecordError, match="newer than this consortium package"):
        R.read(tmp_path)
    path.write_text("{")
    with pytest.raises(R.RecordError, match="not valid JSON"):
        R.read(tmp_path)
