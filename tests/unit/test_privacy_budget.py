"""A site's privacy budget across jobs: the append-only ledger (privacy.spending), its composition, refusals
(privacy.budget.check_budget), the executor's admission before data are read (executors.site_budget) and
`consortium privacy ledger`."""

import json
from pathlib import Path

import pytest
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.fl_model import FLModel

from consortium import constants as C
from consortium.cli import main
from consortium.config import ConfigError, PrivacyBudget, PrivacyConfig, load_site_configs
from consortium.executors.site_budget import JobBudget, update_epsilon
from consortium.privacy import spending
from consortium.privacy.budget import BudgetRefused, check_budget
from consortium.privacy.settings import DPSGDSettings, DPUpdateSettings
from tests.conftest import TINY_A, write_site_configs

SOURCE = "/kits/site-b/local/consortium/site-b.yaml"


def _round(job, chain, rnd, eps, mechanism="dp_sgd", delta=1e-5):
    return {"kind": "round", "job": job, "chain": chain, "round": rnd, "mechanism": mechanism, "epsilon": eps,
            "delta": delta, "accountant": "prv", "noise": 1.1, "sample_rate": 0.5, "steps": 2 * rnd}  # fmt: skip


def _plan(job, chain, eps, delta=1e-5):
    return {"kind": "plan", "job": job, "chain": chain, "epsilon": eps, "delta": delta, "mechanisms": ["dp_sgd"]}


def test_ledger_is_append_only_and_every_line_a_record(tmp_path):
    spending.append(tmp_path, _plan("j1", ["j1"], 6.0))
    before = spending.path(tmp_path).read_bytes()
    spending.append(tmp_path, _round("j1", ["j1"], 1, 4.4))
    after = spending.path(tmp_path).read_bytes()
    assert after.startswith(before) and after.endswith(b"\n")  # earlier bytes never rewritten
    lines = [json.loads(line) for line in after.decode().splitlines()]
    assert [r["kind"] for r in lines] == ["plan", "round"] and all("time" in r for r in lines)
    assert spending.path(tmp_path).parent.name == C.PRIVACY_LEDGER_FOLDER  # in the workspace, not a job folder


def test_check_that_refuses_writes_nothing(tmp_path):
    spending.append(tmp_path, _plan("j1", ["j1"], 6.0))
    size = spending.path(tmp_path).stat().st_size

    def refuse(ledger):
        assert ledger.runs["j1"].planned == (6.0, 1e-5)  # the check sees the ledger read under the lock
        raise BudgetRefused("no")

    with pytest.raises(BudgetRefused):
        spending.append(tmp_path, _plan("j2", ["j2"], 6.0), check=refuse)
    assert spending.path(tmp_path).stat().st_size == size


def test_truncated_last_line_is_reported_and_the_next_record_kept(tmp_path):
    """A process killed while writing leaves half a line: reported with its number, never silently dropped; the
    next append closes it first, so the new record stays readable and the old bytes stay."""
    spending.append(tmp_path, _round("j1", ["j1"], 1, 4.4))
    with open(spending.path(tmp_path), "ab") as f:
        f.write(b'{"kind": "round", "job": "j1", "epsi')
    ledger = spending.read(spending.path(tmp_path))
    assert ledger.records == 1 and len(ledger.problems) == 1
    assert "line 2 is incomplete" in ledger.problems[0] and "counts nothing" in ledger.problems[0]
    assert ledger.runs["j1"].counted() == (4.4, 1e-5)  # the complete line still counts

    spending.append(tmp_path, _round("j1", ["j1"], 2, 5.9))
    ledger = spending.read(spending.path(tmp_path))
    assert ledger.records == 2 and ledger.runs["j1"].counted() == (5.9, 1e-5)
    assert len(ledger.problems) == 1 and "line 2 is unreadable" in ledger.problems[0]
    assert spending.path(tmp_path).read_bytes().count(b"\n") == 3


