"""Compare the sites' federated statistics: consortium reference, flags and harmonisation (pure functions).

Every site is compared with the consortium's pooled statistics (all sites' released values together, count-
weighted: the same reference FLARE's global statistics and the harmonisation use). With three sites a leave-
one-out reference does not work: the largest site's "others" are dominated by the offset site, so on the
demo data hospital-a (0 HU offset) is as far from its others (-21 HU) as hospital-b (+25 HU) is from its
(+22 HU), and no threshold can tell them apart. A site's feature that FLARE's privacy cleansers withheld
(fewer than min_count values) is left out of the reference and of the checks.
"""

from __future__ import annotations

import numpy as np

from consortium.stats import features as F

GLOBAL = "Global"  # FLARE's key of the consortium-wide statistics in its JSON

# Thresholds. A standardised difference is (site mean - consortium mean) / consortium pooled std.
# Body HU: calibration offsets are small against the spread of body tissue (about 57 HU on the demo data) but
# matter to the model, whose window is 400 HU wide and whose lesions differ from the organ by 35-50 HU.
# 0.2 is Cohen's "small effect": about 11 HU here.
INTENSITY_SMD_LIMIT = 0.2
# Body HU spread: a site whose std is more than 25 % above or below the consortium's (noise, reconstruction
# kernel, a rescale slope) is flagged, and only then does the harmonisation suggest a scale other than 1.
INTENSITY_SPREAD_LIMIT = 1.25
# Lesion contrast (lesion mean HU minus the site's own body mean, so a calibration offset is not counted
# twice), prevalence and lesion area: one pooled std. Lesions that look or occur this differently mean a model
# trained elsewhere may not transfer; smaller differences are ordinary case mix.
LESION_SMD_LIMIT = 1.0
# Pixel spacing and slice thickness: 15 % from the consortium mean. Thicker slices blur small lesions (partial
# volume) and finer pixels are noisier; resampling to a common grid equalises the pixel size, not these.
GEOMETRY_REL_LIMIT = 0.15


def site_stats(fed: dict) -> dict[str, dict[str, dict]]:
    """FLARE's statistics JSON ({feature: {statistic: {site: {dataset: value}}}}) as {site: {feature: {statistic:
    value}}}, without the Global entries; a histogram is a list of [low, high, count]."""
    out: dict[str, dict[str, dict]] = {}
    for feature, by_stat in fed.items():
        for stat, by_site in by_stat.items():
            for site, by_dataset in by_site.items():
                if site != GLOBAL and F.DATASET in by_dataset:
                    out.setdefault(site, {}).setdefault(feature, {})[stat] = by_dataset[F.DATASET]
    return dict(sorted(out.items()))


def pool(counts, means, stds) -> tuple[float, float, float]:
    """(count, mean, std) of the union of groups given their counts, means and (sample) stds."""
    n, m, s = (np.asarray(x, dtype=np.float64) for x in (counts, means, stds))
    total = n.sum()
    mean = float((n * m).sum() / total)
    squares = ((n - 1) * s**2).sum() + (n * (m - mean) ** 2).sum()
    return float(total), mean, float(np.sqrt(squares / max(total - 1, 1)))


def standardized_differences(counts, means, stds) -> np.ndarray:
    """(mean_k - pooled mean) / pooled std per group; 0 where both are 0, inf where only the std is."""
    _, mean, std = pool(counts, means, stds)
    diff = np.asarray(means, dtype=np.float64) - mean
    if std == 0:
        return np.where(diff == 0, 0.0, np.copysign(np.inf, diff))
    return diff / std


def relative_differences(counts, means) -> np.ndarray:
    """(mean_k - pooled mean) / pooled mean per group."""
    n, m = np.asarray(counts, dtype=np.float64), np.asarray(means, dtype=np.float64)
    mean = (n * m).sum() / n.sum()
    return (m - mean) / mean


def spread_ratios(counts, means, stds) -> np.ndarray:
    """std_k / pooled std per group."""
    _, _, std = pool(counts, means, stds)
    return np.asarray(stds, dtype=np.float64) / std


def _released(stats: dict, feature: str, keys=("count", "mean", "stddev")) -> dict[str, list]:
    """{site: [count, mean, std]} of the sites whose `feature` has all of `keys` (not withheld)."""
    return {s: [f[feature][k] for k in keys] for s, f in stats.items() if all(k in f.get(feature, {}) for k in keys)}


def lesion_contrast(stats: dict) -> dict[str, list]:
    """{site: [lesion pixels, lesion mean - body mean, lesion std]}: the lesions' HU against the site's own body."""
    body, lesion = _released(stats, F.BODY_HU), _released(stats, F.LESION_HU)
    return {s: [n, m - body[s][1], sd] for s, (n, m, sd) in lesion.items() if s in body}


