"""The report's tables as rows of text: the answer per site, the comparison, the run's settings, availability."""

from __future__ import annotations

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.page import Section, _section
from consortium.report.privacy import dp_line

SHOWN_SETTINGS = (R.Meta.LOCAL_EPOCHS, R.Meta.LR)  # job settings the run table shows when the record has them


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def answer_rows(run) -> list[list[str]]:
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


def _others(run, site: str) -> str:
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


def comparison_rows(run) -> list[list[str]]:
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


def metadata_rows(run) -> list[list[str]]:
    meta, history = run.meta, run.history
    he = "on" if meta.get(R.Meta.HE) else ("off" if R.Meta.HE in meta else "not recorded")
    rows = [
        ["job", run.job],
        ["task", f"{history.get(R.TASK, '?')} (metric: {run.metric})"],
        ["sites", ", ".join(run.sites)],
        ["rounds", f"{len(run.rounds)} of {history.get(R.NUM_ROUNDS, meta.get(R.Meta.ROUNDS, '?'))}"],
        ["algorithm", str(meta.get(R.Meta.ALGORITHM, "fedavg"))],
        *(
            [["server optimizer", _server_optimizer(meta[R.Meta.SERVER_OPTIMIZER])]]
            if meta.get(R.Meta.SERVER_OPTIMIZER)
            else []
        ),
        ["encrypted aggregation (HE)", he],
        ["differential privacy", dp_line(meta)],
    ]
    for key in SHOWN_SETTINGS:
        if key in meta:
            rows.append([key.replace("_", " "), str(meta[key])])
    if history.get(R.WALL_SECONDS):
        rows.append(["wall time", f"{history[R.WALL_SECONDS]:.0f} s"])
    return rows


def _server_optimizer(settings: dict) -> str:
    """`adam (lr 0.01, beta1 0.9, beta2 0.99, tau 0.001), stepped at every site`."""
    shown = ", ".join(f"{k} {v:g}" for k, v in settings.items() if k != "name")
    return f"{settings.get('name', '?')} ({shown}), stepped at every site"


def availability_sections(history: R.RunRecord) -> list[Section]:
    """'Sites lost or dropped' (every round in which not every site contributed, with the reasons) and
    'Interruptions' (resumes after a server restart, or an early end): empty when nothing went wrong."""
    K, sections, rows = R.Round, [], []
    for r in history.get(R.ROUNDS, []):
        missing = [f"{s}: {why}" for s, why in sorted((r.get(K.DROPPED) or {}).items())]
        missing += [f"{s}: absent since an earlier round, not awaited" for s in r.get(K.NOT_AWAITED) or []]
        if missing:
            rows.append([str(r[K.ROUND] + 1), ", ".join(r.get(K.CONTRIBUTED) or []) or "none", "; ".join(missing)])
    if rows:
        text = "Rounds in which not every site contributed; each was aggregated from the sites that did."
        sections.append(_section("Sites lost or dropped", text, ["round", "contributed", "dropped (why)"], rows))
    notes = [
        f"job {e[R.Resume.JOB]} resumed job {e[R.Resume.FROM_JOB]} after its round {e[R.Resume.AFTER_ROUND]}"
        for e in history.get(R.RESUMED, [])
    ]
    if history.get(R.STOPPED):
        notes.append(f"stopped early: {history[R.STOPPED]}")
    if notes:
        sections.append(_section("Interruptions", "; ".join(notes) + ". The rounds above form one continuous run."))
    return sections


def problem_rows(history: R.RunRecord) -> list[list[str]]:
    """Per site: its own error text, or its privacy refusal as one line."""
    problems = {**(history.get(R.ERRORS) or {}), **(history.get(R.REFUSED) or {})}
    return [[site, _message(entry)] for site, entry in sorted(problems.items())]


def _message(entry) -> str:
    """A site error (text) or privacy refusal (Refusal) as one line."""
    if isinstance(entry, dict):
        return f"round {entry.get(R.Refusal.ROUND, '?')}: {entry.get(R.Refusal.REASON, '')}"
    return str(entry)
