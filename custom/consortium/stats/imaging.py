"""The site's statistics generator (FLARE `Statistics`): HU, geometry, scanner and label statistics of its CT slices.

Runs inside the site's FLARE job process. It reads every usable slice of the site's manifest once, at the
start of the job, and keeps only summaries (values with their counts; pixels at 1 HU), so memory does not
grow with the number of slices. Nothing but the statistics FLARE asks for leaves the site, and those pass
the job's privacy cleansers (minimum count, noise on min/max, histogram bin limits) first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.statistics_spec import Bin, DataType, Feature, Histogram, HistogramType, Statistics

from consortium.stats import features as F


@dataclass
class Sample:
    """A feature's values at this site as distinct values and their counts."""

    values: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, values) -> "Sample":
        v, w = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
        return cls(v, w.astype(np.int64))

    @property
    def count(self) -> int:
        return int(self.weights.sum())

    @property
    def sum(self) -> float:
        return float((self.values * self.weights).sum())

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def squares_about(self, mean: float) -> float:
        return float((self.weights * (self.values - mean) ** 2).sum())

    def stddev(self) -> float:
        return float(np.sqrt(self.squares_about(self.mean) / max(self.count - 1, 1)))

    def histogram(self, bins: int, low: float, high: float) -> np.ndarray:
        return np.histogram(self.values, bins=bins, range=(low, high), weights=self.weights)[0]


@dataclass
class SiteSummary:
    """Running summaries while reading a site's slices; `samples()` turns them into one Sample per feature."""

    hu_counts: dict[str, np.ndarray] = field(default_factory=dict)  # BODY_HU / LESION_HU: counts per 1 HU
    per_slice: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    series_slices: Counter = field(default_factory=Counter)
    patient_slices: Counter = field(default_factory=Counter)
    series_fields: dict[str, dict[str, str]] = field(default_factory=dict)  # series -> {field: value}
    failures: int = 0

    def add_pixels(self, name: str, hu: np.ndarray) -> None:
        low, high = F.HU_CLIP
        index = np.clip(np.rint(hu), low, high).astype(np.int64) - low
        counts = np.bincount(index.ravel(), minlength=high - low + 1)
        self.hu_counts[name] = self.hu_counts.get(name, 0) + counts

    def add_slice(self, hu: np.ndarray, mask: np.ndarray, header, patient_id: str) -> None:
        low, high = F.BODY_HU_RANGE
        self.add_pixels(F.BODY_HU, hu[(hu > low) & (hu < high)])
        self.add_pixels(F.LESION_HU, hu[mask])
        row_mm, col_mm = (float(s) for s in header.PixelSpacing)
        self.per_slice[F.PIXEL_SPACING].append((row_mm + col_mm) / 2)
        if header.get("SliceThickness") not in (None, ""):
            self.per_slice[F.SLICE_THICKNESS].append(float(header.SliceThickness))
        lesion = bool(mask.any())
        self.per_slice[F.LESION_PRESENT].append(float(lesion))
        if lesion:
            self.per_slice[F.LESION_AREA].append(float(mask.sum()) * row_mm * col_mm)
        series = str(header.get("SeriesInstanceUID", "") or f"patient {patient_id}")
        self.series_slices[series] += 1
        self.patient_slices[patient_id] += 1
        if series not in self.series_fields:
            self.series_fields[series] = {
                name: str(header.get(keyword, "") or "").strip() or F.NOT_RECORDED
                for name, keyword in F.CATEGORICAL.items()
            }

    def samples(self) -> dict[str, Sample]:
        out = {}
        low = F.HU_CLIP[0]
        for name, counts in self.hu_counts.items():
            present = np.flatnonzero(counts)
            if present.size:
                out[name] = Sample(present.astype(np.float64) + low, counts[present].astype(np.int64))
        out.update({name: Sample.of(values) for name, values in self.per_slice.items() if values})
        if self.series_slices:
            out[F.SLICES_PER_SERIES] = Sample.of(list(self.series_slices.values()))
            out[F.SLICES_PER_PATIENT] = Sample.of(list(self.patient_slices.values()))
        for name in F.CATEGORICAL:
            values = [fields[name] for fields in self.series_fields.values()]
            for value in sorted(set(values)):
                out[F.categorical_feature(name, value)] = Sample.of([float(v == value) for v in values])
        return out


