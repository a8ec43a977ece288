"""`consortium data synth | check | index`: generate demo cohorts, check sites' data, index a PACS export."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from consortium.argtypes import fraction, positive_int
from consortium.cli.common import sites


def cmd_data_synth(args) -> int:
    from consortium.data.synth import generate_site

    for name, cfg in sites(args).items():
        if cfg.synthetic is None:
            print(f"{name}: uses its own data at {cfg.data.dir} (no 'synthetic' section), skipped")
            continue
        if cfg.manifest_path.exists() and not args.force:
            print(f"{name}: {cfg.manifest_path} exists, kept (use --force to regenerate)")
            continue
        if cfg.data.dir.exists():
            shutil.rmtree(cfg.data.dir)
        start = time.perf_counter()
        layout = getattr(args, "layout", "slices")
        df = generate_site(cfg, seed=args.seed, size=args.size, patients=args.patients, layout=layout)
        counts = df.split.value_counts().to_dict()
        print(
            f"{name}: {df.patient_id.nunique()} patients, {len(df)} DICOM slices "
            f"({counts.get('train', 0)} train / {counts.get('val', 0)} val) -> {cfg.data.dir} "
            f"[{time.perf_counter() - start:.1f} s]"
        )
    return 0


def cmd_data_check(args) -> int:
    from consortium.data.manifest import DataError, load_records

    failed = 0
    for cfg in sites(args).values():
        try:
            _, report = load_records(cfg)
            print(report.summary())
        except DataError as exc:
            failed += 1
            print(f"ERROR {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_data_index(args) -> int:
    from consortium.config import load_site_config
    from consortium.data.index import index_site

    cfg = load_site_config(args.site, args.site_configs)
    manifest = Path(args.manifest).resolve() if args.manifest else cfg.manifest_path
    start = time.perf_counter()
    result = index_site(
        Path(args.dicom_dir).resolve(),
        Path(args.labels).resolve() if args.labels else None,
        site=cfg.name,
        data_dir=cfg.data.dir,
        manifest=manifest,
        modality=cfg.data.modality,
        label_map=cfg.data.label_map,
        mapping=Path(args.mapping).resolve() if args.mapping else None,
        min_slices=args.min_slices,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(result.summary())
    print(f"  [{time.perf_counter() - start:.1f} s; series details and every skip reason: "
          f"{manifest.parent / 'index.json'}]")  # fmt: skip
    if manifest != cfg.manifest_path:
        print(f"  note: {cfg.source} reads {cfg.manifest_path}; point data.dir/data.manifest at this manifest")
    return 0


def add_data(sub) -> None:
    data = sub.add_parser("data", help="generate, check or index hospital data").add_subparsers(
        dest="action", required=True
    )
    synth = data.add_parser("synth", help="write generated DICOM cohorts for sites with a 'synthetic' profile")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    synth.add_argument("--patients", type=int, default=None, help="override every site's patient count")
    synth.add_argument("--sites", help="comma-separated subset of sites")
    synth.add_argument("--force", action="store_true", help="regenerate even if a manifest exists")
    synth.add_argument(
        "--layout", choices=("slices", "pacs"), default="slices",
        help="slices: one file per slice + .npy masks + manifest (default); pacs: a PACS-like export "
        "(patient/study/series folders, files without extension, some compressed, NIfTI and DICOM SEG "
        "labels, a second series per study) indexed with `data index`",
    )  # fmt: skip
    synth.set_defaults(fn=cmd_data_synth)
    check = data.add_parser("check", help="check every file of every site and report what would be skipped")
    check.add_argument("--sites", help="comma-separated subset of sites")
    check.set_defaults(fn=cmd_data_check)
    index = data.add_parser(
        "index", help="write a site's manifest from a PACS export folder and its labels (reads headers only)"
    )
    index.add_argument("dicom_dir", help="folder tree of DICOM files, any layout (a PACS export)")
    index.add_argument("--labels", help="folder of label files: NIfTI <SeriesInstanceUID>.nii.gz, DICOM SEG, "
                       "or <SOPInstanceUID>.npy per slice (DICOM SEG inside DICOM_DIR is found too)")  # fmt: skip
    index.add_argument("--site", required=True, help="the site config whose manifest is written")
    index.add_argument("--mapping", help="CSV series_uid,label naming each series' label file explicitly")
    index.add_argument("--manifest", help="where to write the manifest (default: the site config's)")
    index.add_argument("--min-slices", type=positive_int, default=1, help="series with fewer are skipped")
    index.add_argument("--val-fraction", type=fraction, default=0.2, help="share of patients for validation")
    index.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    index.set_defaults(fn=cmd_data_index)
