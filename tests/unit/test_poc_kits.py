"""POC kits are reused only while everything they are made from is unchanged (deploy/poc_kits.py); the real
`poc up` reuse is checked with processes in tests/system/test_poc_reuse.py."""

import shutil
from importlib import metadata
from pathlib import Path

from consortium.deploy.poc_kits import KitCache, kit_inputs
from tests.conftest import REPO, TINY_A, TINY_B, write_site_configs


def _setup(tmp_path: Path):
    sites = write_site_configs(tmp_path / "site_configs", {"site-a": TINY_A, "site-b": TINY_B})
    consortium = tmp_path / "consortium.yaml"
    consortium.write_text((REPO / "provisioning" / "consortium.yaml").read_text())
    project = tmp_path / "root" / "project.yml"
    project.parent.mkdir()
    project.write_text("name: p\n")
    poc = tmp_path / "root" / "poc"
    (poc / "p" / "prod_00" / "site-a" / "startup").mkdir(parents=True)
    (poc / "p" / "prod_00" / "site-a" / "startup" / "client.key").write_text("key")
    return sites, consortium, project, poc


def test_unchanged_inputs_reuse_the_pristine_kits(tmp_path):
    sites, consortium, project, poc = _setup(tmp_path)
    cache = KitCache(tmp_path / "root")
    inputs = kit_inputs(project, consortium, sites)
    assert cache.changed(inputs) == ["no kits provisioned yet"]
    cache.save(poc, inputs)
    (poc / "p" / "prod_00" / "site-a" / "log.txt").write_text("a run's log")  # what a run leaves in the kits
    assert cache.changed(kit_inputs(project, consortium, sites)) == []
    assert kit_inputs(project, consortium, sites) == kit_inputs(project, consortium, Path(str(sites) + "/."))
    cache.restore(poc)
    assert (poc / "p" / "prod_00" / "site-a" / "startup" / "client.key").read_text() == "key"
    assert not (poc / "p" / "prod_00" / "site-a" / "log.txt").exists(), "a reused consortium starts clean"


def test_each_kind_of_change_provisions_again_and_is_named(tmp_path):
    sites, consortium, project, poc = _setup(tmp_path)
    cache = KitCache(tmp_path / "root")
    cache.save(poc, kit_inputs(project, consortium, sites))

    (sites / "site-b.yaml").write_text(TINY_B + "approved_purposes: []\n")
    assert cache.changed(kit_inputs(project, consortium, sites)) == [f"{(sites / 'site-b.yaml').resolve()} changed"]
    (sites / "site-b.yaml").write_text(TINY_B)
    assert cache.changed(kit_inputs(project, consortium, sites)) == []

    (sites / "site-c.yaml").write_text(TINY_A)  # a hospital added
    assert cache.changed(kit_inputs(project, consortium, sites)) == [f"{(sites / 'site-c.yaml').resolve()} changed"]
    (sites / "site-c.yaml").unlink()

    consortium.write_text(consortium.read_text() + "\n# edited\n")
    assert cache.changed(kit_inputs(project, consortium, sites)) == [f"{consortium.resolve()} changed"]
    cache.save(poc, kit_inputs(project, consortium, sites))

    project.write_text("name: p\nports: changed\n")  # e.g. other free ports
    assert cache.changed(kit_inputs(project, consortium, sites)) == ["project.yml changed"]


def test_a_copy_cut_short_is_not_reused(tmp_path):
    sites, consortium, project, poc = _setup(tmp_path)
    cache = KitCache(tmp_path / "root")
    inputs = kit_inputs(project, consortium, sites)
    cache.save(poc, inputs)
    cache.stamp.write_text("{not json")
    assert cache.changed(inputs) == ["no kits provisioned yet"]
    cache.save(poc, inputs)
    shutil.rmtree(cache.copy)
    assert cache.changed(inputs) == ["no kits provisioned yet"]


def test_kit_code_and_nvflare_version_are_inputs(tmp_path):
    sites, consortium, project, _ = _setup(tmp_path)
    inputs = kit_inputs(project, consortium, sites)
    assert "kit code (consortium/deploy, governance, audit_trail, config, constants.py)" in inputs
    assert inputs["nvflare"] == metadata.version("nvflare")
