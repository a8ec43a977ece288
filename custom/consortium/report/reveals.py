"""The report's "What the model reveals": each site's membership-inference audit of the final global model,
in words an ethics board can use, with this run's DP setting and, where one exists, a run with the other."""

from __future__ import annotations

import math
from pathlib import Path

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.page import _section
from consortium.report.privacy import spent_by_setting

TITLE = "What the model reveals"
MEANING = (
    "After training, each hospital attacked the final shared model itself: can it tell its own training "
    "patients (members) from its held-out validation patients (non-members) by how well the model fits them? "
    "AUC is the chance that a member looks more like a member than a non-member does: 0.5 is a coin toss (the "
    "attack learns nothing about who was trained on), 1.0 means membership is plain to see, and below 0.5 the "
    "held-out patients happen to fit the model better (no sign of membership either). TPR at 1% FPR is the "
    "share of members the attack catches while wrongly flagging at most 1 in 100 non-members (with fewer than 100 "
    "held-out patients: while flagging none). The loss attack calls a patient a member when the model fits them "
    "unusually well; the calibrated attack (RMIA) first compares that fit with reference models the hospital "
    "trained on halves of its own patients, so that a patient who is simply easy no longer looks like a member. "
    "'± chance' is twice the spread of the AUC that chance alone gives with this site's numbers of patients: an "
    "AUC within it cannot be told from 0.5. Only these scores left each hospital; they are not noised by DP."
)
SETTING = {R.Meta.DP_SGD: "DP-SGD", R.Meta.DP_UPDATE: "noise on the update"}


def chance_band(n_members: int, n_nonmembers: int) -> float:
    """Twice the standard deviation of the AUC of a useless attack (Mann-Whitney U under the null)."""
    return 2 * math.sqrt((n_members + n_nonmembers + 1) / (12 * n_members * n_nonmembers))


def dp_setting(run) -> dict[str, str]:
    """site -> this run's DP in words: 'epsilon 0.99 (DP-SGD)' per mechanism, or 'no DP'."""
    spent, job_dp = spent_by_setting(run), any(run.meta.get(s) for s in R.DP_SETTINGS)
    out = {}
    for site in run.history.get(R.AUDIT) or {}:
        parts = [
            f"epsilon {by_site[site][-1][1]:.2f} ({SETTING[s]})" for s, by_site in spent.items() if site in by_site
        ]
        out[site] = "; ".join(parts) or ("DP job; no spend recorded" if job_dp else "no DP")
    return out


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def reading(scores: dict) -> str:
    """The site's result in a few words, from the stronger attack's AUC and the chance band."""
    auc = max(v for v in (scores.get("loss_auc"), scores.get("calibrated_auc")) if v is not None)
    band = chance_band(scores["n_members"], scores["n_nonmembers"])
    if auc <= 0.5 + band:
        return "cannot be told from chance"
    return "membership weakly visible" if auc <= 0.6 else "membership visible"


def rows(audit: dict, dp: dict[str, str]) -> list[list[str]]:
    out = []
    for site, s in sorted(audit.items()):
        if s.get(C.METRIC_AUDIT_ERROR):
            out.append([site, dp.get(site, "?"), s[C.METRIC_AUDIT_ERROR], "", "", "", "", "", ""])
            continue
        band = chance_band(s["n_members"], s["n_nonmembers"])
        out.append([site, dp.get(site, "?"), f"{s['n_members']} / {s['n_nonmembers']}", _fmt(s.get("loss_auc")),
                    _fmt(s.get("loss_tpr_at_1pct_fpr")), _fmt(s.get("calibrated_auc")),
                    _fmt(s.get("calibrated_tpr_at_1pct_fpr")), f"± {band:.3f}", reading(s)])  # fmt: skip
    return out


HEADER = ["site", "DP in this run", "members / non-members", "loss AUC", "loss TPR@1%FPR", "calibrated AUC",
          "calibrated TPR@1%FPR", "± chance", "reading"]  # fmt: skip


def other_run(run) -> tuple[Path, R.RunRecord] | None:
    """A run beside this one (same parent folder, same task) with an audit and the other DP setting."""
    has_dp = any(run.meta.get(s) for s in R.DP_SETTINGS)
    for metrics in sorted(Path(run.folder).parent.glob(f"*/{R.FILE}")):
        if metrics.parent.resolve() == Path(run.folder).resolve():
            continue
        try:
            record = R.read(metrics.parent)
        except R.RecordError:
            continue
        meta = record.get(R.META) or {}
        if record.get(R.AUDIT) and record.get(R.TASK) == run.history.get(R.TASK):
            if any(meta.get(s) for s in R.DP_SETTINGS) != has_dp:
                return metrics.parent, record
    return None


def reveals_section(run) -> tuple[str, str, str]:
    audit = run.history.get(R.AUDIT)
    if not audit:
        text = ("This run has no membership-inference audit (job setting `audit: false`, a run recorded before the "
                "audit existed, or the job did not finish).")  # fmt: skip
        return _section(TITLE, text)
    settings = run.meta.get(R.Meta.AUDIT) or {}
    text = MEANING + (f" Reference models: {settings['references']} per site, {settings['epochs']} epochs each, "
                      "trained like the job's own local training (with its DP-SGD if it has one)."
                      if settings.get("references") else " No reference models: the loss attack only.")  # fmt: skip
    header, table = HEADER, rows(audit, dp_setting(run))
    other = other_run(run)
    if other is not None:
        folder, record = other
        meta = record.get(R.META) or {}
        with_dp = "with" if any(meta.get(s) for s in R.DP_SETTINGS) else "without"
        job = meta.get(R.Meta.JOB, folder.name)
        text += f" The last rows are run {folder.name} (job {job}), beside this one, {with_dp} DP."
        from consortium.report.load import Run

        theirs = Run(folder=folder, history=record)
        table += [[f"{r[0]} ({folder.name})", *r[1:]] for r in rows(record[R.AUDIT], dp_setting(theirs))]
    else:
        text += (" No run with the other DP setting lies beside this one; the measured comparison with and "
                 "without DP is in docs/results.md (Membership inference).")  # fmt: skip
    return _section(TITLE, text, header, table)