def test_composition_sums_runs_and_counts_a_resumed_run_once(tmp_path):
    for record in [
        _plan("j1", ["j1"], 6.0), _round("j1", ["j1"], 1, 3.0), _round("j1", ["j1"], 2, 4.5),  # stopped early
        _plan("j2", ["j1", "j2"], 6.0), _round("j2", ["j1", "j2"], 3, 6.2),  # resumes j1: the same run
        _plan("k1", ["k1"], 2.0, delta=2e-5), _round("k1", ["k1"], 1, 1.0, delta=1e-5),
        _round("k1", ["k1"], 1, 0.7, mechanism="dp_update", delta=1e-5),  # both mechanisms in one run add up
        {"kind": "plan", "job": "p1", "chain": ["p1"], "epsilon": None, "delta": None, "mechanisms": []},
        _round("p1", ["p1"], 1, None, mechanism="none", delta=None),
    ]:  # fmt: skip
        spending.append(tmp_path, record)
    ledger = spending.read(spending.path(tmp_path))
    assert list(ledger.runs) == ["j1", "k1", "p1"]
    j1, k1, p1 = ledger.runs.values()
    assert j1.jobs == ["j1", "j2"] and j1.rounds == {1, 2, 3}
    assert j1.counted() == (6.2, 1e-5)  # spent above its plan: what it spent
    assert k1.counted() == (2.0, 2e-5)  # spent 1.7 of its plan of 2: the plan stays reserved
    assert not p1.private and p1.counted() == (0.0, 0.0)  # no DP: no epsilon to count (and it says so)
    eps, delta = ledger.counted()
    assert eps == pytest.approx(8.2) and delta == pytest.approx(3e-5)
    assert ledger.counted(exclude="j1") == pytest.approx((2.0, 2e-5))


def _ledger(tmp_path, *records):
    for record in records:
        spending.append(tmp_path, record)
    return spending.read(spending.path(tmp_path))


def test_refusal_names_file_budget_jobs_spent_and_fix(tmp_path):
    floor = PrivacyConfig(budget=PrivacyBudget(epsilon=10, delta=1e-4))
    ledger = _ledger(tmp_path, _plan("j1", ["j1"], 6.0), _round("j1", ["j1"], 3, 5.99))
    check_budget(floor, ledger, run="j2", epsilon=4.0, delta=1e-5, job="j2", site="site-b", source=SOURCE)  # fits
    with pytest.raises(BudgetRefused) as refused:
        check_budget(floor, ledger, run="j2", epsilon=8.0, delta=1e-5, job="j2", site="site-b", source=SOURCE)
    message = str(refused.value)
    for part in ("site site-b refuses job j2", "plans to spend epsilon 8.00", f"privacy.budget in {SOURCE}",
                 "epsilon 10, delta 0.0001", "j1 (epsilon 6.00, delta 1e-05, 1 round(s))", "left: epsilon 4.00",
                 "Nothing was trained or spent", "target_epsilon (dp_sgd and dp_update together) to at most 4.00",
                 "consortium privacy ledger --site site-b"):  # fmt: skip
        assert part in message, (part, message)
    # a resumed run is not "another job": its own spending is inside its plan
    check_budget(floor, ledger, run="j1", epsilon=6.0, delta=1e-5, job="j2", site="site-b", source=SOURCE)


