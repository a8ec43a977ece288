"""A public start for DP fine-tuning: generate the public stand-in cohort (public_cohort/, owned by no
hospital) and train the job's model on it centrally, without DP: the data are public, so training on them
spends no hospital's privacy budget. The checkpoint is a plain state dict plus a small record of how it was
made; a job names it with `pretrained:` and every hospital can check its SHA-256 before trusting it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from consortium.config import load_site_configs
from consortium.tasks import get_task, round_lr

PUBLIC_SEED = 1000  # generator seed of the public cohort: never one the hospitals' data use (0-999)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def generate_public(cohort_dir: Path, *, size: int = 64, force: bool = False, log=print) -> dict:
    """Write the public cohort's DICOM slices and manifests (once; `force` rewrites them)."""
    from consortium.data.synth import generate_site

    archives = load_site_configs(cohort_dir)
    for name, cfg in archives.items():
        if cfg.manifest_path.is_file() and not force:
            continue
        cfg.data.dir.mkdir(parents=True, exist_ok=True)
        manifest = generate_site(cfg, seed=PUBLIC_SEED, size=size)
        log(f"[public] {name}: {manifest['patient_id'].nunique()} patients, {len(manifest)} slices in {cfg.data.dir}")
    return archives


def pretrain(
    *, task_name: str, cohort_dir: Path, out: Path, epochs: int = 20, lr: float = 3e-3, batch_size: int = 16,
    seed: int = 0, lr_schedule: str = "cosine", log=print,
) -> dict:  # fmt: skip
    """Train the task's model on the pooled public cohort; save {state_dict} to `out` and a JSON record next to
    it (cohort, epochs, validation score per archive, SHA-256). Returns the record."""
    if epochs < 1:
        raise ValueError(f"--epochs {epochs}: must be >= 1")
    task = get_task(task_name)
    archives = generate_public(cohort_dir, log=log)
    loaders = {name: task.make_loaders(cfg, batch_size=batch_size, seed=seed) for name, cfg in archives.items()}
    pooled = ConcatDataset([train.dataset for train, _, _ in loaders.values()])
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(pooled, batch_size=batch_size, shuffle=True, generator=generator)
    torch.manual_seed(seed)
    model = task.build_model()
    start = time.perf_counter()
    for epoch in range(epochs):
        result = task.train(model, loader, lr=round_lr(lr, epoch, epochs, lr_schedule), epochs=1)
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            log(f"[public] epoch {epoch + 1}/{epochs}: loss {result.loss:.4f} ({time.perf_counter() - start:.0f} s)")
    scores = {name: task.evaluate(model, val) for name, (_, val, _) in loaders.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    record = {
        "task": task_name, "cohort": str(cohort_dir), "archives": sorted(archives), "slices": len(pooled),
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "generator_seed": PUBLIC_SEED,
        "val_scores": scores, "seconds": round(time.perf_counter() - start, 1), "sha256": sha256(out),
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    log("[public] validation on the public archives: " + ", ".join(f"{n} {s:.3f}" for n, s in scores.items()))
    log(f"[public] public start: {out} (sha256 {record['sha256'][:16]}...)")
    return record


def load_pretrained(model: torch.nn.Module, path: Path | str, *, setting: str = "pretrained") -> None:
    """Load a trusted state dict into `model`, refusing one that does not fit it (missing, unexpected or
    mis-shaped tensors are named) so that nothing is trained from a half-loaded model."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{setting}: {path} not found (make one with `consortium pretrain`, or name a state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that is not a plain state dict, or not a torch file at all
        raise ValueError(f"{setting}: {path} is not a plain PyTorch state dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{setting}: {path} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(torch.as_tensor(state[k]).shape)]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        if shapes:
            k = shapes[0]
            theirs, ours = tuple(torch.as_tensor(state[k]).shape), tuple(own[k].shape)
            problems.append(f"{len(shapes)} of another shape (first: {k} {theirs} vs {ours})")
        raise ValueError(f"{setting}: {path} does not fit the job's model: " + "; ".join(problems))
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
