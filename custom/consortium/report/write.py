"""Write a run's report: report.html (self-contained), report.md with PNGs, TensorBoard scalars."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from consortium import constants as C
from consortium.report.plots import plot_cross_site, plot_learning_curves, plot_privacy, privacy_by_round
from consortium.report.run import REPORT_DIR, Run, load_run
from consortium.report.tables import (
    _fmt,
    _message,
    _section,
    answer_rows,
    availability_sections,
    comparison_rows,
    metadata_rows,
)


# -- TensorBoard -------------------------------------------------------------------------------------------
def write_tensorboard(run: Run, folder: Path) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(folder))
    keys = (C.METRIC_SCORE, C.METRIC_LOCAL_SCORE, C.METRIC_TRAIN_LOSS, C.METRIC_DP_EPSILON)
    for r in run.history["rounds"]:
        for site, m in (r.get("sites") or {}).items():
            for key in keys:
                if m.get(key) is not None:
                    writer.add_scalar(f"{key}/{site}", float(m[key]), r["round"])
        if r.get("seconds") is not None:
            writer.add_scalar("round_seconds", float(r["seconds"]), r["round"])
    last = len(run.history["rounds"])
    for site in run.sites:
        if run.final_score(site) is not None:
            writer.add_scalar(f"final_{C.METRIC_SCORE}/{site}", float(run.final_score(site)), last)
    writer.close()
    return folder


# -- the report --------------------------------------------------------------------------------------------
def print_job_summary(folder: Path, history: dict, headline: str, log: Path | None = None) -> None:
    """What simulate and submit print at the end of a job: the final scores, where the files are, the report."""
    print(f"{headline}final global model, validation {(history.get('meta') or {}).get('metric', 'score')} per site:")
    final = sorted(history.get("final", {}).items())
    width = max([14] + [len(site) for site, _ in final])  # long site names keep the column aligned
    for site, m in final:
        print(f"  {site:{width}s} {m.get(C.METRIC_SCORE, float('nan')):.3f}")
    print(f"global model: {folder / C.GLOBAL_MODEL_FILE}")
    print(f"metrics:      {folder / C.METRICS_FILE}")
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


def html_page(title: str, body: list[str], max_width: int = 960) -> str:
    """A self-contained HTML page (plain tables, embedded images) around `body`."""
    style = (
        f"body{{font-family:sans-serif;max-width:{max_width}px;margin:2em auto;color:#222}}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(run: Run) -> dict[str, Path]:
    out = run.folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    from consortium.report.alone import plot_shared_vs_alone

    plots = {
        "answer": plot_shared_vs_alone(run, out / "shared_vs_alone.png"),
        "learning_curves": plot_learning_curves(run, out / "learning_curves.png"),
        "cross_site": plot_cross_site(run, out / "cross_site.png"),
        "privacy": plot_privacy(run, out / "privacy.png"),
    }
    metric = run.metric
    baseline_cmd = f"consortium baseline local --job {run.meta.get('job', run.folder.name)}"
    pooled_cmd = f"consortium baseline pooled --job {run.meta.get('job', run.folder.name)}"
    sections: list[tuple[str, str, str]] = []  # (title, markdown body, html body)

    header = ["site", "global model", "fine-tuned at the site", "trained alone", "better than training alone?"]
    header.append("on the other sites' data")
    rows = answer_rows(run)
    text = (
        f"Validation {metric} on each hospital's own data; the last column: mean {metric} on the other "
        "hospitals' data, of the shared model and of this hospital's model trained alone."
    )
    if run.local is None:
        text += (
            f" No model trained alone: the job has `train_alone: false` and there is no local-only baseline in "
            f"{run.baseline_dir}; run `{baseline_cmd}` (with the run's --site-configs and --runs) to answer it."
        )
    elif run.history.get("alone"):
        text += (
            " 'Trained alone': in this run each hospital also trained the same initial model on its own data "
            "only, with the job's rounds x local epochs and learning-rate schedule."
        )
    sections.append(_section("Is the shared model better for my hospital?", text, header, rows))
    sections.append(_section("Run", "", ["setting", "value"], metadata_rows(run)))

    text = "Solid: the global model each site received at the start of a round; dashed: after its local training."
    sections.append(_section("Learning curves", text))

    matrix = run.history.get("cross_site")
    if matrix:
        header = ["model \\ data of"] + matrix["sites"]
        rows = [[m] + [_fmt(matrix["scores"].get(m, {}).get(s)) for s in matrix["sites"]] for m in matrix["models"]]
        text = (
            "Every model on every site's validation data (FLARE cross-site evaluation). A site's model is the "
            "model it trained alone (train_alone), else the final global model fine-tuned at that site, or its "
            "last local training if the job does neither."
        )
        sections.append(_section("Cross-site evaluation", text, header, rows))
    else:
        text = "This run has no cross-site evaluation (job setting `cross_site: false`, or it did not finish)."
        sections.append(_section("Cross-site evaluation", text))

    header = ["model"] + run.sites
    rows = comparison_rows(run)
    text = f"Validation {metric} per site."
    if run.local is None or run.pooled is None:
        text += f" Missing baselines: run `{baseline_cmd}` and `{pooled_cmd}`."
    text += " Pooled training is a reference only generated data allow: real hospitals cannot pool."
    sections.append(_section("Federated vs local-only vs pooled", text, header, rows))

    spent = privacy_by_round(run)
    if spent:
        rows = [[site, f"{points[-1][1]:.2f}", str(len(points))] for site, points in sorted(spent.items())]
        delta = next(
            (
                m.get(C.METRIC_DP_DELTA)
                for r in run.history["rounds"]
                for m in r["sites"].values()
                if m.get(C.METRIC_DP_DELTA) is not None
            ),
            None,
        )
        text = f"Cumulative epsilon per site at delta {delta:g}." if delta else "Cumulative epsilon per site."
        header = ["site", "epsilon spent", "rounds trained"]
        sections.append(_section("Privacy spent", text, header, rows))
    else:
        text = "Differential privacy was off in this run: no privacy budget was spent or accounted."
        sections.append(_section("Privacy spent", text))

    problems = {**(run.history.get("errors") or {}), **(run.history.get("refused") or {})}
    if problems:
        rows = [[s, _message(msg)] for s, msg in sorted(problems.items())]
        sections.append(_section("Site errors and refusals", "", ["site", "message"], rows))
    sections += availability_sections(run.history)
    if run.notes:
        text = "; ".join(run.notes)
        sections.append(_section("Notes", text))

    plot_for = {"Is the shared model better for my hospital?": "answer", "Learning curves": "learning_curves",
                "Cross-site evaluation": "cross_site", "Privacy spent": "privacy"}  # fmt: skip
    title = f"Consortium report: {run.meta.get('job', run.folder.name)}"
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, md_text, html_text in sections:
        md += [f"## {name}", "", md_text, ""]
        body += [f"<h2>{html.escape(name)}</h2>", html_text]
        png = plots.get(plot_for.get(name, ""))
        if png is not None:
            md += [f"![{name}]({png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(html_page(title, body))
    files = {"html": out / "report.html", "markdown": out / "report.md"}
    files.update({k: v for k, v in plots.items() if v is not None})
    files["tensorboard"] = write_tensorboard(run, out / "tensorboard")
    return files
