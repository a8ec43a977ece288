"""`consortium report RUN`: one page that answers "is the shared model better for my hospital?".

Reads a run folder (`metrics.json` from the server workflow, optional baselines from `consortium baseline`)
and writes `report/report.html` (self-contained, plots embedded), `report/report.md` (plots next to it as
PNG), and TensorBoard scalars under `report/tensorboard/`.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from consortium import constants as C

REPORT_DIR = "report"


class ReportError(ValueError):
    """The run folder cannot be reported on; the message says what to run first."""


@dataclass
class Run:
    folder: Path
    history: dict
    local: dict | None = None  # baselines: {trained_on: {"scores": {site: x}}}
    pooled: dict | None = None
    baseline_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def meta(self) -> dict:
        return self.history.get("meta") or {}

    @property
    def metric(self) -> str:
        if self.meta.get("metric"):
            return self.meta["metric"]
        try:
            from consortium.tasks import get_task

            return getattr(get_task(self.history.get("task", "seg2d")), "METRIC_NAME", "score")
        except (ValueError, TypeError):
            return "score"

    @property
    def sites(self) -> list[str]:
        names = set(self.history.get("final") or {})
        for r in self.history.get("rounds", []):
            names |= set(r.get("sites") or {})
        return sorted(names)

    def final_score(self, site: str, key: str = C.METRIC_SCORE) -> float | None:
        return ((self.history.get("final") or {}).get(site) or {}).get(key)

    def local_score(self, trained_on: str, data_of: str) -> float | None:
        """The score of the model trained at `trained_on` alone, on `data_of`'s validation data."""
        return ((self.local or {}).get(trained_on) or {}).get("scores", {}).get(data_of)


def load_run(folder: Path, baselines: Path | None = None) -> Run:
    folder = Path(folder)
    path = folder / C.METRICS_FILE
    if not path.is_file():
        raise ReportError(
            f"{path} not found: run a job first, e.g. `consortium simulate fedavg` or `consortium submit fedavg`"
        )
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); run the job again") from None
    if not history.get("rounds"):
        raise ReportError(f"{path} has no finished round: the job failed or is still running (`consortium status`)")
    run = Run(folder=folder, history=history)
    run.baseline_dir = Path(baselines) if baselines else folder.parent / "baselines"
    for kind in ("local", "pooled"):
        file = run.baseline_dir / f"{kind}.json"
        if file.is_file():
            data = json.loads(file.read_text())
            results = data.get("results") or {}
            for res in results.values():  # files written before the key was task-neutral call it "dice"
                if "scores" not in res and "dice" in res:
                    res["scores"] = res["dice"]
            setattr(run, kind, results)
            if data.get("job") and data.get("job") != run.meta.get("job", data.get("job")):
                run.notes.append(f"the {kind} baseline was trained with the settings of job '{data['job']}'")
    if run.local is None:  # the job's own train_alone models (the base job trains them; see report_alone.py)
        from consortium.report_alone import alone_results

        run.local = alone_results(history)
    return run