def _score_text(score: float, kind: str) -> str:
    return {"smd": f"{score:+.2f} pooled std", "rel": f"{score:+.0%}", "ratio": f"{score:.2f} x the pooled std"}[kind]


def _assess(name: str, rows: dict[str, list], kind: str, limit: float, unit: str, fmt: str) -> list[dict]:
    """One row per site: its value, the consortium's, its score and whether it is beyond the limit.
    kind "smd": mean, standardised difference; "ratio": std, ratio to the pooled std; "rel": mean, relative."""
    counts, means, *rest = (np.asarray(c, dtype=np.float64) for c in zip(*rows.values(), strict=True))
    if kind == "rel":
        scores, values, reference = relative_differences(counts, means), means, (counts * means).sum() / counts.sum()
    else:
        _, pooled_mean, pooled_std = pool(counts, means, rest[0])
        if kind == "smd":
            scores, values, reference = standardized_differences(counts, means, rest[0]), means, pooled_mean
        else:
            scores, values, reference = spread_ratios(counts, means, rest[0]), rest[0], pooled_std
    out = []
    for site, value, score in zip(rows, values, scores, strict=True):
        flagged = not (1 / limit <= score <= limit) if kind == "ratio" else abs(score) > limit
        out.append(
            {
                "site": site,
                "check": name,
                "value": round(float(value), 4),
                "consortium": round(float(reference), 4),
                "score": round(float(score), 3) + 0.0,  # + 0.0: no "-0"
                "score_kind": kind,
                "limit": limit,
                "flagged": bool(flagged),
                "message": f"{site}: {name} {value:{fmt}}{unit} against the consortium's {reference:{fmt}}{unit} "
                f"({_score_text(round(float(score), 3) + 0.0, kind)}; limit {limit:g})",
            }
        )
    return out


def assess(stats: dict) -> list[dict]:
    """Every check for every site that released the feature: value, consortium value, score, limit, flagged."""
    body = _released(stats, F.BODY_HU)
    checks = [  # (name, {site: [count, mean, std]}, kind, limit, unit, number format)
        ("body HU mean", body, "smd", INTENSITY_SMD_LIMIT, " HU", ".1f"),
        ("body HU std", body, "ratio", INTENSITY_SPREAD_LIMIT, " HU", ".1f"),
        ("lesion contrast", lesion_contrast(stats), "smd", LESION_SMD_LIMIT, " HU", "+.1f"),
        ("prevalence", _released(stats, F.LESION_PRESENT), "smd", LESION_SMD_LIMIT, "", ".2f"),
        ("lesion area", _released(stats, F.LESION_AREA), "smd", LESION_SMD_LIMIT, " mm2", ".1f"),
    ]
    for feature, label in ((F.PIXEL_SPACING, "pixel spacing"), (F.SLICE_THICKNESS, "slice thickness")):
        checks.append((label, _released(stats, feature, ("count", "mean")), "rel", GEOMETRY_REL_LIMIT, " mm", ".2f"))
    out = []
    for name, rows, kind, limit, unit, fmt in checks:
        if len(rows) >= 2:  # one site alone has nothing to be compared with
            out += _assess(name, rows, kind, limit, unit, fmt)
    return out


def flags(stats: dict) -> list[dict]:
    """The checks a site fails (see the thresholds above)."""
    return [row for row in assess(stats) if row["flagged"]]


def harmonisation(stats: dict, flagged: list[dict]) -> dict[str, dict]:
    """Per site: `hu_scale` and `hu_offset` with hu_harmonised = hu_scale * hu + hu_offset, which moves the site's
    body-HU mean (and, only if its spread is flagged, its std) onto the consortium's pooled body-HU statistics.
    `recommended` is true for a site with a body-HU flag."""
    rows = _released(stats, F.BODY_HU)
    if not rows:
        return {}
    _, mean, std = pool(*zip(*rows.values(), strict=True))
    body_flags = {f["site"] for f in flagged if f["check"].startswith("body HU")}
    out = {}
    for site, (_, m, sd) in rows.items():
        scale = 1.0 if 1 / INTENSITY_SPREAD_LIMIT <= sd / std <= INTENSITY_SPREAD_LIMIT else std / sd
        out[site] = {
            "hu_offset": round(mean - scale * m, 1),
            "hu_scale": round(scale, 3),
            "recommended": site in body_flags,
            "site_body_mean": round(m, 2),
            "site_body_std": round(sd, 2),
        }
    return out
