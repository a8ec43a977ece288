"""The report's plots (matplotlib, written as PNG): learning curves, the cross-site matrix, privacy spent."""

from __future__ import annotations

from pathlib import Path

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.privacy import spent_by_setting


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, title: str, out: Path) -> Path:
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_learning_curves(run, out: Path) -> Path:
    """Per site: score of the global model it received each round (solid) and after local training (dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = run.rounds
    for i, site in enumerate(run.sites):
        color = f"C{i}"
        xs, received, local = [], [], []
        for r in rounds:
            m = (r.get(R.Round.SITES) or {}).get(site)
            if m and m.get(C.METRIC_SCORE) is not None:
                xs.append(r[R.Round.ROUND])
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
    return _save(plt, fig, ax, "Learning curves per site", out)


def plot_cross_site(run, out: Path) -> Path | None:
    matrix = run.history.get(R.CROSS_SITE)
    if not matrix:
        return None
    plt = _plt()
    models, sites = matrix[R.Matrix.MODELS], matrix[R.Matrix.SITES]
    values = [[matrix[R.Matrix.SCORES].get(m, {}).get(s) for s in sites] for m in models]
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
    return _save(plt, fig, ax, "Cross-site evaluation", out)


def plot_privacy(run, out: Path) -> Path | None:
    """Cumulative epsilon per site and round: DP-SGD's solid, the update noise's dashed."""
    spent = spent_by_setting(run)
    if not spent:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    colors = {site: f"C{i}" for i, site in enumerate(sorted({s for by_site in spent.values() for s in by_site}))}
    for setting, by_site in spent.items():
        style = "-o" if setting == R.Meta.DP_SGD else "--s"
        for site, points in sorted(by_site.items()):
            label = site if len(spent) == 1 else f"{site} ({setting})"
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.plot(xs, ys, style, markersize=3, color=colors[site], label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    which = {R.Meta.DP_SGD: "DP-SGD accountant", R.Meta.DP_UPDATE: "accountant of the noise on the update"}
    return _save(plt, fig, ax, f"Privacy spent per site ({' and '.join(which[s] for s in spent)})", out)