# -- plots -------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(run: Run, out: Path) -> Path:
    """Per site: score of the global model it received each round (solid) and after local training (dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = run.history["rounds"]
    for i, site in enumerate(run.sites):
        color = f"C{i}"
        xs, received, local = [], [], []
        for r in rounds:
            m = (r.get("sites") or {}).get(site)
            if m and m.get(C.METRIC_SCORE) is not None:
                xs.append(r["round"])
                received.append(m[C.METRIC_SCORE])
                local.append(m.get(C.METRIC_LOCAL_SCORE))
        ax.plot(xs, received, "-o", color=color, markersize=3, label=f"{site}: global model")
        if any(v is not None for v in local):
            ax.plot(xs, local, "--", color=color, alpha=0.6, label=f"{site}: after local training")
        final = run.final_score(site)
        if final is not None:
            ax.plot([len(rounds)], [final], "*", color=color, markersize=10)
    ax.set_xlabel("round (the star: final global model)")
    ax.set_ylabel(f"validation {run.metric}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Learning curves per site")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_cross_site(run: Run, out: Path) -> Path | None:
    matrix = run.history.get("cross_site")
    if not matrix:
        return None
    plt = _plt()
    models, sites = matrix["models"], matrix["sites"]
    values = [[matrix["scores"].get(m, {}).get(s) for s in sites] for m in models]
    grid = [[float("nan") if v is None else v for v in row] for row in values]
    fig, ax = plt.subplots(figsize=(1.4 * len(sites) + 2.5, 0.6 * len(models) + 1.8))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(sites)), sites, rotation=20)
    ax.set_yticks(range(len(models)), [f"{m} model" for m in models])
    ax.set_xlabel("validation data of site")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    fig.colorbar(image, ax=ax, label=run.metric)
    ax.set_title("Cross-site evaluation")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def privacy_by_round(run: Run) -> dict[str, list[tuple[int, float]]]:
    spent: dict[str, list[tuple[int, float]]] = {}
    for r in run.history["rounds"]:
        for site, m in (r.get("sites") or {}).items():
            if m.get(C.METRIC_DP_EPSILON) is not None:
                spent.setdefault(site, []).append((r["round"], float(m[C.METRIC_DP_EPSILON])))
    return spent


def plot_privacy(run: Run, out: Path) -> Path | None:
    spent = privacy_by_round(run)
    if not spent:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (site, points) in enumerate(sorted(spent.items())):
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o", markersize=3, color=f"C{i}", label=site)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Privacy spent per site (DP-SGD accountant)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- tables ------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def answer_rows(run: Run) -> list[list[str]]:
    """Per site: the global model vs what the site could train alone, and the verdict."""
    rows = []
    for site in run.sites:
        shared = run.final_score(site)
        tuned = run.final_score(site, C.METRIC_PERSONAL_SCORE)
        alone = run.local_score(site, site)
        best = max(v for v in (shared, tuned) if v is not None) if shared is not None or tuned is not None else None
        if best is None:
            verdict = "no final evaluation (job did not finish)"
        elif alone is None:
            verdict = "no local-only baseline yet"
        elif best > alone:
            which = "fine-tuned" if tuned is not None and tuned >= (shared or 0) else "shared"
            verdict = f"yes: the {which} model scores {best - alone:+.3f} over training alone"
        else:
            verdict = f"no: training alone scores {alone - best:+.3f} higher"
        rows.append([site, _fmt(shared), _fmt(tuned), _fmt(alone), verdict, _others(run, site)])
    return rows


def _others(run: Run, site: str) -> str:
    """The global model vs the site's local-only model on the *other* sites' data (generalisation)."""
    others = [s for s in run.sites if s != site]
    shared = [run.final_score(s) for s in others]
    alone = [run.local_score(site, s) for s in others]
    if not others or any(v is None for v in shared):
        return "–"
    text = f"shared {sum(shared) / len(shared):.3f}"
    if all(v is not None for v in alone):
        text += f" vs alone {sum(alone) / len(alone):.3f}"
    return text


def comparison_rows(run: Run) -> list[list[str]]:
    """Per site: federated (global, fine-tuned), each local-only model, pooled."""
    rows = [["federated: global model"] + [_fmt(run.final_score(s)) for s in run.sites]]
    if any(run.final_score(s, C.METRIC_PERSONAL_SCORE) is not None for s in run.sites):
        rows.append(
            ["federated + fine-tuning at the site"]
            + [_fmt(run.final_score(s, C.METRIC_PERSONAL_SCORE)) for s in run.sites]
        )
    for trained_on, res in sorted((run.local or {}).items()):
        rows.append([f"local only: trained at {trained_on}"] + [_fmt(res["scores"].get(s)) for s in run.sites])
    for res in (run.pooled or {}).values():
        rows.append(["pooled data (reference)"] + [_fmt(res["scores"].get(s)) for s in run.sites])
    return rows


def metadata_rows(run: Run) -> list[list[str]]:
    meta, history = run.meta, run.history
    # the workflow records the job's DP settings under the job spec's own names (run_info)
    dp = [f"{name} {json.dumps(meta[name])}" for name in ("dp_sgd", "dp_update") if meta.get(name)]
    rows = [
        ["job", str(meta.get("job", run.folder.name))],
        ["task", f"{history.get('task', '?')} (metric: {run.metric})"],
        ["sites", ", ".join(run.sites)],
        ["rounds", f"{len(history['rounds'])} of {history.get('num_rounds', meta.get('rounds', '?'))}"],
        ["algorithm", str(meta.get("algorithm", "fedavg"))],
        ["encrypted aggregation (HE)", "on" if meta.get("he") else ("off" if "he" in meta else "not recorded")],
        ["differential privacy", "; ".join(dp) if dp else "off"],
    ]
    for key in ("local_epochs", "lr", "weighting", "finetune_epochs"):
        if key in meta:
            rows.append([key.replace("_", " "), str(meta[key])])
    if history.get("wall_seconds"):
        rows.append(["wall time", f"{history['wall_seconds']:.0f} s"])
    return rows


def availability_sections(history: dict) -> list:
    """'Sites lost or dropped' (every round in which not every site contributed, with the reasons) and
    'Interruptions' (resumes after a server restart, or an early end): empty when nothing went wrong."""
    sections, rows = [], []
    for r in history.get("rounds", []):
        missing = [f"{s}: {why}" for s, why in sorted((r.get("dropped") or {}).items())]
        missing += [f"{s}: absent since an earlier round, not awaited" for s in r.get("not_awaited") or []]
        if missing:
            rows.append([str(r["round"] + 1), ", ".join(r.get("contributed") or []) or "none", "; ".join(missing)])
    if rows:
        text = "Rounds in which not every site contributed; each was aggregated from the sites that did."
        sections.append(_section("Sites lost or dropped", text, ["round", "contributed", "dropped (why)"], rows))
    notes = [
        f"job {e['job']} resumed job {e['from_job']} after its round {e['after_round']}"
        for e in history.get("resumed", [])
    ]
    if history.get("stopped"):
        notes.append(f"stopped early: {history['stopped']}")
    if notes:
        sections.append(_section("Interruptions", "; ".join(notes) + ". The rounds above form one continuous run."))
    return sections


def _message(entry) -> str:
    """A site error (text) or privacy refusal ({"round", "reason"}) as one line."""
    if isinstance(entry, dict):
        return f"round {entry.get('round', '?')}: {entry.get('reason', '')}"
    return str(entry)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def _section(title: str, text: str, header: list[str] | None = None, rows=None) -> tuple[str, str, str]:
    """(title, markdown body, html body): a paragraph of `text` (if any), then the table (if `header`)."""
    md = [text] if text else []
    body = f"<p>{html.escape(text)}</p>" if text else ""
    if header is not None:
        md.append(_md_table(header, rows))
        body += _html_table(header, rows)
    return title, "\n\n".join(md), body


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
    from consortium.report_alone import plot_shared_vs_alone

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
