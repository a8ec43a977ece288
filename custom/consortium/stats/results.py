"""The pre-flight's results in runs/preflight/: FLARE's statistics, our summary, the harmonisation file, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from consortium.stats.report import HARMONISATION_FILE, STATS_FILE, SUMMARY_FILE, write_preflight_report


def write_results(out: Path, stats_file: Path) -> dict:
    """Copy FLARE's statistics JSON to OUT, write our summary, the harmonisation file and the report; print them."""
    from consortium.stats.summary import summarise

    out.mkdir(parents=True, exist_ok=True)
    if stats_file.resolve() != (out / STATS_FILE).resolve():
        shutil.copy2(stats_file, out / STATS_FILE)
    summary = summarise(json.loads((out / STATS_FILE).read_text()))
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    (out / HARMONISATION_FILE).write_text(json.dumps(summary["harmonisation"], indent=1))
    files = write_preflight_report(out)
    for site, row in summary["sites"].items():
        print(
            f"  {site:14s} {row['patients']} patients, {row['slices']} slices; body HU {_f(row['body_hu_mean'])} "
            f"± {_f(row['body_hu_std'])}; lesion HU {_f(row['lesion_hu_mean'])}; "
            f"prevalence {_f(row['prevalence'], '.2f')}"
        )
    for flag in summary["flags"]:
        print(f"  FLAG {flag['message']}")
    if not summary["flags"]:
        print("  no site differs from the consortium beyond the limits")
    print(f"statistics:    {out / STATS_FILE} (FLARE's federated statistics)")
    print(f"summary:       {out / SUMMARY_FILE}")
    print(f"harmonisation: {out / HARMONISATION_FILE}")
    print(f"report:        {files['html']}")
    return summary


def _f(value, fmt: str = ".1f") -> str:
    return "withheld" if value is None else f"{value:{fmt}}"


def download_results(sess, job_id: str, out: Path) -> int:
    """A finished pre-flight job's results (FLARE's statistics JSON in the server's job folder) into OUT."""
    from consortium.deploy.admin import AdminError

    folder = Path(sess.download_job_result(job_id))
    found = sorted(folder.rglob(STATS_FILE))
    if not found:
        raise AdminError(f"job {job_id}: no {STATS_FILE} in its results ({folder}); see `consortium logs {job_id}`")
    shutil.rmtree(out / "download", ignore_errors=True)
    shutil.copytree(folder, out / "download")
    write_results(out, found[0])
    return 0
