"""bench/evaluation.py's held-out test cohort: complete, generated once, safe when bench processes share it."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest

from tests.conftest import REPO, make_sites


@pytest.fixture(scope="module")
def bench():
    # run as `python bench/evaluation.py` puts bench/ on the path, where its sibling evaluation_tables.py is
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_evaluation", REPO / "bench" / "evaluation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


@pytest.fixture
def sites(tmp_path):
    return make_sites(tmp_path / "site_configs", size=32, patients=2)


def test_cohort_is_complete_and_generated_once(bench, sites, tmp_path):
    out = tmp_path / "cohort"
    loaders = bench.test_cohorts(sites, 3, out)
    slices = {name: cfg.synthetic.slices_per_patient for name, cfg in sites.items()}
    assert {name: len(loader.dataset) for name, loader in loaders.items()} == {n: 3 * s for n, s in slices.items()}
    assert sorted(p.name for p in (out / "3_patients").iterdir()) == sorted(sites)  # no staging folder left
    manifest = out / "3_patients" / "site-a" / "manifest.csv"
    written = manifest.stat().st_mtime_ns
    bench.test_cohorts(sites, 3, out)
    assert manifest.stat().st_mtime_ns == written  # reused, not regenerated


def test_another_process_finishing_first_wins(bench, sites, tmp_path, monkeypatch):
    """Two bench processes generate the same cohort: the one that renames second keeps the first's files."""
    real = bench.generate_site

    def generate_while_another_process_finishes(cfg, **kwargs):
        final = cfg.data.dir.parent / cfg.data.dir.name.split(".staging-")[0].lstrip(".")
        real(replace(cfg, data=replace(cfg.data, dir=final)), **kwargs)
        return real(cfg, **kwargs)

    monkeypatch.setattr(bench, "generate_site", generate_while_another_process_finishes)
    loaders = bench.test_cohorts(sites, 2, tmp_path / "cohort")
    assert all(len(loader.dataset) == 2 * sites[name].synthetic.slices_per_patient for name, loader in loaders.items())
    assert sorted(p.name for p in (tmp_path / "cohort" / "2_patients").iterdir()) == sorted(sites)


def test_incomplete_cohort_folder_is_refused(bench, sites, tmp_path):
    leftover = tmp_path / "cohort" / "2_patients" / "site-a"
    leftover.mkdir(parents=True)
    (leftover / "half_written.dcm").write_bytes(b"")
    with pytest.raises(SystemExit, match=f"{leftover}.*incomplete.*delete it"):
        bench.test_cohorts(sites, 2, tmp_path / "cohort")
