"""Job definitions: variants state differences only, bad ones are refused, exports hold no path or code."""

import json

import pytest

from consortium.config import ConfigError
from consortium.jobs import JobSpec, available_jobs, export_job, load_job_spec
from tests.conftest import JOB_GOVERNANCE, REPO


def test_repository_jobs_load_and_export_clean(tmp_path):
    names = available_jobs(REPO / "jobs")
    assert "fedavg" in names
    for name in names:
        folder = export_job(load_job_spec(name, REPO / "jobs"), tmp_path)
        assert not (folder / "app" / "custom").exists(), "jobs must not ship custom code"
        text = "".join(p.read_text() for p in folder.rglob("*.json"))
        assert "/work" not in text and str(tmp_path) not in text and "/home" not in text
        assert "secret" not in text.lower() and "password" not in text.lower()
        server = json.loads((folder / "app/config/config_fed_server.json").read_text())
        client = json.loads((folder / "app/config/config_fed_client.json").read_text())
        # training runs the installed package; FLARE's own federated statistics may precede it (heart jobs)
        training = [w for w in server["workflows"] if not w["path"].endswith(".StatisticsController")]
        trainer = next(e["executor"] for e in client["executors"] if "train" in e["tasks"])
        assert all(p.startswith("consortium.") for p in [training[0]["path"], trainer["path"]])
        assert trainer["args"]["lr"] == load_job_spec(name, REPO / "jobs").lr
        # a site whose result arrived but whose reply was lost on a cut link asks again after 30 s, not 300 s
        assert client["submit_task_result_timeout"] == 30.0
        # a site's arrays travel inside its result message, not as references the server downloads afterwards:
        # a site lost between the two would make FLARE end the server's job process (jobs/build.py)
        assert client["np_download_chunk_size"] == 0 and client["tensor_download_chunk_size"] == 0


