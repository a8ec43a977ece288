"""The tasks' pieces for a membership-inference audit (privacy/audit.py): per-item losses of one patient, and a
site-local trainer (with or without the project's patient-level DP-SGD) for target and reference models.

The per-item losses are the tasks' own training losses taken one item at a time: binary cross-entropy of a
heart-disease record, Dice + cross-entropy of one CT slice (seg2d's per-sample DP-SGD loss)."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD


@torch.no_grad()
def heart_item_loss(model: torch.nn.Module, items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Binary cross-entropy of each (features, label) record of one patient."""
    model.eval()
    x, y = default_collate(list(items))
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y.float(), reduction="none")


@torch.no_grad()
def seg2d_item_loss(model: torch.nn.Module, items: Sequence[Mapping]) -> torch.Tensor:
    """Dice + cross-entropy of each slice of one patient ({"image", "label"} after the deterministic steps)."""
    from monai.losses import DiceCELoss

    model.eval()
    loss_fn = DiceCELoss(sigmoid=True, batch=False)
    image = torch.stack([torch.as_tensor(i["image"]) for i in items])
    label = torch.stack([torch.as_tensor(i["label"]) for i in items])
    logits = model(image)
    return torch.stack([loss_fn(logits[k : k + 1], label[k : k + 1]) for k in range(len(items))])


class PatientItems(Dataset):
    """The items of some patients, each record naming its patient (`.data[i]["patient_id"]`, what DP-SGD groups
    by); `transform` (e.g. seg2d's augmentations) runs on every draw, as in the task's own loader."""

    def __init__(self, patients: Mapping[str, Sequence], ids: Sequence[str], transform: Callable | None = None):
        self.items = [item for pid in ids for item in patients[pid]]
        self.data = [{"patient_id": pid} for pid in ids for _ in patients[pid]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        return self.transform(dict(item)) if self.transform else item


def local_trainer(
    task,
    build_model: Callable[[], torch.nn.Module],
    patients: Mapping[str, Sequence],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    dp: DPSGDSettings | None = None,
    transform: Callable | None = None,
    seed: int = 0,
    decoder_pattern: str | None = None,
) -> Callable[[Sequence[str]], torch.nn.Module]:
    """train(patient_ids) -> a fresh model trained on those patients with the task's own `train()`, as a site
    trains: Adam for `epochs` passes, or with `dp` the project's DP-SGD (Poisson sampling of whole patients,
    per-patient clipping, noise for dp.target_epsilon over these epochs). Used for the released (target)
    model and for the audit's reference models alike, so both are trained the same way."""
    calls = [0]

    def train(ids: Sequence[str]) -> torch.nn.Module:
        calls[0] += 1
        torch.manual_seed(seed * 1000 + calls[0])
        model = build_model()
        data = PatientItems(patients, ids, transform)
        generator = torch.Generator().manual_seed(seed * 1000 + calls[0])
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=default_collate)
        if dp is None:
            task.train(model, loader, epochs=epochs, lr=lr)
        else:
            site = SiteDPSGD(dp, model=model, train_loader=loader, batch_size=batch_size,
                             decoder_pattern=decoder_pattern)  # fmt: skip
            site.plan(rounds=1, local_epochs=epochs)
            site.train(task, lr=lr, epochs=epochs)  # DP-SGD with the task's sample_loss
            site.module.remove_hooks()  # the plain model again: audits call it without per-sample gradients
            model.dp_epsilon = site.epsilon()  # what this training spent, for the bench's table
        return model.eval()

    return train


ITEM_LOSS = {"heart": heart_item_loss, "seg2d": seg2d_item_loss}  # task name -> its per-item loss


def item_loss_of(task) -> Callable:
    """The audit's per-item loss of a task module (refused, naming the task, if it has none)."""
    name = task.__name__.rsplit(".", 1)[-1]
    if name not in ITEM_LOSS:
        raise ValueError(f"task {name}: no per-item loss for the membership-inference audit (privacy/audit_tasks.py); "
                         "add one, or set `audit: false` in the job")  # fmt: skip
    return ITEM_LOSS[name]


def site_patients(dataset, prefix: str, *, one_per_row: bool) -> dict[str, list]:
    """{patient id: its items} of a site's dataset, without augmentation: one patient per row (heart: the rows,
    named prefix + index), or the records' `patient_id` (seg2d: each slice's {"image", "label"})."""
    if one_per_row:
        return {f"{prefix}{i}": [dataset[i]] for i in range(len(dataset))}
    records = getattr(dataset, "data", None)
    if records is None or not all(isinstance(r, dict) and "patient_id" in r for r in records):
        raise ValueError("the audit needs every sample's patient_id (dataset.data[i]['patient_id'])")
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(str(r["patient_id"]), []).append({"image": r["image"], "label": r["label"]})
    return out