def test_delta_and_exhausted_budget_refusals(tmp_path):
    floor = PrivacyConfig(budget=PrivacyBudget(epsilon=10, delta=1e-5))
    ledger = _ledger(tmp_path, _plan("j1", ["j1"], 2.0, delta=4e-6))
    with pytest.raises(BudgetRefused, match=r"delta \(dp_sgd.delta \+ dp_update.delta\) to at most 6e-06"):
        check_budget(floor, ledger, run="j2", epsilon=1.0, delta=1e-5, job="j2", site="s", source=SOURCE)
    with pytest.raises(BudgetRefused, match=r"budget's delta \(the deltas of all jobs add up"):
        check_budget(floor, _ledger(tmp_path / "a", _plan("j1", ["j1"], 2.0)), run="j2", epsilon=1.0, delta=1e-5,
                     job="j2", site="s", source=SOURCE)  # fmt: skip
    spent = _ledger(tmp_path / "b", _plan("j1", ["j1"], 10.0, delta=1e-6))
    with pytest.raises(BudgetRefused, match="budget's epsilon is used up: only the hospital can raise privacy.budget"):
        check_budget(floor, spent, run="j2", epsilon=0.5, delta=1e-6, job="j2", site="s", source=SOURCE,
                     round_number=None)  # fmt: skip
    check_budget(PrivacyConfig(), spent, run="j2", epsilon=99, delta=0.1, job="j2", site="s", source=SOURCE)  # no cap


def _ctx(root: Path, job: str) -> FLContext:
    (root / "local").mkdir(parents=True, exist_ok=True)
    (root / "startup").mkdir(exist_ok=True)
    ctx = FLContext()
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(str(root), "site-b"), private=True, sticky=False)
    ctx.set_prop(FLContextKey.CURRENT_RUN, job, private=False, sticky=True)
    return ctx


def _cfg(tmp_path, privacy: str):
    folder = write_site_configs(tmp_path / "configs", {"site-b": TINY_A.replace("site_a", "site_b") + privacy})
    return load_site_configs(folder)["site-b"]


