"""The report's headline: each hospital's shared model against the model it trained alone in the same run.

A job with `train_alone` (the base job) records each site's alone training in the run record (`alone`), and
its cross-site evaluation scores those models on every site's data (submit_model sends the alone model). From
that the report answers "is the shared model better for my hospital?" without a separate baseline run.
"""

from __future__ import annotations

from pathlib import Path

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.plots import _plt


def alone_results(history: R.RunRecord) -> dict | None:
    """{trained_on: {"scores": {data_of: score}}} of the models trained alone in this run, or None."""
    alone = history.get(R.ALONE) or {}
    if not alone:
        return None
    matrix = history.get(R.CROSS_SITE) or {}
    scores_of = matrix.get(R.Matrix.SCORES) or {}
    out = {}
    for site, metrics in alone.items():
        scores = dict(scores_of.get(site) or {}) if site in (matrix.get(R.Matrix.MODELS) or []) else {}
        if metrics.get(C.METRIC_ALONE_SCORE) is not None:
            scores.setdefault(site, metrics[C.METRIC_ALONE_SCORE])
        out[site] = {"scores": scores, "steps": metrics.get(C.METRIC_STEPS), "seconds": metrics.get(C.METRIC_SECONDS)}
    return out


def plot_shared_vs_alone(run, out: Path) -> Path | None:
    """One panel per hospital: the shared (global) model and that hospital's model trained alone, on each
    site's data (its own first)."""
    matrix = run.history.get(R.CROSS_SITE) or {}
    shared = (matrix.get(R.Matrix.SCORES) or {}).get(R.Matrix.GLOBAL) or {s: run.final_score(s) for s in run.sites}
    sites = [s for s in run.sites if s in (run.local or {})]
    if not sites:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sites), figsize=(3.2 * len(sites) + 0.6, 3.2), sharey=True, squeeze=False)
    for ax, site in zip(axes[0], sites, strict=True):
        data_of = [site] + [s for s in run.sites if s != site]
        alone = [run.local_score(site, d) for d in data_of]
        glob = [shared.get(d) for d in data_of]
        xs = range(len(data_of))
        ax.bar([x - 0.2 for x in xs], [v or 0 for v in glob], 0.4, label="shared model", color="#2b6cb0")
        ax.bar([x + 0.2 for x in xs], [v or 0 for v in alone], 0.4, label=f"{site} alone", color="#dd8452")
        ax.set_xticks(list(xs), [("own data" if d == site else d) for d in data_of], rotation=20, fontsize=8)
        ax.set_title(site, fontsize=10)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel(run.metric)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
