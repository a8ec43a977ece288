"""The pre-flight's comparison logic on plain arrays, the site summaries, and the report (no FLARE run)."""

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from consortium.stats import compare
from consortium.stats import features as F
from consortium.stats.imaging import Sample, SiteSummary
from consortium.stats.report import SUMMARY_FILE, write_preflight_report
from consortium.stats.summary import summarise


def fed_json(sites: dict[str, dict[str, np.ndarray]]) -> dict:
    """FLARE's statistics JSON layout ({feature: {statistic: {site: {dataset: value}}}}) from raw values."""
    out: dict = {}
    for site, feats in sites.items():
        for feature, values in feats.items():
            v = np.asarray(values, dtype=float)
            entry = {"count": len(v), "sum": float(v.sum())}
            if len(v) >= 10:  # FLARE's MinCountCleanser: below min_count only the count leaves the site
                entry.update(mean=float(v.mean()), stddev=float(v.std(ddof=1)))
            for stat, value in entry.items():
                out.setdefault(feature, {}).setdefault(stat, {})[site] = {F.DATASET: value}
    return out


def test_pool_equals_the_union_of_the_groups():
    rng = np.random.default_rng(0)
    groups = [rng.normal(m, s, n) for m, s, n in ((0, 1, 50), (3, 2, 20), (-1, 0.5, 7))]
    n, mean, std = compare.pool([len(g) for g in groups], [g.mean() for g in groups], [g.std(ddof=1) for g in groups])
    union = np.concatenate(groups)
    assert n == len(union) and mean == pytest.approx(union.mean()) and std == pytest.approx(union.std(ddof=1))


def test_standardized_relative_and_spread_scores_by_hand():
    # two groups of 2 values each: {0, 2} and {4, 6}: pooled mean 3, pooled std sqrt(20 / 3)
    d = compare.standardized_differences([2, 2], [1, 5], [np.sqrt(2), np.sqrt(2)])
    assert d == pytest.approx([-2 / np.sqrt(20 / 3), 2 / np.sqrt(20 / 3)])
    assert compare.relative_differences([1, 3], [1.0, 2.0]) == pytest.approx([1 / 1.75 - 1, 2 / 1.75 - 1])
    assert compare.spread_ratios([2, 2], [1, 5], [np.sqrt(2), np.sqrt(2)]) == pytest.approx([np.sqrt(2 / (20 / 3))] * 2)
    # identical values everywhere: no spread, nothing differs
    assert list(compare.standardized_differences([5, 5], [0.8, 0.8], [0, 0])) == [0, 0]
    # no spread within the sites: the pooled std is the sites' difference (0.05 * sqrt(10 / 9))
    sd = 0.05 * np.sqrt(10 / 9)
    assert compare.standardized_differences([5, 5], [0.8, 0.9], [0, 0]) == pytest.approx([-0.05 / sd, 0.05 / sd])