def test_admission_reserves_the_plan_then_refuses_the_next_job_before_its_data(tmp_path):
    cfg = _cfg(tmp_path, "privacy:\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    dp = DPSGDSettings.from_dict({"target_epsilon": 6, "delta": 1e-5, "max_grad_norm": 1.0})
    logs = []
    first = JobBudget(dp, None)
    first.admit(cfg, FLModel(params={}, total_rounds=3, meta={C.META_RUN_CHAIN: ["j1"]}), _ctx(tmp_path, "j1"),
                logs.append)  # fmt: skip
    assert first.planned == (6.0, 1e-5)
    first.round_sent(round_number=1, mechanism="dp_sgd", epsilon=4.0, delta=1e-5, accountant="prv")

    second = JobBudget(dp, None)
    with pytest.raises(BudgetRefused) as refused:
        second.admit(cfg, FLModel(params={}, total_rounds=3, meta={C.META_RUN_CHAIN: ["j2"]}), _ctx(tmp_path, "j2"),
                     logs.append)  # fmt: skip
    assert str(cfg.source) in str(refused.value) and "j1 (epsilon 6.00" in str(refused.value)
    second.refused(str(refused.value))
    ledger = spending.read(spending.path(tmp_path))
    assert ledger.runs["j2"].planned is None and ledger.runs["j2"].refused  # recorded, nothing reserved
    assert ledger.counted() == (6.0, 1e-5)

    resumed = JobBudget(dp, None)  # j1 resumed as j3: the same run, admitted within its own plan
    resumed.admit(cfg, FLModel(params={}, total_rounds=3, meta={C.META_RUN_CHAIN: ["j1", "j3"]}),
                  _ctx(tmp_path, "j3"), logs.append)  # fmt: skip
    assert spending.read(spending.path(tmp_path)).counted() == (6.0, 1e-5)


def test_admission_of_jobs_without_dp_and_of_dp_update(tmp_path):
    cfg = _cfg(tmp_path, "privacy:\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    logs = []
    plain = JobBudget(None, None)
    plain.admit(cfg, FLModel(params={}, total_rounds=2), _ctx(tmp_path, "p1"), logs.append)
    assert any("trains without DP" in line and "privacy.require_dp: true" in line for line in logs)
    assert not spending.read(spending.path(tmp_path)).runs["p1"].private

    update = DPUpdateSettings.from_dict({"clip_norm": 1.0, "delta": 1e-5, "noise_multiplier": 6.0})
    noisy = JobBudget(None, update)
    noisy.admit(cfg, FLModel(params={}, total_rounds=4), _ctx(tmp_path, "u1"), logs.append)
    assert noisy.planned[0] == pytest.approx(update_epsilon(update, 4)) and noisy.planned[1] == 1e-5
    assert 0 < noisy.planned[0] < 10

    strict = _cfg(tmp_path / "strict", "privacy:\n  require_dp: true\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    with pytest.raises(BudgetRefused, match="trains only with DP-SGD"):  # before any data are read
        JobBudget(None, None).admit(strict, FLModel(params={}, total_rounds=2), _ctx(tmp_path / "s", "p2"), logs.append)


def test_budget_in_site_config_validated(tmp_path):
    bad = [("{epsilon: 0, delta: 1.0e-5}", "privacy.budget.epsilon"),
           ("{epsilon: 5, delta: 1}", "privacy.budget.delta"),
           ("{epsilon: .inf, delta: 1.0e-5}", "privacy.budget.epsilon"),
           ("{epsilon: 5, eps: 1}", "privacy.budget.eps"), ("{epsilon: 5}", "privacy.budget")]  # fmt: skip
    for body, field in bad:
        with pytest.raises(ConfigError, match=f"site-b.yaml: field '{field}'"):
            _cfg(tmp_path, f"privacy:\n  budget: {body}\n")
    assert _cfg(tmp_path, "").privacy.budget is None  # default: no cap across jobs


def test_cli_prints_the_ledger_and_the_remaining_budget(tmp_path, capsys):
    cfg = _cfg(tmp_path, "privacy:\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    kit = tmp_path / "kit"
    for record in (_plan("j1", ["j1"], 6.0), _round("j1", ["j1"], 1, 4.4), _round("j1", ["j1"], 2, 5.99)):
        spending.append(kit, record)
    with open(spending.path(kit), "ab") as f:
        f.write(b'{"kind": "ro')
    code = main(["--site-configs", str(cfg.source.parent), "privacy", "ledger", "--site", "site-b", "--path", str(kit)])
    out = capsys.readouterr().out
    assert code == 0
    header, _, row = out.splitlines()[:3]
    assert header.split() == ["job", "rounds", "epsilon", "delta", "counted", "accountant", "time"]
    assert row.split()[:5] == ["j1", "2", "5.99", "1e-05", "6.00"]
    assert "left: epsilon 4.00, delta 9e-05" in out and f"privacy.budget in {cfg.source}" in out
    assert "WARNING" in out and "line 4 is incomplete" in out


def test_fixed_noise_dpsgd_is_planned_once_its_steps_are_known(tmp_path):
    cfg = _cfg(tmp_path, "privacy:\n  budget: {epsilon: 10, delta: 1.0e-4}\n")
    fixed = DPSGDSettings.from_dict({"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0})
    job = JobBudget(fixed, None)
    job.admit(cfg, FLModel(params={}, total_rounds=3), _ctx(tmp_path, "f1"), print)
    assert job.admitted and job.planned is None  # no target: nothing to reserve before the data are read
    with pytest.raises(BudgetRefused, match="plans to spend epsilon 12.00"):
        job.plan_dpsgd(cfg, 12.0)  # what its steps would spend, once the site knows them: still before training
    job.plan_dpsgd(cfg, 7.0)
    assert spending.read(spending.path(tmp_path)).counted() == (7.0, 1e-5)
    used_up = JobBudget(fixed, None)  # 7 + 3 = the whole budget: a fixed-noise job is refused before its data
    spending.append(tmp_path, _plan("other", ["other"], 3.0))
    with pytest.raises(BudgetRefused, match="budget's epsilon is used up"):
        used_up.admit(cfg, FLModel(params={}, total_rounds=3), _ctx(tmp_path, "f2"), print)
    assert not used_up.admitted