def test_variant_states_only_differences(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base/job.yaml").write_text("task: seg2d\nrounds: 4\nlr: 0.01\n" + JOB_GOVERNANCE)
    (tmp_path / "fast").mkdir()
    (tmp_path / "fast/job.yaml").write_text("base: base\nrounds: 1\n")
    spec = load_job_spec("fast", tmp_path)
    assert (spec.name, spec.rounds, spec.lr) == ("fast", 1, 0.01)


@pytest.mark.parametrize(
    "body, message",
    [
        ("rounds: 0\n", "'rounds'"),
        ("batch_size: 7.5\n", "'batch_size'.*whole number, got 7.5"),  # once silently truncated to 7
        ("rounds: true\n", "'rounds'.*whole number"),
        ("colour: red\n", "'colour'"),
        ("task: nope\n", "unknown task"),
        ("lr: fast\n", "'lr'"),
        ("algorithm: fednova\n", "'algorithm': must be one of fedavg, fedprox, scaffold"),
        ("prox_mu: 0.1\n", "'prox_mu': is only used by algorithm: fedprox"),
        ("algorithm: fedprox\nprox_mu: -1\n", "'prox_mu': must be >= 0"),
        ("weighting: size\n", "'weighting'"),
        ("finetune_epochs: -1\n", "'finetune_epochs'"),
        ("server_momentum: 1.0\n", "'server_momentum': must be >= 0 and < 1"),
        (
            "server_momentum: 0.5\ndp_update: {clip_norm: 1.0, delta: 1.0e-5, noise_multiplier: 1.0}\n",
            "'server_momentum': must be 0 with dp_update",
        ),
    ],
)
def test_bad_job_refused(tmp_path, body, message):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/job.yaml").write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_job_spec("j", tmp_path)


def test_unknown_job_lists_available():
    with pytest.raises(ConfigError, match="available jobs: .*fedavg"):
        load_job_spec("nope", REPO / "jobs")


def test_algorithm_variants_reach_the_exported_job(tmp_path):
    """fedprox's mu goes to FLARE's FedAvg controller (its fedprox_mu contract); scaffold to every site."""
    prox = export_job(load_job_spec("fedprox", REPO / "jobs"), tmp_path)
    server = json.loads((prox / "app/config/config_fed_server.json").read_text())
    assert server["workflows"][0]["args"]["fedprox_mu"] == 0.01
    assert server["workflows"][1]["path"].endswith("ConsortiumCrossSiteEval")
    scaffold = export_job(load_job_spec("scaffold", REPO / "jobs"), tmp_path)
    client = json.loads((scaffold / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["algorithm"] == "scaffold"
    steps = export_job(load_job_spec("fedavg_steps", REPO / "jobs"), tmp_path)
    client = json.loads((steps / "app/config/config_fed_client.json").read_text())
    assert client["executors"][0]["executor"]["args"]["local_steps"] == 12
    assert load_job_spec("fedavg_steps", REPO / "jobs").round_budget == "12 local steps"
    assert load_job_spec("fedavg", REPO / "jobs").round_budget == "2 local epochs"


def test_every_override_is_validated_like_the_job_file():
    spec = load_job_spec("fedavg", REPO / "jobs")
    source = REPO / "jobs" / "fedavg"
    assert spec.with_overrides(source, rounds=None, lr=None) is spec  # None keeps the job's value
    changed = spec.with_overrides(source, rounds="3", lr="1e-2")  # coerced like YAML strings
    assert (changed.rounds, changed.lr, changed.local_epochs) == (3, 0.01, spec.local_epochs)
    for bad, message in [({"rounds": 0}, "'rounds': must be >= 1"), ({"local_epochs": 0}, "'local_epochs'"),
                         ({"batch_size": 7.5}, "whole number"), ({"lr": -1.0}, "'lr': must be > 0"),
                         ({"epochs": 3}, "override 'epochs': not a job field")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            spec.with_overrides(source, **bad)


def test_spec_holds_typed_settings_after_load(tmp_path):
    from consortium.jobs import HESettings
    from consortium.privacy.settings import DPSGDSettings, DPUpdateSettings

    dp = load_job_spec("fedavg_dp", REPO / "jobs")
    assert isinstance(dp.dp_sgd, DPSGDSettings) and (dp.dp_sgd.target_epsilon, dp.dp_sgd.delta) == (8.0, 1e-5)
    assert dp.he == HESettings() and load_job_spec("fedavg_plain", REPO / "jobs").he is None
    (tmp_path / "j").mkdir()
    (tmp_path / "j/job.yaml").write_text(
        "he: {encrypt_layers: ['^model\\.2\\.']}\ndp_update: {clip_norm: 1, delta: 1e-5, noise_multiplier: 0.5}\n"
        + JOB_GOVERNANCE
    )
    spec = load_job_spec("j", tmp_path)
    assert spec.he.encrypt_layers == ("^model\\.2\\.",) and isinstance(spec.dp_update, DPUpdateSettings)
    assert spec.dp_update.delta == 1e-5  # "1e-5" is a string in YAML: parsed once, at load
    again = JobSpec(**json.loads(json.dumps(spec.to_dict())))  # the simulator worker's copy
    assert again == spec


@pytest.mark.parametrize(
    "body, message",
    [
        ("dp_sgd: {target_epsilon: 8, delta: 1.0e-5, max_grad_norm: -1}\n", r"j/job.yaml: field dp_sgd.max_grad_norm"),
        ("dp_sgd: {target_epsilon: 8, delta: 1.0e-5, max_grad_norm: 1, trainable: '('}\n", "dp_sgd.trainable"),
        ("dp_update: {clip_norm: 1, delta: 1.0e-5}\n", "field dp_update: set exactly one of"),
        ("he: {encrypt_layers: ['(']}\n", "field 'he'.*he.encrypt_layers: '\\(' is not a regex"),
        ("he_encrypt_layers: null\n", "'he_encrypt_layers'.*he: \\{encrypt_layers"),
    ],
)
def test_bad_settings_refused_at_load_naming_the_field(tmp_path, body, message):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/job.yaml").write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_job_spec("j", tmp_path)


def _trainer_args(spec, tmp_path) -> dict:
    folder = export_job(spec, tmp_path)
    client = json.loads((folder / "app/config/config_fed_client.json").read_text())
    return next(e["executor"]["args"] for e in client["executors"] if "train" in e["tasks"])


def test_executor_rebuilds_dp_sgd_from_build_jobs_output(tmp_path):
    """The executor's DP-SGD is DPSGDSettings.from_dict of what build_job wrote, equal to the spec's: one parser,
    no second validation path; local training is chosen once, when the executor is made."""
    from consortium.executors.trainer import SiteTrainer
    from consortium.executors.training import DPSGDTraining, PlainTraining

    dp = load_job_spec("fedavg_dp", REPO / "jobs")
    args = _trainer_args(dp, tmp_path / "dp")
    trainer = SiteTrainer(**args)
    assert isinstance(trainer.training, DPSGDTraining) and trainer.training.private
    assert trainer.training.settings == dp.dp_sgd and trainer.dp_sgd == dp.dp_sgd.to_dict()
    plain = SiteTrainer(**_trainer_args(load_job_spec("fedavg", REPO / "jobs"), tmp_path / "plain"))
    assert isinstance(plain.training, PlainTraining) and not plain.training.private
    with pytest.raises(ValueError, match="dp_sgd.delta: missing"):  # the same parser as the job file's
        SiteTrainer(**{**args, "dp_sgd": {"target_epsilon": 8, "max_grad_norm": 1.0}})


def test_executor_defaults_are_the_job_specs():
    """One set of defaults: every executor argument with a default takes JobSpec's."""
    import inspect

    from consortium.executors.trainer import SiteTrainer
    from consortium.jobs import JOB_DEFAULTS

    params = inspect.signature(SiteTrainer.__init__).parameters.values()
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    assert set(defaults) - {"dp_sgd"} <= set(JOB_DEFAULTS)
    assert all(JOB_DEFAULTS[name] == value for name, value in defaults.items())
