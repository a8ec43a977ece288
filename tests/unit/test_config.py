"""Site configs: the repository's configs validate; bad ones are refused naming file and field."""

import pytest

from consortium.config import ConfigError, load_site_configs
from tests.conftest import REPO, TINY_A, write_site_configs


def test_repository_site_configs_validate():
    sites = load_site_configs(REPO / "site_configs")
    assert list(sites) == ["hospital-a", "hospital-b", "hospital-c"]
    assert len({s.org for s in sites.values()}) == 3
    assert all(s.data.dir.is_absolute() and s.data.dir.name == name for name, s in sites.items())
    assert sites["hospital-a"].synthetic.patients > sites["hospital-c"].synthetic.patients


@pytest.mark.parametrize(
    "body, field",
    [
        (TINY_A + "colour: blue\n", "'colour'"),
        (TINY_A.replace("org: site_a", "org: bad-org!"), "'org'"),
        (TINY_A.replace("noise_hu: 8", "noise_hu: loud"), "'synthetic.noise_hu'"),
        (TINY_A.replace("prevalence: 0.9", "prevalence: 1.5"), "'synthetic.prevalence'"),
        (TINY_A.replace("patients: 8", "patients: 8\n  scanner: x"), "'synthetic.scanner'"),
        (TINY_A + "resources:\n  num_threads: 0\n", "'resources.num_threads'"),
        (TINY_A + "resources:\n  num_threads: 2.5\n", "'resources.num_threads'"),  # not truncated to 2
        (TINY_A.replace("patients: 8", "patients: 8.5"), "'synthetic.patients'"),
        (TINY_A + "data:\n  dir: d\n  label_map: {1: lesion}\n", "'data.label_map'"),
        (TINY_A + "site: other\n", "'site'"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, body, field):
    folder = write_site_configs(tmp_path, {"site-a": body})
    with pytest.raises(ConfigError) as err:
        load_site_configs(folder)
    assert "site-a.yaml" in str(err.value) and field in str(err.value)


def test_duplicate_site_refused(tmp_path):
    folder = write_site_configs(tmp_path, {"site-a": TINY_A})
    (folder / "site-a.yml").write_text(TINY_A)
    with pytest.raises(ConfigError, match="also defined"):
        load_site_configs(folder)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_configs(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no site configs"):
        load_site_configs(tmp_path)


def test_missing_data_folder_names_file_and_field(tmp_path):
    from consortium.config import require_data_dirs

    sites = load_site_configs(write_site_configs(tmp_path, {"site-a": TINY_A}))
    with pytest.raises(ConfigError) as err:
        require_data_dirs(sites)
    assert (
        "site-a.yaml" in str(err.value) and "'data.dir'" in str(err.value) and "consortium data synth" in str(err.value)
    )
