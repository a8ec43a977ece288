"""Our summary of FLARE's statistics JSON: the side-by-side table, the consortium reference, checks, flags and
the harmonisation (what `runs/preflight/preflight.json` holds)."""

from __future__ import annotations

from consortium.stats import compare as C
from consortium.stats import features as F


def _value(stats: dict, site: str, feature: str, key: str = "mean"):
    return stats[site].get(feature, {}).get(key)


def overview(stats: dict) -> dict[str, dict]:
    """Per site the numbers of the side-by-side table; None where FLARE's cleansers withheld a value."""
    out = {}
    for site in stats:
        row = {
            "patients": _value(stats, site, F.SLICES_PER_PATIENT, "count"),
            "series": _value(stats, site, F.SLICES_PER_SERIES, "count"),
            "slices": _value(stats, site, F.LESION_PRESENT, "count"),
            "pixel_spacing_mm": _value(stats, site, F.PIXEL_SPACING),
            "slice_thickness_mm": _value(stats, site, F.SLICE_THICKNESS),
            "body_hu_mean": _value(stats, site, F.BODY_HU),
            "body_hu_std": _value(stats, site, F.BODY_HU, "stddev"),
            "lesion_hu_mean": _value(stats, site, F.LESION_HU),
            "lesion_hu_std": _value(stats, site, F.LESION_HU, "stddev"),
            "lesion_contrast_hu": (C.lesion_contrast(stats).get(site) or [None, None])[1],
            "prevalence": _value(stats, site, F.LESION_PRESENT),
            "lesion_area_mm2": _value(stats, site, F.LESION_AREA),
            "lesion_area_std_mm2": _value(stats, site, F.LESION_AREA, "stddev"),
        }
        for field in F.CATEGORICAL:  # {value: series} (None: fewer than min_count series, count withheld)
            row[field] = {
                split[1]: stats[site][feature].get("sum")
                for feature in sorted(stats[site])
                if (split := F.split_categorical(feature)) and split[0] == field
            }
        out[site] = row
    return out


def consortium_reference(stats: dict) -> dict[str, dict]:
    """The pooled count, mean and std of every numeric feature over the sites that released it."""
    out = {}
    for feature in sorted({f for site in stats.values() for f in site if not F.split_categorical(f)}):
        rows = C._released(stats, feature)
        if rows:
            n, mean, std = C.pool(*zip(*rows.values(), strict=True))
            out[feature] = {"count": int(n), "mean": round(mean, 4), "std": round(std, 4), "sites": sorted(rows)}
    return out


def thresholds() -> dict[str, float]:
    names = ("INTENSITY_SMD_LIMIT", "INTENSITY_SPREAD_LIMIT", "LESION_SMD_LIMIT", "GEOMETRY_REL_LIMIT")
    return {name: getattr(C, name) for name in names}


def summarise(fed: dict) -> dict:
    """Our summary of FLARE's statistics JSON: the per-site table, the consortium reference, flags, harmonisation."""
    stats = C.site_stats(fed)
    checks = C.assess(stats)
    found = [row for row in checks if row["flagged"]]
    return {
        "sites": overview(stats),
        "consortium": consortium_reference(stats),
        "flags": found,
        "checks": checks,
        "harmonisation": C.harmonisation(stats, found),
        "thresholds": thresholds(),
        "histograms": {
            feature: {site: f[feature]["histogram"] for site, f in stats.items() if "histogram" in f.get(feature, {})}
            for feature in (F.BODY_HU, F.LESION_HU)
        },
    }
