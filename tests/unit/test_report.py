"""`consortium report`: files, sections, numbers from the run, TensorBoard scalars, missing parts explained."""

import json
import subprocess
import sys

import pytest

from consortium.report import ReportError, load_run, write_report

SITES = ["hospital-a", "hospital-b"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder, *, dp=False, cross_site=True, baselines=True):
    rounds = []
    for r in range(3):
        sites = {}
        for i, s in enumerate(SITES):
            m = {"val_score": 0.1 * r + 0.05 * i, "local_score": 0.1 * r + 0.2, "train_loss": 1.0 - 0.1 * r, "steps": 5}
            if dp:
                m.update({"dp_epsilon": 1.5 * (r + 1) + i, "dp_delta": 1e-5})
            sites[s] = m
        rounds.append({"round": r, "seconds": 2.0, "sites": sites})
    history = {
        "task": "seg2d",
        "num_rounds": 3,
        "meta": {"job": "fedavg", "algorithm": "scaffold", "he": True, "metric": "Dice", "rounds": 3},
        "rounds": rounds,
        "final": {"hospital-a": {"val_score": 0.81, "personalized_score": 0.84}, "hospital-b": {"val_score": 0.62}},
    }
    if cross_site:
        history["cross_site"] = {
            "models": ["global"] + SITES,
            "sites": SITES,
            "scores": {
                "global": {"hospital-a": 0.81, "hospital-b": 0.62},
                "hospital-a": {"hospital-a": 0.84, "hospital-b": 0.4},
                "hospital-b": {"hospital-a": 0.5, "hospital-b": 0.7},
            },
        }
    run = folder / "fedavg"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(history))
    if baselines:
        base = folder / "baselines"
        base.mkdir()
        local = {
            "hospital-a": {"scores": {"hospital-a": 0.77, "hospital-b": 0.3}},
            "hospital-b": {"scores": {"hospital-a": 0.2, "hospital-b": 0.66}},
        }
        (base / "local.json").write_text(json.dumps({"kind": "local", "job": "fedavg", "results": local}))
        pooled = {"pooled": {"scores": {"hospital-a": 0.88, "hospital-b": 0.71}}}
        (base / "pooled.json").write_text(json.dumps({"kind": "pooled", "job": "fedavg", "results": pooled}))
    return run


def test_full_report_has_every_section_plot_and_number(tmp_path):
    files = write_report(load_run(write_run(tmp_path, dp=True)))
    html, md = files["html"].read_text(), files["markdown"].read_text()
    for section in (
        "Is the shared model better for my hospital?",
        "Run",
        "Learning curves",
        "Cross-site evaluation",
        "Federated vs local-only vs pooled",
        "Privacy spent",
    ):
        assert f"<h2>{section}</h2>" in html.replace("&#x27;", "'") and f"## {section}" in md
    for name in ("answer", "learning_curves", "cross_site", "privacy"):
        assert files[name].read_bytes().startswith(PNG_MAGIC)
        assert f"]({files[name].name})" in md  # markdown references the PNG next to it
    assert html.count("data:image/png;base64,") == 4 and 'src="learning_curves.png"' not in html  # self-contained
    # the answer, per site, from the numbers: a 0.84 fine-tuned vs 0.77 alone; b 0.62 vs 0.66 alone
    assert "| hospital-a | 0.810 | 0.840 | 0.770 | yes: the fine-tuned model scores +0.070" in md
    assert "| hospital-b | 0.620 | – | 0.660 | no: training alone scores +0.040 higher" in md
    assert "shared 0.620 vs alone 0.300" in md  # a's row: global vs a's local model on b's data
    assert "| pooled data (reference) | 0.880 | 0.710 |" in md
    assert "| hospital-a | 0.840 | 0.400 |" in md  # cross-site row of a's model
    assert "| algorithm | scaffold |" in md and "| encrypted aggregation (HE) | on |" in md
    assert "| hospital-b | 5.50 | 3 |" in md  # privacy: last epsilon of b, rounds trained


