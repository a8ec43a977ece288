"""The demo exports its job while the consortium starts (cli/submit.export_for_submit): the same folder `submit`
would export, made without a consortium; a resumed submit cannot take one exported beforehand."""

import json

import pytest

from consortium.cli import build_parser
from consortium.cli.run import step_args
from consortium.cli.submit import cmd_submit, export_for_submit
from tests.conftest import REPO


def _submit_args(tmp_path, *extra):
    demo = build_parser().parse_args(["--workspace", str(tmp_path / "ws"), "--jobs", str(REPO / "jobs"), "demo"])
    return step_args(demo, "submit", demo.job, *extra)


def test_the_demo_job_is_exported_without_a_consortium(tmp_path):
    spec, folder = export_for_submit(_submit_args(tmp_path))
    assert spec.name == "fedavg" and folder == tmp_path / "ws" / "jobs" / "fedavg"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["name"] == "fedavg" and (folder / "app" / "config").is_dir()
    assert not (folder / "app" / "custom").exists()  # sites run the installed package, never shipped code


def test_a_resumed_submit_refuses_a_job_exported_beforehand(tmp_path):
    args = _submit_args(tmp_path, "--resume")
    with pytest.raises(ValueError, match="--resume exports the job once it knows which job it continues"):
        cmd_submit(args, exported=export_for_submit(args))
