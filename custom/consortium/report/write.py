"""Writing the report of a run: its files (HTML, Markdown, PNG plots, TensorBoard), and the end-of-job summary."""

from __future__ import annotations

from pathlib import Path

from consortium import constants as C
from consortium import runrecord as R
from consortium.report import sections as S
from consortium.report.alone import plot_shared_vs_alone
from consortium.report.load import Run, load_run
from consortium.report.page import render
from consortium.report.plots import plot_cross_site, plot_learning_curves, plot_privacy

REPORT_DIR = "report"
# site metrics of each round written as TensorBoard scalars (tag: key/site)
TENSORBOARD_KEYS = (
    C.METRIC_SCORE,
    C.METRIC_LOCAL_SCORE,
    C.METRIC_TRAIN_LOSS,
    C.METRIC_DP_EPSILON,
    C.METRIC_DP_UPDATE_EPSILON,
)


def write_report(run: Run) -> dict[str, Path]:
    """RUN/report/: report.html (self-contained), report.md with its PNG plots, and tensorboard/."""
    out = run.folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "answer": plot_shared_vs_alone(run, out / "shared_vs_alone.png"),
        "learning_curves": plot_learning_curves(run, out / "learning_curves.png"),
        "cross_site": plot_cross_site(run, out / "cross_site.png"),
        "privacy": plot_privacy(run, out / "privacy.png"),
    }
    plot_of = {S.ANSWER: "answer", S.CURVES: "learning_curves", S.CROSS_SITE: "cross_site", S.PRIVACY: "privacy"}
    title = f"Consortium report: {run.job}"
    md, page = render(title, S.all_sections(run), {name: plots[key] for name, key in plot_of.items()})
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(page)
    files = {"html": out / "report.html", "markdown": out / "report.md"}
    files.update({k: v for k, v in plots.items() if v is not None})
    files["tensorboard"] = write_tensorboard(run, out / "tensorboard")
    return files


def write_tensorboard(run: Run, folder: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(folder))
    for r in run.rounds:
        for site, m in (r.get(R.Round.SITES) or {}).items():
            for key in TENSORBOARD_KEYS:
                if m.get(key) is not None:
                    writer.add_scalar(f"{key}/{site}", float(m[key]), r[R.Round.ROUND])
        if r.get(R.Round.SECONDS) is not None:
            writer.add_scalar("round_seconds", float(r[R.Round.SECONDS]), r[R.Round.ROUND])
    last = len(run.rounds)
    for site in run.sites:
        if run.final_score(site) is not None:
            writer.add_scalar(f"final_{C.METRIC_SCORE}/{site}", float(run.final_score(site)), last)
    writer.close()
    return folder


def print_job_summary(folder: Path, history: R.RunRecord, headline: str, log: Path | None = None) -> None:
    """What simulate and submit print at the end of a job: the final scores, where the files are, the report."""
    metric = (history.get(R.META) or {}).get(R.Meta.METRIC, "score")
    print(f"{headline}final global model, validation {metric} per site:")
    final = sorted(history.get(R.FINAL, {}).items())
    width = max([14] + [len(site) for site, _ in final])  # long site names keep the column aligned
    for site, m in final:
        print(f"  {site:{width}s} {m.get(C.METRIC_SCORE, float('nan')):.3f}")
    print(f"global model: {folder / C.GLOBAL_MODEL_FILE}")
    print(f"metrics:      {folder / R.FILE}")
    if log is not None:
        print(f"log:          {log}")
    report_after_job(folder)


def report_after_job(folder: Path) -> Path | None:
    """Write the report of a run that just finished; a report that cannot be written never fails the job."""
    try:
        path = write_report(load_run(Path(folder)))["html"]
    except Exception as exc:  # noqa: BLE001 - the job's results are safe; say why there is no report
        print(f"no report: {exc}")
        return None
    print(f"report:       {path}")
    return path