def test_tensorboard_scalars_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = write_report(load_run(write_run(tmp_path, dp=True)))
    events = EventAccumulator(str(files["tensorboard"]))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"val_score/hospital-a", "local_score/hospital-b", "dp_epsilon/hospital-b", "round_seconds"} <= set(tags)
    values = [(e.step, round(e.value, 6)) for e in events.Scalars("val_score/hospital-b")]
    assert values == [(0, 0.05), (1, 0.15), (2, 0.25)]


def test_missing_parts_are_explained(tmp_path):
    files = write_report(load_run(write_run(tmp_path, cross_site=False, baselines=False)))
    md = files["markdown"].read_text()
    assert "no cross-site evaluation" in md and "cross_site" not in files
    assert "`consortium baseline local --job fedavg`" in md and "`consortium baseline pooled --job fedavg`" in md
    assert "Differential privacy was off" in md and "privacy" not in files


def test_refusals_and_errors_are_listed(tmp_path):
    run = write_run(tmp_path)
    history = json.loads((run / "metrics.json").read_text())
    history["refused"] = {"hospital-b": {"round": 2, "reason": "max_epsilon 3 would be exceeded"}}
    history["errors"] = {"hospital-a": "task 'train' failed: OSError"}
    (run / "metrics.json").write_text(json.dumps(history))
    md = write_report(load_run(run))["markdown"].read_text()
    assert "| hospital-b | round 2: max_epsilon 3 would be exceeded |" in md
    assert "| hospital-a | task 'train' failed: OSError |" in md


