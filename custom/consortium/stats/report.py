"""The pre-flight report: `report/preflight.html` (self-contained) and `report/preflight.md` with a PNG plot.

Sites side by side (counts, geometry, scanners, HU, lesions), every check with its score against its limit,
the flags, the suggested harmonisation, and the body and lesion HU histograms of every site overlaid.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from consortium.report import REPORT_DIR, _html_table, _md_table, _plt, html_page
from consortium.stats import features as F
from consortium.stats.job import MAX_BINS_PERCENT, MAX_NOISE_LEVEL, MIN_COUNT, MIN_NOISE_LEVEL

SUMMARY_FILE = "preflight.json"
HARMONISATION_FILE = "harmonisation.json"
STATS_FILE = "statistics.json"  # FLARE's JsonStatsFileWriter output, copied from the server's job folder
WITHHELD = "withheld"  # a value FLARE's privacy cleansers kept at the site


def _num(value, fmt: str = ".1f") -> str:
    return WITHHELD if value is None else f"{value:{fmt}}"


def _pm(mean, std, fmt: str = ".1f") -> str:
    return WITHHELD if mean is None else f"{mean:{fmt}} ± {_num(std, fmt)}"


def _categories(values: dict) -> str:
    if not values:
        return WITHHELD
    return ", ".join(f"{v} ({WITHHELD if n is None else int(n)})" for v, n in values.items())


def site_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table: one row per quantity, one column per site, then the consortium's pooled value."""
    sites, ref = summary["sites"], summary["consortium"]
    names = sorted(sites)

    def pooled(feature, key="mean", fmt=".1f"):
        return _num((ref.get(feature) or {}).get(key), fmt)

    def row(label, cell, consortium=""):
        return [label] + [cell(sites[s]) for s in names] + [consortium]

    harm = summary.get("harmonisation") or {}
    rows = [
        row("patients", lambda r: _num(r["patients"], "d"), pooled(F.SLICES_PER_PATIENT, "count", "d")),
        row("series", lambda r: _num(r["series"], "d"), pooled(F.SLICES_PER_SERIES, "count", "d")),
        row("slices", lambda r: _num(r["slices"], "d"), pooled(F.LESION_PRESENT, "count", "d")),
        row("pixel spacing (mm)", lambda r: _num(r["pixel_spacing_mm"], ".2f"), pooled(F.PIXEL_SPACING, fmt=".2f")),
        row(
            "slice thickness (mm)", lambda r: _num(r["slice_thickness_mm"], ".2f"), pooled(F.SLICE_THICKNESS, fmt=".2f")
        ),
        row("manufacturer (series)", lambda r: _categories(r["manufacturer"])),
        row("model (series)", lambda r: _categories(r["model"])),
        row("body HU mean ± std", lambda r: _pm(r["body_hu_mean"], r["body_hu_std"]), _pm(*_ms(ref, F.BODY_HU))),
        row(
            "lesion HU mean ± std", lambda r: _pm(r["lesion_hu_mean"], r["lesion_hu_std"]), _pm(*_ms(ref, F.LESION_HU))
        ),
        row("lesion contrast (lesion - body mean, HU)", lambda r: _num(r["lesion_contrast_hu"], "+.1f")),
        row(
            "prevalence (slices with lesion)",
            lambda r: _num(r["prevalence"], ".2f"),
            pooled(F.LESION_PRESENT, fmt=".2f"),
        ),
        row(
            "lesion area per lesion slice (mm²)",
            lambda r: _pm(r["lesion_area_mm2"], r["lesion_area_std_mm2"]),
            _pm(*_ms(ref, F.LESION_AREA)),
        ),
        ["suggested harmonisation (scale, offset HU)"]
        + [
            f"{harm[s]['hu_scale']:g} x HU {harm[s]['hu_offset']:+.1f}"
            + (" (recommended)" if harm[s]["recommended"] else "")
            if s in harm
            else WITHHELD
            for s in names
        ]
        + [""],
    ]
    flagged = {s: [f["check"] for f in summary["flags"] if f["site"] == s] for s in names}
    rows.append(["flags"] + [", ".join(flagged[s]) or "none" for s in names] + [""])
    return ["", *names, "consortium"], rows


def _ms(ref: dict, feature: str):
    entry = ref.get(feature) or {}
    return entry.get("mean"), entry.get("std")


