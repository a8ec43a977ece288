"""A consortium definition on free loopback ports, and a CLI runner with HOME and PATH isolated."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from consortium.config import load_site_configs
from consortium.data.synth import generate_site
from consortium.deploy.poc import PocPaths, free_port, kit_processes, read_state
from tests.conftest import REPO, TINY_A, TINY_B, write_site_configs

PROJECT_ADMIN = "  - {name: admin@test.org, org: test_ops, role: project_admin}\n"


def charter_yaml() -> str:
    """The repository's charter (provisioning/consortium.yaml), as the `charter:` section of a test consortium."""
    from consortium.governance.charter import load_charter

    charter = load_charter(REPO / "provisioning" / "consortium.yaml")
    return yaml.safe_dump({"charter": charter.to_dict()}, sort_keys=False)


def write_consortium(path: Path, admins: str = PROJECT_ADMIN) -> Path:
    """A consortium definition on free ports; `admins`: the YAML list items of its `admins:`."""
    fed, admin = free_port(), free_port()
    while admin == fed:
        admin = free_port()
    path.write_text(
        f"""project: test_consortium
description: system test
server: {{name: localhost, org: test_ops, fed_learn_port: {fed}, admin_port: {admin}}}
admins:
{admins.rstrip()}
he: {{poly_modulus_degree: 8192, coeff_mod_bit_sizes: [60, 40, 40], scale_bits: 40}}
{charter_yaml()}"""
    )
    return path


def cli_runner(site_configs: Path, tmp_path: Path, admins: str = PROJECT_ADMIN):
    """`run(*args)`: `consortium ...` against `site_configs` with a temp workspace, runs folder and HOME."""
    consortium = write_consortium(tmp_path / "consortium.yaml", admins)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    base = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--jobs", str(REPO / "jobs")]
    base += ["--consortium", str(consortium), "--workspace", str(tmp_path / "ws"), "--runs", str(tmp_path / "runs")]

    def run(*args, timeout=600, check=True, **kw):
        proc = subprocess.run(base + list(args), env=env, capture_output=True, text=True, timeout=timeout, **kw)
        if check:
            assert proc.returncode == 0, (
                f"consortium {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    run.env, run.tmp = env, tmp_path
    return run


@pytest.fixture
def cli(tiny_sites, tmp_path):
    """Run `consortium ...` against the tiny sites with a temp workspace, runs folder and HOME."""
    return cli_runner(next(iter(tiny_sites.values())).source.parent, tmp_path)


def wait_for(check, what: str, timeout: float = 300, poll: float = 2.0):
    """A guard against hanging for ever, never a timing assertion."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = check()
        if result:
            return result
        time.sleep(poll)
    raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")


def three_site_cli(tmp_path: Path, site_c: str):
    """A runner for a local consortium of the two tiny hospitals and `site_c` (its site config), with generated
    data; after the test (a generator for fixtures) the consortium is stopped and no kit process may be left."""
    folder = write_site_configs(tmp_path / "site_configs", {"site-a": TINY_A, "site-b": TINY_B, "site-c": site_c})
    for cfg in load_site_configs(folder).values():
        generate_site(cfg, seed=0, size=32)
    run = cli_runner(folder, tmp_path)
    run.paths = PocPaths(tmp_path / "ws" / "poc-consortium")
    yield run
    run("poc", "down", check=False)
    assert not kit_processes(run.paths), "processes of the consortium left running"


def kit(cli, name: str) -> Path:
    """The folder of participant `name`'s kit in the runner's local consortium."""
    return cli.paths.prod(read_state(cli.paths)["project"]) / name