def read_slice(record: dict):
    """(HU image, label mask as bool, DICOM header) of one manifest record."""
    import pydicom

    from consortium.data.manifest import read_label

    ds = pydicom.dcmread(record["image"])
    hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1)
    hu += float(ds.get("RescaleIntercept", 0) or 0)
    mask = np.asarray(read_label(record)).astype(bool)
    if mask.shape != hu.shape:
        raise ValueError(f"label shape {mask.shape} differs from image shape {hu.shape}")
    return hu, mask, ds


def summarise_site(cfg, log=None) -> SiteSummary:
    """Read every usable slice of the site (both splits) into a SiteSummary."""
    from consortium.data.manifest import load_records

    records, report = load_records(cfg)
    summary = SiteSummary()
    for record in records["train"] + records["val"]:
        try:
            hu, mask, header = read_slice(record)
        except Exception as exc:  # a file that changed after the manifest check: counted, not fatal
            summary.failures += 1
            if log:
                log(f"pre-flight: {record['image']} skipped ({type(exc).__name__}: {exc})")
            continue
        summary.add_slice(hu, mask, header, record["patient_id"])
    if log:
        read = sum(summary.patient_slices.values())
        log(
            f"[progress] pre-flight at {cfg.name}: {read} slices of {len(summary.patient_slices)} patients read, "
            f"{len(report.skipped)} file(s) skipped by the manifest check, {summary.failures} unreadable"
        )
    return summary


class ImagingStatistics(Statistics):
    """FLARE statistics generator over the site's CT slices (site config found like the training executor)."""

    def __init__(self):
        super().__init__()
        self.samples: dict[str, Sample] = {}
        self.failures = 0

    def initialize(self, fl_ctx: FLContext) -> None:
        from consortium.config import load_site_config
        from consortium.executors.site_config import site_config_dir

        site = fl_ctx.get_identity_name()
        cfg = load_site_config(site, site_config_dir(fl_ctx))
        summary = summarise_site(cfg, log=lambda msg: self.log_info(fl_ctx, msg))
        self.samples, self.failures = summary.samples(), summary.failures

    def features(self) -> dict[str, list[Feature]]:
        return {F.DATASET: [Feature(name, DataType.FLOAT) for name in self.samples]}

    def count(self, dataset_name: str, feature_name: str) -> int:
        return self.samples[feature_name].count

    def failure_count(self, dataset_name: str, feature_name: str) -> int:
        return 0  # unreadable slices are left out of every feature (and logged at the site)

    def sum(self, dataset_name: str, feature_name: str) -> float:
        return self.samples[feature_name].sum

    def mean(self, dataset_name: str, feature_name: str) -> float:
        return self.samples[feature_name].mean

    def stddev(self, dataset_name: str, feature_name: str) -> float:
        return self.samples[feature_name].stddev()

    def variance_with_mean(self, dataset_name, feature_name, global_mean, global_count) -> float:
        return self.samples[feature_name].squares_about(global_mean) / max(global_count - 1, 1)

    def min_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.samples[feature_name].values.min())

    def max_value(self, dataset_name: str, feature_name: str) -> float:
        return float(self.samples[feature_name].values.max())

    def histogram(self, dataset_name, feature_name, num_of_bins, global_min_value, global_max_value) -> Histogram:
        counts = self.samples[feature_name].histogram(num_of_bins, global_min_value, global_max_value)
        edges = np.linspace(global_min_value, global_max_value, num_of_bins + 1)
        bins = [Bin(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(num_of_bins)]
        return Histogram(HistogramType.STANDARD, bins)
