"""Benchmark: speed of the data path: indexing a PACS export, loading slices, and loading's share of a round.

Usage:
    . .venv/bin/activate
    python bench/data.py                          # 10 patients x 20 slices, 256 + 512 px: 2 min, 2 cores (7 at load 15)
    python bench/data.py --patients 40            # a 40-patient export (800 slices) per size
    python bench/data.py --sizes 512 --slices 60 --load-slices 0   # longer series; load every slice
    python bench/data.py --train-sizes 64         # the round-share section at the demo size only
    python bench/data.py --keep /tmp/bench-data   # keep the generated exports there

Each size gets one generated hospital in a temporary folder, written as a PACS export
(consortium.data.synth.generate_site(layout="pacs"): patient/study/series folders, a localizer per study,
every third series compressed (RLE, JPEG-LS, JPEG 2000), every fourth patient at twice the resolution,
NIfTI and DICOM SEG labels, one label the index refuses). Then:
  1. index      consortium.data.index.index_site on that export (headers of every file, labels checked
                against every slice; best of --repeat, label caches cleared before each run); "of which
                headers" is its header pass alone (data.series.scan_folder); against reading the same
                files with their pixels (pydicom dcmread + pixel_array, every file).
  2. load       slices per second on the manifest's records (--load-slices of them, whole series):
                pydicom alone; MONAI's LoadImage(reader="PydicomReader") (image only); MONAI's LoadImaged
                + our label loading (NIfTI / SEG cut to the slice); our whole deterministic chain
                (seg2d.deterministic_transforms: decode, HU, label, Spacingd to 0.8 mm, window, pad/crop).
  3. round      at --train-sizes: seg2d.make_loaders (the one-off preparation: header checks and the
                deterministic chain, once per job), one pass over the train loader without training
                (augmentation, per epoch), and one epoch of seg2d.train on the demo UNet (batch 8).
                Loading share = (prepare + augmentation) / (prepare + epoch); the epoch includes the
                augmentation. Later rounds do not prepare again: their share is augmentation / epoch.
Times are wall clock, with this process's CPU time beside them: on a shared machine the wall clock also
counts waiting for a core. Torch uses --threads threads (a site's default num_threads is 1). The files
were just written, so they are read from the page cache: parsing cost, not disk latency.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import torch
from data_loading import clear_label_caches, clocks, sample_records, since, time_loading, time_round

from consortium.config import load_site_configs
from consortium.data.index import index_site
from consortium.data.series import scan_folder
from consortium.data.synth import generate_site

PROFILE = """\
org: bench_site
synthetic:
  institution: Bench Hospital
  manufacturer: Acme Medical
  patients: {patients}
  slices_per_patient: {slices}
  noise_hu: 10
  lesion_contrast_hu: -50
  lesion_radius: [3.0, 6.0]
  prevalence: 0.85
