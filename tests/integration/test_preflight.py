"""The pre-flight in the real FLARE simulator on the demo hospitals' own profiles: the flags it must raise."""

import json
import os
import subprocess
import sys

import pytest

from consortium.cli import main
from consortium.config import load_site_configs
from consortium.data.synth import generate_site
from consortium.stats import features as F
from tests.conftest import REPO, write_site_configs

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_sites(tmp_path):
    """hospital-a/b/c with the profiles of site_configs/ (b: +25 HU offset, c: hyperdense lesions), demo size."""
    bodies = {p.stem: p.read_text() for p in sorted((REPO / "site_configs").glob("hospital-*.yaml"))}
    sites = load_site_configs(write_site_configs(tmp_path / "site_configs", bodies))
    for cfg in sites.values():
        generate_site(cfg, seed=0, size=64)
    return sites


def test_preflight_flags_the_offset_and_the_hyperdense_lesions(demo_sites, tmp_path):
    site_configs = next(iter(demo_sites.values())).source.parent
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "consortium.cli", "--site-configs", str(site_configs), "--runs", str(runs),
           "simulate", "preflight"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # nvflare writes ~/.nvflare
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pre-flight at hospital-c: 56 slices of 14 patients read" in proc.stdout

    out = runs / F.PREFLIGHT_JOB
    summary = json.loads((out / "preflight.json").read_text())
    found = {(f["site"], f["check"]) for f in summary["flags"]}
    print("\n".join(f["message"] for f in summary["flags"]))
    assert ("hospital-b", "body HU mean") in found
    assert ("hospital-c", "lesion contrast") in found
    assert not [f for f in found if f[0] == "hospital-a"], summary["flags"]

    harmonisation = json.loads((out / "harmonisation.json").read_text())
    assert set(harmonisation) == set(demo_sites)
    b = harmonisation["hospital-b"]
    assert b["recommended"] and b["hu_scale"] == 1.0 and -25 < b["hu_offset"] < -10
    assert not harmonisation["hospital-a"]["recommended"]

    # FLARE's own output: per-site statistics (min_count cleanser applied) and its Global, which our pooled
    # reference reproduces where every site released the feature
    fed = json.loads((out / "statistics.json").read_text())
    assert fed[F.BODY_HU]["mean"]["Global"][F.DATASET] == pytest.approx(
        summary["consortium"][F.BODY_HU]["mean"], abs=1e-3
    )
    assert fed[F.SLICES_PER_PATIENT]["count"]["hospital-c"][F.DATASET] == 14
    assert len(fed[F.BODY_HU]["histogram"]["hospital-a"][F.DATASET]) == F.HU_HIST_BINS
    assert "hospital-c" not in fed[F.LESION_AREA].get("histogram", {})  # 30 values: too few for 10 bins
    assert summary["sites"]["hospital-a"]["manufacturer"] == {"Acme Medical": 48}

    report = (out / "report" / "preflight.md").read_text()
    assert "hospital-b: body HU mean" in report and (out / "report" / "preflight.html").is_file()
    assert main(["--runs", str(runs), "report", "preflight"]) == 0  # `consortium report preflight` re-renders
