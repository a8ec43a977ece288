"""Sections 2 and 3 of bench/data.py: slices per second through each loader, and loading's share of a round
(seg2d.make_loaders, one augmentation pass, one training epoch). Wall clock with this process's CPU time."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import torch
from monai.data import PydicomReader
from monai.transforms import Compose, LoadImage, LoadImaged

from consortium.data import labels
from consortium.data.manifest import load_records
from consortium.tasks import seg2d


def clocks():
    return time.perf_counter(), time.process_time()


def since(start) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


def clear_label_caches() -> None:
    """NIfTI volumes and SEG objects are cached per file (data.labels); a timed run starts cold."""
    labels._nifti.cache_clear()
    labels._seg.cache_clear()


def sample_records(cfg, limit: int) -> list[dict]:
    """Up to `limit` manifest records, whole series taken evenly across the site (0: all)."""
    records, _ = load_records(cfg, decode=False)
    series: dict[str, list[dict]] = {}
    for r in records["train"] + records["val"]:
        series.setdefault(str(Path(r["image"]).parent), []).append(r)
    groups = list(series.values())
    step = max(1, -(-sum(map(len, groups)) // limit)) if limit > 0 else 1  # every step-th series
    return [r for g in groups[::step] for r in g]


def loaders_to_time(cfg) -> dict:
    _, report = load_records(cfg, decode=False)
    size = seg2d._site_size(report)  # the size make_loaders uses for this site
    label_map = cfg.data.label_map
    image_only = LoadImage(reader="PydicomReader", image_only=True)
    with_label = Compose([LoadImaged(keys="image", reader=PydicomReader(swap_ij=False), image_only=True),
                          seg2d.LoadLabeld(label_map)])  # fmt: skip
    ours = seg2d.deterministic_transforms(size, label_map)
    return {
        "pydicom dcmread + pixel_array (image)": lambda r: pydicom.dcmread(r["image"]).pixel_array,
        'MONAI LoadImage(reader="PydicomReader") (image)': lambda r: image_only(r["image"]),
        "MONAI LoadImaged + our LoadLabeld (image + label)": with_label,
        f"ours: deterministic_transforms({size[0]}x{size[1]}) (everything)": ours,
    }


def time_loading(cfg, records: list[dict]) -> list[tuple[str, float, float]]:
    rows = []
    for name, fn in loaders_to_time(cfg).items():
        fn(dict(records[0]))  # warm-up: imports, reader and decoder plugin probes
        clear_label_caches()
        start = clocks()
        for r in records:
            fn(dict(r))
        rows.append((name, *since(start)))
    return rows


def time_round(cfg) -> dict:
    clear_label_caches()
    start = clocks()
    train_loader, _, _ = seg2d.make_loaders(cfg, batch_size=8)
    prepare = since(start)
    start = clocks()
    for _ in train_loader:
        pass
    augment = since(start)
    torch.manual_seed(0)
    model = seg2d.build_model()
    start = clocks()
    result = seg2d.train(model, train_loader, epochs=1, lr=1e-3)
    epoch = since(start)
    return {"slices": len(train_loader.dataset), "steps": result.steps, "prepare": prepare, "augment": augment,
            "epoch": epoch}  # fmt: skip
