"""What the report says about differential privacy: the job's DP settings, and the epsilon each site spent."""

from __future__ import annotations

import json

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.page import _section

Spent = dict[str, list[tuple[int, float]]]  # site -> [(round, cumulative epsilon)]
MECHANISM = {R.Meta.DP_SGD: "DP-SGD", R.Meta.DP_UPDATE: "noise on the update"}
OFF = "Differential privacy was off in this run: no privacy budget was spent or accounted."
# what the guarantee covers and what it does not (issue 17: honest scope), said wherever DP was on
SCOPE = (
    " What DP covers: the model weights each site sends (with DP-SGD also SCAFFOLD's control variates). "
    "Not covered: the validation scores, losses, step counts and sample counts the sites also report each round, "
    "and the cross-site scores; they are small aggregates but not noised."
)


def dp_line(meta: R.RunMeta) -> str:
    """The run table's DP row: every DP setting the job recorded (as the job spec names it), or off."""
    dp = [f"{name} {json.dumps(meta[name])}" for name in R.DP_SETTINGS if meta.get(name)]
    return "; ".join(dp) if dp else "off"


def privacy_by_round(run, setting: str = R.Meta.DP_SGD) -> Spent:
    """Per site, the epsilon the accountant of DP setting `setting` had spent after each round."""
    key, spent = R.DP_EPSILON[setting], {}
    for r in run.rounds:
        for site, m in (r.get(R.Round.SITES) or {}).items():
            if m.get(key) is not None:
                spent.setdefault(site, []).append((r[R.Round.ROUND], float(m[key])))
    return spent


def spent_by_setting(run) -> dict[str, Spent]:
    """{DP setting: its spending} for the DP settings that spent anything in this run."""
    return {s: spent for s in R.DP_SETTINGS if (spent := privacy_by_round(run, s))}


def _delta(run, setting: str) -> float | None:
    if setting == R.Meta.DP_UPDATE:  # the update filter's delta is the job's; DP-SGD's each site reports
        return (run.meta.get(R.Meta.DP_UPDATE) or {}).get("delta")
    deltas = (m.get(C.METRIC_DP_DELTA) for r in run.rounds for m in (r.get(R.Round.SITES) or {}).values())
    return next((d for d in deltas if d is not None), None)


def privacy_section(run) -> tuple[str, str, str]:
    """'Privacy spent': per site, the last cumulative epsilon of each DP mechanism and the rounds it trained."""
    spent = spent_by_setting(run)
    if not spent:
        return _section("Privacy spent", OFF)
    sites = sorted({site for by_site in spent.values() for site in by_site})
    rows = []
    for site in sites:
        points = [by_site.get(site) for by_site in spent.values()]
        cells = [f"{p[-1][1]:.2f}" if p else "–" for p in points]
        rows.append([site, *cells, str(max(len(p or []) for p in points))])
    if len(spent) == 1:
        header = ["site", "epsilon spent", "rounds trained"]
    else:
        header = ["site"] + [f"epsilon spent ({MECHANISM[s]})" for s in spent] + ["rounds trained"]
    if list(spent) == [R.Meta.DP_SGD]:
        delta = _delta(run, R.Meta.DP_SGD)
        text = f"Cumulative epsilon per site at delta {delta:g}." if delta else "Cumulative epsilon per site."
    else:
        parts = []
        for setting in spent:
            delta = _delta(run, setting)
            parts.append(f"{MECHANISM[setting]} ({setting})" + (f" at delta {delta:g}" if delta else ""))
        text = "Cumulative epsilon per site of " + " and of ".join(parts) + "."
    return _section("Privacy spent", text + SCOPE, header, rows)
