"""`consortium report`: the report of a training run, or of the pre-flight's statistics."""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_report(args) -> int:
    from consortium.report import ReportError, load_run, write_report
    from consortium.stats.report import SUMMARY_FILE, write_preflight_report

    folder = Path(args.run)
    if not folder.is_dir() and (Path(args.runs) / args.run).is_dir():
        folder = Path(args.runs) / args.run  # a job name: its results under --runs
    if (folder / SUMMARY_FILE).is_file():  # the pre-flight's statistics, not a training run
        files = write_preflight_report(folder)
        print(f"report: {files['html']} (self-contained) and {files['markdown']}")
        return 0
    try:
        run = load_run(folder, Path(args.baselines) if args.baselines else None)
    except ReportError as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 1
    files = write_report(run)
    print(f"report: {files['html']} (self-contained) and {files['markdown']}")
    print(f"TensorBoard: tensorboard --logdir {files['tensorboard']}")
    return 0


def add_report(sub) -> None:
    report = sub.add_parser("report", help="HTML/Markdown report of a run: is the shared model better for each site?")
    report.add_argument("run", help="a run folder (runs/fedavg) or a job name under --runs")
    report.add_argument("--baselines", help="folder with local.json/pooled.json (default: RUN/../baselines)")
    report.set_defaults(fn=cmd_report)