def demo_like_sites(seed: int = 0) -> dict:
    """Three sites shaped like the demo (a the biggest, b offset, c with hyperdense lesions), with wider margins
    than the demo's so that the test checks the logic rather than one seed's numbers."""
    rng = np.random.default_rng(seed)

    def site(n_body, offset, lesion_hu, n_slices, prevalence, area):
        body = np.concatenate([rng.normal(-90, 10, n_body // 8), rng.normal(40, 35, n_body - n_body // 8)]) + offset
        present = (rng.random(n_slices) < prevalence).astype(float)
        return {
            F.BODY_HU: body,
            F.LESION_HU: rng.normal(lesion_hu + offset, 10, n_body // 30),
            F.LESION_PRESENT: present,
            F.LESION_AREA: rng.normal(area, area / 3, int(present.sum())),
            F.PIXEL_SPACING: np.full(n_slices, 0.8),
            F.SLICE_THICKNESS: np.full(n_slices, 2.5),
            F.SLICES_PER_PATIENT: np.full(n_slices // 4, 4.0),
        }

    return {
        "hospital-a": site(60_000, 0, 10, 192, 0.85, 45),
        "hospital-b": site(24_000, 30, 25, 112, 0.6, 75),
        "hospital-c": site(12_000, 5, 105, 56, 0.5, 100),
    }


def test_flags_the_offset_site_and_the_hyperdense_lesions_only():
    summary = summarise(fed_json(demo_like_sites()))
    found = {(f["site"], f["check"]) for f in summary["flags"]}
    assert ("hospital-b", "body HU mean") in found
    assert ("hospital-c", "lesion contrast") in found
    assert not {f for f in found if f[0] == "hospital-a"}, summary["flags"]
    assert ("hospital-b", "lesion contrast") not in found  # its offset is not counted twice
    harm = summary["harmonisation"]
    assert harm["hospital-b"]["recommended"] and not harm["hospital-a"]["recommended"]
    body = summary["consortium"][F.BODY_HU]
    for entry in harm.values():  # hu' = hu + offset moves the site's mean onto the pooled mean
        assert entry["hu_scale"] == 1.0
        assert entry["site_body_mean"] + entry["hu_offset"] == pytest.approx(body["mean"], abs=0.06)
    assert summary["sites"]["hospital-a"]["patients"] == 48


def test_a_spread_outside_the_limit_is_flagged_and_scaled():
    sites = demo_like_sites()
    sites["hospital-c"][F.BODY_HU] = (sites["hospital-c"][F.BODY_HU] - 40) * 2 + 40  # twice the spread
    summary = summarise(fed_json(sites))
    assert ("hospital-c", "body HU std") in {(f["site"], f["check"]) for f in summary["flags"]}
    entry, ref = summary["harmonisation"]["hospital-c"], summary["consortium"][F.BODY_HU]
    assert entry["recommended"] and entry["hu_scale"] == pytest.approx(ref["std"] / entry["site_body_std"], rel=1e-3)
    assert entry["hu_scale"] * entry["site_body_mean"] + entry["hu_offset"] == pytest.approx(ref["mean"], abs=0.1)


def test_geometry_and_prevalence_flags():
    sites = demo_like_sites()
    sites["hospital-b"][F.PIXEL_SPACING] = np.full(112, 0.6)  # 25 % smaller pixels than the others
    sites["hospital-c"][F.LESION_PRESENT] = np.zeros(56)  # masks missing: no lesion anywhere
    found = {(f["site"], f["check"]) for f in summarise(fed_json(sites))["flags"]}
    assert ("hospital-b", "pixel spacing") in found and ("hospital-c", "prevalence") in found


def test_withheld_features_are_left_out_and_one_site_is_not_compared():
    sites = demo_like_sites()
    sites["hospital-c"][F.LESION_AREA] = sites["hospital-c"][F.LESION_AREA][:5]  # below min_count: count only
    summary = summarise(fed_json(sites))
    assert summary["sites"]["hospital-c"]["lesion_area_mm2"] is None
    assert summary["consortium"][F.LESION_AREA]["sites"] == ["hospital-a", "hospital-b"]
    assert not [c for c in summary["checks"] if c["check"] == "lesion area" and c["site"] == "hospital-c"]
    alone = summarise(fed_json({"hospital-a": demo_like_sites()["hospital-a"]}))
    assert alone["checks"] == [] and alone["harmonisation"]["hospital-a"]["hu_offset"] == 0.0


def test_sample_matches_numpy():
    values = np.array([1.0, 2.0, 2.0, 5.0, -3.0, 2.0])
    s = Sample.of(values)
    assert (s.count, s.sum, s.mean) == (6, values.sum(), pytest.approx(values.mean()))
    assert s.stddev() == pytest.approx(values.std(ddof=1))
    assert s.squares_about(1.5) == pytest.approx(((values - 1.5) ** 2).sum())
    assert list(s.histogram(4, -4, 6)) == list(np.histogram(values, 4, (-4, 6))[0])


def test_site_summary_of_two_slices():
    header = Dataset()
    header.PixelSpacing, header.SliceThickness, header.SeriesInstanceUID = [0.5, 0.7], 3.0, "1.2.3"
    header.Manufacturer = "Acme Medical"  # no ManufacturerModelName: "(not recorded)"
    hu = np.full((4, 4), -1000.0)
    hu[1:3, 1:3] = [[40.2, 39.6], [700.0, 60.0]]  # 3 body pixels, bone is left out
    mask = np.zeros((4, 4), bool)
    mask[2, 2] = True
    summary = SiteSummary()
    summary.add_slice(hu, mask, header, "P1")
    summary.add_slice(hu, np.zeros((4, 4), bool), header, "P1")
    samples = summary.samples()
    assert samples[F.BODY_HU].count == 6 and samples[F.BODY_HU].mean == pytest.approx((40 + 40 + 60) / 3)
    assert samples[F.LESION_HU].values.tolist() == [60.0] and samples[F.LESION_HU].count == 1
    assert samples[F.LESION_PRESENT].mean == 0.5 and samples[F.LESION_AREA].values.tolist() == [pytest.approx(0.35)]
    assert samples[F.PIXEL_SPACING].mean == pytest.approx(0.6) and samples[F.SLICE_THICKNESS].mean == 3.0
    assert samples[F.SLICES_PER_SERIES].values.tolist() == [2.0] and samples[F.SLICES_PER_PATIENT].count == 1
    assert samples["manufacturer=Acme Medical"].sum == 1 and samples[f"model={F.NOT_RECORDED}"].count == 1


def test_report_shows_sites_flags_and_harmonisation(tmp_path):
    fed = fed_json(demo_like_sites())
    bins = [[-200 + 10 * i, -190 + 10 * i, i] for i in range(50)]
    for site in ("hospital-a", "hospital-b"):
        fed[F.BODY_HU].setdefault("histogram", {})[site] = {F.DATASET: bins}
    (tmp_path / SUMMARY_FILE).write_text(json.dumps(summarise(fed)))
    files = write_preflight_report(tmp_path)
    md = files["markdown"].read_text()
    assert "hospital-b: body HU mean" in md and "(recommended)" in md and files["plot"].is_file()
    assert "<table>" in files["html"].read_text()


def test_exported_preflight_sends_site_results_inline(tmp_path):
    """Like the training jobs (jobs/build.py INLINE_RESULTS): a site lost while its statistics are on the way must
    not make FLARE end the server's job process."""
    from consortium.stats.job import export_preflight_job

    folder = export_preflight_job(tmp_path)
    client = json.loads((folder / "app" / "config" / "config_fed_client.json").read_text())
    assert client["np_download_chunk_size"] == 0 and client["tensor_download_chunk_size"] == 0