"""
DEFAULTS = "data:\n  dir: data/{site}\n  manifest: manifest.csv\n  modality: CT\nresources:\n  num_threads: 1\n"


def silent(_message: str) -> None:
    """Progress lines are not wanted in a timed run."""


def make_site(root: Path, size: int, patients: int, slices: int):
    """One generated hospital as a PACS export under root (generate_site indexes it once itself)."""
    folder = root / f"site_configs_{size}"
    folder.mkdir(parents=True)
    (folder / "_defaults.yaml").write_text(DEFAULTS)
    (folder / f"site-{size}.yaml").write_text(PROFILE.format(patients=patients, slices=slices))
    cfg = load_site_configs(folder)[f"site-{size}"]
    start = clocks()
    generate_site(cfg, seed=0, size=size, patients=patients, layout="pacs")
    return cfg, since(start)[0]


def best_of(repeat: int, fn):
    """(result, wall, cpu) of the run with the shortest wall clock."""
    runs = []
    for _ in range(repeat):
        start = clocks()
        out = fn()
        runs.append((*since(start), out))
    wall, cpu, out = min(runs, key=lambda r: r[0])
    return out, wall, cpu


def index_once(cfg):
    clear_label_caches()
    d = cfg.data.dir
    return index_site(d / "pacs", d / "labels", site=cfg.name, data_dir=d, manifest=cfg.manifest_path,
                      modality=cfg.data.modality, label_map=cfg.data.label_map, progress=silent)  # fmt: skip


def decode_all(cfg) -> int:
    """Read every file of the export with its pixels, as an indexer that decoded would."""
    files = 0
    for path in sorted(p for p in (cfg.data.dir / "pacs").rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path)
        if "PixelData" in ds:
            ds.pixel_array  # noqa: B018 - decoding is the point
        files += 1
    return files


def both(t: tuple[float, float]) -> str:
    return f"{t[0]:.2f} ({t[1]:.2f})"


def share(r: dict, k: int) -> str:
    """Loading share of round 1 with prepare, and of a later round, from wall (k=0) or CPU (k=1) seconds."""
    first = (r["prepare"][k] + r["augment"][k]) / (r["prepare"][k] + r["epoch"][k])
    return f"{first:.0%} / {r['augment'][k] / r['epoch'][k]:.0%}"


def load_avg() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return out.split("load average:")[-1].strip() if "load average" in out else out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512", help="image sizes (px) of the indexed exports")
    parser.add_argument("--patients", type=int, default=10, help="patients per export (10: every codec once)")
    parser.add_argument("--slices", type=int, default=20, help="slices per series (the profile's slices_per_patient)")
    parser.add_argument("--repeat", type=int, default=3, help="indexing and decoding: best of this many runs")
    parser.add_argument("--load-slices", type=int, default=200, help="records timed per loader (0: all)")
    parser.add_argument("--train-sizes", default="64,256", help="sizes for the round-share section ('' : skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a site's num_threads)")
    parser.add_argument("--keep", help="write the exports here and keep them (default: a temp folder, removed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    train_sizes = [int(s) for s in args.train_sizes.split(",") if s]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="consortium-bench-data-"))
    root.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), load_avg()
    sites, made, index_rows, load_rows, round_rows = {}, {}, [], [], []
    for size in sorted(set(sizes) | set(train_sizes)):
        sites[size], made[size] = make_site(root, size, args.patients, args.slices)
        print(f"generated {size} px: {made[size]:.0f} s", flush=True)
    for size in sizes:
        cfg = sites[size]
        result, wall, cpu = best_of(args.repeat, lambda cfg=cfg: index_once(cfg))
        _, hwall, hcpu = best_of(args.repeat, lambda cfg=cfg: scan_folder(cfg.data.dir / "pacs", progress=silent))
        files, dwall, dcpu = best_of(args.repeat, lambda cfg=cfg: decode_all(cfg))
        index_rows.append((size, result.files_seen, len(result.rows), wall, cpu, hwall, hcpu, files, dwall, dcpu))
        records = sample_records(cfg, args.load_slices)
        load_rows += [(size, len(records), *row) for row in time_loading(cfg, records)]
        print(f"timed indexing and loading at {size} px", flush=True)
    for size in train_sizes:
        round_rows.append((size, time_round(sites[size])))
        print(f"timed a round at {size} px", flush=True)
    if not args.keep:
        shutil.rmtree(root)

    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, shared with other work: load average "
          f"{load_start} at start, {load_avg()} at the end; torch threads {args.threads}")  # fmt: skip
    print(f"command: python bench/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}".rstrip())
    print(f"exports: {args.patients} patients x {args.slices} slices, PACS layout; generation (not timed "
          f"below): " + ", ".join(f"{s} px {t:.0f} s" for s, t in made.items()))  # fmt: skip
    print("\n1. Indexing (headers only) vs reading every file's pixels; seconds wall (CPU), best of", args.repeat)
    print("| size | files | slices indexed | index_site s | files/s | of which headers s | every file's pixels "
          "decoded s | files/s | decode / index |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for size, seen, kept, wall, cpu, hwall, hcpu, files, dwall, dcpu in index_rows:
        print(f"| {size} px | {seen} | {kept} | {wall:.2f} ({cpu:.2f}) | {seen / wall:.0f} ({seen / cpu:.0f}) | "
              f"{hwall:.2f} ({hcpu:.2f}) | "
              f"{dwall:.2f} ({dcpu:.2f}) | {files / dwall:.0f} ({files / dcpu:.0f}) | "
              f"{dwall / wall:.1f}x ({dcpu / cpu:.1f}x) |")  # fmt: skip
    print("\n2. Loading slices (one pass, label caches cold); seconds wall (CPU)")
    print("| size | slices | loader | seconds | slices/s | ms/slice (CPU) |")
    print("|---|---|---|---|---|---|")
    for size, n, name, wall, cpu in load_rows:
        print(f"| {size} px | {n} | {name} | {wall:.2f} ({cpu:.2f}) | {n / wall:.0f} ({n / cpu:.0f}) | "
              f"{1000 * cpu / n:.1f} |")  # fmt: skip
    if round_rows:
        print("\n3. Loading's share of a round (demo UNet, batch 8, one epoch); seconds wall (CPU)")
        print("| size | train slices | steps | prepare (once) | augment / epoch | epoch (train, incl. augment) "
              "| loading share round 1 / later, wall | same, CPU |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for size, r in round_rows:
            print(f"| {size} px | {r['slices']} | {r['steps']} | {both(r['prepare'])} | {both(r['augment'])} | "
                  f"{both(r['epoch'])} | {share(r, 0)} | {share(r, 1)} |")  # fmt: skip
    print(f"\nbench total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
