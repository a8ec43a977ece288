"""The report's tables as rows of strings, and their Markdown and HTML forms."""

from __future__ import annotations

import html
import json

from consortium import constants as C
from consortium.report.run import Run


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


def _section(title: str, text: str, header: list[str] | None = None, rows=None) -> tuple[str, str, str]:
    """(title, markdown body, html body): a paragraph of `text` (if any), then the table (if `header`)."""
    md = [text] if text else []
    body = f"<p>{html.escape(text)}</p>" if text else ""
    if header is not None:
        md.append(_md_table(header, rows))
        body += _html_table(header, rows)
    return title, "\n\n".join(md), body
