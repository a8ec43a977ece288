"""The report's sections in order, each as (title, markdown, html), from one run."""

from __future__ import annotations

from consortium import runrecord as R
from consortium.report.governance import governance_sections
from consortium.report.page import Section, _section
from consortium.report.privacy import privacy_section
from consortium.report.reveals import reveals_section
from consortium.report.tables import (
    _fmt,
    answer_rows,
    availability_sections,
    comparison_rows,
    metadata_rows,
    problem_rows,
)

ANSWER = "Is the shared model better for my hospital?"
CURVES = "Learning curves"
CROSS_SITE = "Cross-site evaluation"
PRIVACY = "Privacy spent"


def _commands(run) -> tuple[str, str]:
    return f"consortium baseline local --job {run.job}", f"consortium baseline pooled --job {run.job}"


def answer(run) -> Section:
    header = ["site", "global model", "fine-tuned at the site", "trained alone", "better than training alone?"]
    header.append("on the other sites' data")
    text = (
        f"Validation {run.metric} on each hospital's own data; the last column: mean {run.metric} on the other "
        "hospitals' data, of the shared model and of this hospital's model trained alone."
    )
    if run.local is None:
        text += (
            f" No model trained alone: the job has `train_alone: false` and there is no local-only baseline in "
            f"{run.baseline_dir}; run `{_commands(run)[0]}` (with the run's --site-configs and --runs) to answer it."
        )
    elif run.history.get(R.ALONE):
        text += (
            " 'Trained alone': in this run each hospital also trained the same initial model on its own data "
            "only, with the job's rounds x local epochs and learning-rate schedule."
        )
    return _section(ANSWER, text, header, answer_rows(run))


def cross_site(run) -> Section:
    matrix = run.history.get(R.CROSS_SITE)
    if not matrix:
        text = "This run has no cross-site evaluation (job setting `cross_site: false`, or it did not finish)."
        return _section(CROSS_SITE, text)
    sites, scores = matrix[R.Matrix.SITES], matrix[R.Matrix.SCORES]
    header = ["model \\ data of"] + sites
    rows = [[m] + [_fmt(scores.get(m, {}).get(s)) for s in sites] for m in matrix[R.Matrix.MODELS]]
    text = (
        "Every model on every site's validation data (FLARE cross-site evaluation). A site's model is the "
        "model it trained alone (train_alone), else the final global model fine-tuned at that site, or its "
        "last local training if the job does neither."
    )
    return _section(CROSS_SITE, text, header, rows)


def comparison(run) -> Section:
    text = f"Validation {run.metric} per site."
    if run.local is None or run.pooled is None:
        local_cmd, pooled_cmd = _commands(run)
        text += f" Missing baselines: run `{local_cmd}` and `{pooled_cmd}`."
    text += " Pooled training is a reference only generated data allow: real hospitals cannot pool."
    return _section("Federated vs local-only vs pooled", text, ["model"] + run.sites, comparison_rows(run))


def all_sections(run) -> list[Section]:
    text = "Solid: the global model each site received at the start of a round; dashed: after its local training."
    sections = [
        answer(run),
        _section("Run", "", ["setting", "value"], metadata_rows(run)),
        _section(CURVES, text),
        cross_site(run),
        comparison(run),
        privacy_section(run),
        reveals_section(run),
    ]
    problems = problem_rows(run.history)
    if problems:
        sections.append(_section("Site errors and refusals", "", ["site", "message"], problems))
    sections += availability_sections(run.history)
    sections += governance_sections(run)  # purpose, agreement, approvals; exchanges per site (audit trail)
    if run.notes:
        sections.append(_section("Notes", "; ".join(run.notes)))
    return sections
