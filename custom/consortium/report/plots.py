"""The report's plots: learning curves, the cross-site heatmap, privacy spent per round."""

from __future__ import annotations

from pathlib import Path

from consortium import constants as C
from consortium.report.run import Run


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