def test_no_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="consortium simulate fedavg"):
        load_run(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "consortium.cli", "--runs", str(tmp_path), "report", "fedavg"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "run a job first" in proc.stderr


def test_cli_takes_a_job_name_under_runs(tmp_path):
    write_run(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "consortium.cli", "--runs", str(tmp_path), "report", "fedavg"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fedavg" / "report" / "report.html").is_file()


def test_lost_sites_and_a_resume_are_reported_and_a_clean_run_has_no_such_section():
    from consortium.report import availability_sections

    assert availability_sections({"rounds": [{"round": 0, "contributed": SITES, "dropped": {}}]}) == []
    history = {
        "rounds": [
            {"round": 0, "contributed": SITES, "dropped": {}, "not_awaited": []},
            {"round": 1, "contributed": ["hospital-a"], "dropped": {"hospital-b": "no result within 60 s"}},
            {"round": 2, "contributed": ["hospital-a"], "dropped": {}, "not_awaited": ["hospital-b"]},
        ],
        "resumed": [{"job": "j2", "from_job": "j1", "after_round": 2}],
    }
    (lost, lost_md, _), (interruptions, text, _) = availability_sections(history)
    assert lost == "Sites lost or dropped" and interruptions == "Interruptions"
    assert "| 2 | hospital-a | hospital-b: no result within 60 s |" in lost_md
    assert "| 3 | hospital-a | hospital-b: absent since an earlier round, not awaited |" in lost_md
    assert "job j2 resumed job j1 after its round 2" in text


def test_job_summary_keeps_long_site_names_aligned(tmp_path, capsys):
    from consortium.report import print_job_summary

    final = {"a": {"val_score": 0.5}, "university-hospital-east": {"val_score": 0.75}}
    history = {"meta": {"metric": "Dice"}, "final": final}
    print_job_summary(tmp_path, history, "")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and "0." in line]
    assert len(rows) == 2 and len({line.index("0.") for line in rows}) == 1  # the scores start in one column


@pytest.mark.parametrize("setting", ["dp_update", "dp_sgd"])
def test_the_run_table_shows_dp_as_the_job_records_it(tmp_path, setting):
    """Through the writer: the settings the exported job hands its workflow (run_info) become the run's meta."""
    from pathlib import Path

    from consortium.jobs import export_job, load_job_spec

    repo = Path(__file__).resolve().parents[2]
    jobs = tmp_path / "jobs"
    (jobs / "base").mkdir(parents=True)
    (jobs / "base" / "job.yaml").write_text((repo / "jobs" / "fedavg" / "job.yaml").read_text())
    dp = "{clip_norm: 1.0, delta: 1.0e-5, noise_multiplier: 1.0}" if setting == "dp_update" else \
        "{target_epsilon: 8.0, delta: 1.0e-5, max_grad_norm: 1.0}"  # fmt: skip
    (jobs / "dp").mkdir()
    (jobs / "dp" / "job.yaml").write_text(f"base: base\nfinetune_epochs: 0\n{setting}: {dp}\n")
    folder = export_job(load_job_spec("dp", jobs), tmp_path / "out")
    server = json.loads((folder / "app/config/config_fed_server.json").read_text())
    run_info = next(w["args"]["run_info"] for w in server["workflows"] if "run_info" in w.get("args", {}))
    run = write_run(tmp_path)
    history = json.loads((run / "metrics.json").read_text())
    history["meta"] = {**history["meta"], **run_info}
    (run / "metrics.json").write_text(json.dumps(history))
    md = write_report(load_run(run))["markdown"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| differential privacy"))
    assert setting in row and "off" not in row


def test_the_answer_comes_from_the_runs_own_alone_training(tmp_path):
    """A train_alone job needs no baseline run: the sites' alone models and their cross-site rows answer it."""
    run = write_run(tmp_path, baselines=False)
    history = json.loads((run / "metrics.json").read_text())
    history["alone"] = {"hospital-a": {"alone_score": 0.84, "steps": 30}, "hospital-b": {"alone_score": 0.7}}
    (run / "metrics.json").write_text(json.dumps(history))
    files = write_report(load_run(run))
    md = files["markdown"].read_text()
    assert "No model trained alone" not in md and "each hospital also trained the same initial model" in md
    # a: fine-tuned 0.84 vs alone 0.84 (its cross-site row on its own data); b: global 0.62 vs alone 0.70
    assert "| hospital-b | 0.620 | – | 0.700 | no: training alone scores +0.080 higher" in md
    assert "shared 0.620 vs alone 0.400" in md  # a's alone model on b's data, from the cross-site matrix
    assert files["answer"].read_bytes().startswith(PNG_MAGIC)
    history.pop("alone")
    (run / "metrics.json").write_text(json.dumps(history))
    assert "No model trained alone" in write_report(load_run(run))["markdown"].read_text()


@pytest.mark.parametrize(
    "setting, spent_key, expected",
    [
        (None, None, "| differential privacy | off |"),
        ("dp_sgd", "dp_epsilon", '| differential privacy | dp_sgd {"target_epsilon": 8.0, "delta": 1e-05} |'),
        ("dp_update", "dp_update_epsilon", '| differential privacy | dp_update {"clip_norm": 1.0, "delta": 1e-05} |'),
    ],
)
def test_a_run_record_renders_the_dp_line_of_its_job(tmp_path, setting, spent_key, expected):
    """A record built through the schema (runrecord) of a job without DP, with dp_sgd and with dp_update:
    the run table names the job's DP setting, and 'Privacy spent' shows the epsilon its accountant reported."""
    from consortium import runrecord as R

    meta = {R.Meta.JOB: "dp", R.Meta.METRIC: "Dice", R.Meta.HE: False}
    if setting:
        meta[setting] = (
            {"target_epsilon": 8.0, "delta": 1e-5} if setting == "dp_sgd" else {"clip_norm": 1.0, "delta": 1e-5}
        )
    record = R.new(task="seg2d", num_rounds=2, meta=meta)
    for r in range(2):
        spent = {spent_key: 2.0 * (r + 1)} if spent_key else {}
        if setting == "dp_sgd":  # DP-SGD's delta comes with each site's epsilon; the update filter's is the job's
            spent["dp_delta"] = 1e-5
        sites = {s: {"val_score": 0.5, **spent} for s in SITES}
        record[R.ROUNDS].append({R.Round.ROUND: r, R.Round.SECONDS: 1.0, R.Round.SITES: sites})
    record[R.FINAL] = {s: {"val_score": 0.6} for s in SITES}
    (tmp_path / "dp").mkdir()
    R.write(tmp_path / "dp", record)
    md = write_report(load_run(tmp_path / "dp"))["markdown"].read_text()
    assert expected in md.splitlines()
    if setting:
        assert "Differential privacy was off" not in md and "| hospital-b | 4.00 | 2 |" in md
        assert "at delta 1e-05" in md
        assert "Not covered: the validation scores, losses, step counts" in md  # the guarantee's scope, said
    else:
        assert "Differential privacy was off" in md and "Not covered" not in md
