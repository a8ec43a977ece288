"""The report rendered by real headless Chromium: a valid PNG of the asked width that is not blank."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from consortium.report import load_run, write_report
from consortium.report.png import BROWSERS, RenderError, main, render_png

SITES = ["hospital-a", "hospital-b"]
needs_browser = pytest.mark.skipif(
    not any(shutil.which(b) for b in BROWSERS), reason="no chromium binary on PATH (apt-get install chromium)"
)


def write_run(folder):
    """A three-round, two-site run with cross-site scores, as the server workflow writes metrics.json."""
    rounds = [
        {
            "round": r,
            "seconds": 2.0,
            "sites": {s: {"val_score": 0.2 * r + 0.1 * i, "steps": 5} for i, s in enumerate(SITES)},
        }
        for r in range(3)
    ]
    scores = {"global": {"hospital-a": 0.81, "hospital-b": 0.62}, "hospital-a": {"hospital-a": 0.84, "hospital-b": 0.4}}
    history = {
        "task": "seg2d",
        "num_rounds": 3,
        "meta": {"job": "fedavg", "algorithm": "fedavg", "metric": "Dice", "rounds": 3},
        "rounds": rounds,
        "final": {"hospital-a": {"val_score": 0.81}, "hospital-b": {"val_score": 0.62}},
        "cross_site": {"models": ["global", "hospital-a"], "sites": SITES, "scores": scores},
    }
    run = folder / "fedavg"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(history))
    return run


@needs_browser
def test_report_renders_to_a_non_blank_png_of_the_asked_width(tmp_path, capsys):
    import matplotlib.image as mpimg

    run = write_run(tmp_path)
    write_report(load_run(run))
    assert main([str(run), "--width", "900", "--height", "700"]) == 0  # what `make report-png` runs
    png = run / "report" / "report.png"
    assert f"report screenshot: {png}" in capsys.readouterr().out
    pixels = mpimg.imread(png)  # raises on a truncated or non-PNG file
    assert pixels.shape[:2] == (700, 900)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 50  # text and plots, not a blank or single-colour page


def test_missing_html_and_missing_browser_are_clear_errors(tmp_path, monkeypatch):
    proc = subprocess.run(
        [sys.executable, "-m", "consortium.report.png", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "consortium report" in proc.stderr
    (tmp_path / "r.html").write_text("<p>x</p>")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="apt-get install chromium"):
        render_png(tmp_path / "r.html", tmp_path / "r.png")


def test_a_hung_browser_is_killed_with_its_children_and_its_profile_removed(tmp_path, monkeypatch):
    bin_dir, scratch = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir(), scratch.mkdir()
    fake = bin_dir / "chromium"  # a browser that forks a helper and never finishes
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {tmp_path / 'child.pid'}\nsleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    (tmp_path / "r.html").write_text("<p>x</p>")
    with pytest.raises(RenderError, match="did not finish within 1 s"):
        render_png(tmp_path / "r.html", tmp_path / "r.png", timeout=1)
    child = int((tmp_path / "child.pid").read_text())
    for _ in range(50):  # the helper was killed with the group (a zombie until someone reaps it counts as gone)
        if not _running(child):
            break
        time.sleep(0.1)
    assert not _running(child)
    assert list(scratch.iterdir()) == []  # the temporary user-data-dir is gone


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