def check_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Every check's score per site (FLAG where it is beyond the limit)."""
    names = sorted(summary["sites"])
    by_check: dict[str, dict] = {}
    limits = {}
    for c in summary["checks"]:
        by_check.setdefault(c["check"], {})[c["site"]] = c
        limits[c["check"]] = (c["limit"], c["score_kind"])
    rows = []
    for check, per_site in by_check.items():
        limit, kind = limits[check]
        cells = []
        for s in names:
            c = per_site.get(s)
            text = (
                "-"
                if c is None
                else {"smd": f"{c['score']:+.2f}", "ratio": f"{c['score']:.2f}"}.get(kind, f"{c['score']:+.0%}")
            )
            cells.append(text + (" FLAG" if c and c["flagged"] else ""))
        what = {"smd": f"more than {limit:g} pooled std away", "ratio": f"ratio outside 1/{limit:g}..{limit:g}"}
        rows.append([check, *cells, what.get(kind, f"> {limit:.0%} from the consortium mean")])
    return ["check", *names, "flagged when"], rows


def plot_histograms(summary: dict, out: Path) -> Path | None:
    """Body and lesion HU histograms, every site overlaid (fraction of the site's pixels in the range per bin)."""
    hists = summary.get("histograms") or {}
    if not any(hists.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, feature, title in zip(axes, (F.BODY_HU, F.LESION_HU), ("inside the body", "inside the label"), strict=True):
        for site, bins in sorted((hists.get(feature) or {}).items()):
            total = sum(b[2] for b in bins) or 1
            edges = [b[0] for b in bins] + [bins[-1][1]]
            ax.stairs([b[2] / total for b in bins], edges, label=site)
        ax.set_title(f"HU {title}")
        ax.set_xlabel("HU")
        ax.set_ylabel("fraction of pixels per bin")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _intro(summary: dict) -> str:
    return (
        "FLARE's federated statistics (StatisticsController + StatisticsExecutor) over every usable slice of every "
        f"site. Privacy cleansers at each site: a feature with fewer than {MIN_COUNT} values is sent as its count "
        f"only ('{WITHHELD}' below); local min/max are noised outwards by {MIN_NOISE_LEVEL:.0%}-{MAX_NOISE_LEVEL:.0%} "
        f"before they set a histogram range; a histogram is sent only with fewer bins than {MAX_BINS_PERCENT}% of "
        f"the site's values. Body HU: pixels between {F.BODY_HU_RANGE[0]:g} and {F.BODY_HU_RANGE[1]:g} HU. "
        "Every site is compared with the consortium's pooled statistics (all sites' released values, count-weighted)."
    )


def _harmonisation_text() -> str:
    return (
        f"{HARMONISATION_FILE}: per site hu_harmonised = hu_scale * hu + hu_offset, which moves the site's body-HU "
        "mean onto the consortium's (hu_scale stays 1 unless the site's spread is flagged). 'recommended' marks "
        "sites with a body-HU flag. Applying it is the training side's step, switched on by the site itself."
    )


def write_preflight_report(folder: Path) -> dict[str, Path]:
    """Render FOLDER/preflight.json into FOLDER/report/preflight.html and .md (plot as PNG beside the .md)."""
    folder = Path(folder)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    out = folder / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    png = plot_histograms(summary, out / "preflight_hu.png")
    flags = [f["message"] for f in summary["flags"]]
    sections = [
        ("Sites side by side", _intro(summary), site_rows(summary)),
        (
            "Checks",
            "Scores of every site against the consortium; the limits are named constants in "
            "consortium/stats/compare.py.",
            check_rows(summary),
        ),
        ("Flags", "Sites beyond a limit:" if flags else "No site differs from the consortium beyond the limits.", None),
        ("Harmonisation", _harmonisation_text(), None),
        ("HU histograms", "Fixed global bins of 10 HU between -200 and 300 HU.", None),
    ]
    title = "Consortium pre-flight: federated data-quality statistics"
    md, body = [f"# {title}", ""], [f"<h1>{html.escape(title)}</h1>"]
    for name, text, table in sections:
        md += [f"## {name}", "", text, ""]
        body += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(text)}</p>"]
        if table:
            md += [_md_table(*table), ""]
            body.append(_html_table(*table))
        if name == "Flags" and flags:
            md += [f"* {m}" for m in flags] + [""]
        if name == "HU histograms" and png is not None:
            md += [f"![HU histograms]({png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<img alt="HU histograms" src="data:image/png;base64,{data}">')
    (out / "preflight.md").write_text("\n".join(md))
    (out / "preflight.html").write_text(html_page(title, body, max_width=1100))
    return {"html": out / "preflight.html", "markdown": out / "preflight.md", **({"plot": png} if png else {})}
