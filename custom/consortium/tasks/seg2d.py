"""Lesion segmentation on 2D CT slices: model, transforms, train and evaluate.

The executor, the server's initial model and both baselines import these same functions.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Iterable

import torch
from monai.data import MetaTensor, PydicomReader
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
)

from consortium.tasks.common import TrainResult, train_loop

# MONAI's PydicomReader probes for a GPU decoder on every read; on CPU sites that is noise, not news.
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

METRIC_NAME = "Dice"  # what evaluate() returns; reports and progress lines use this name
# the UNet's up path (MONAI nests each level's decoder as `.2` after its skip connection): dp_sgd.trainable: decoder
DECODER_PARAMS = r"^model(\.1\.submodule)*\.2\."
HU_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window
KEYS = ("image", "label")
# Every slice is resampled to this pixel spacing (mm; labels by nearest neighbour) before training, so a
# lesion of 1 cm covers the same pixels at every site whatever its scanner's field of view.
SPACING_MM = (0.8, 0.8)
SIZE_MULTIPLE = 8  # the UNet halves the image three times: sizes must be multiples of 8


def build_model(
    channels: Iterable[int] = (16, 32, 64, 128), num_res_units: int = 2, prior: float = 0.02
) -> torch.nn.Module:
    """A 2D MONAI UNet valid for Opacus DP-SGD: instance norm (no BatchNorm), no in-place activations.

    The last convolution's bias starts at logit(prior): the untrained model predicts a small lesion
    probability everywhere instead of lesion on half the pixels, which otherwise costs tens of epochs.
    """
    channels = tuple(channels)
    model = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=num_res_units,
        norm="instance",
        act=("relu", {"inplace": False}),
    )
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
    torch.nn.init.constant_(last.bias, math.log(prior / (1 - prior)))
    return model


class LoadLabeld(MapTransform):
    """The record's mask (.npy, NIfTI or DICOM SEG; values mapped by the site's label_map) on the image's
    grid: it carries the loaded image's affine, so spacing and crop transforms treat both alike."""

    def __init__(self, label_map: dict | None = None):
        super().__init__(keys="label")
        self.label_map = label_map

    def __call__(self, data):
        from consortium.data.labels import read_label

        d = dict(data)
        image = d["image"]
        record = {"image": image.meta["filename_or_obj"], "label": d["label"], "label_format": d.get("label_format")}
        mask = torch.as_tensor(read_label(record, self.label_map).astype("float32"))
        d["label"] = MetaTensor(mask, meta=dict(image.meta))  # the image's meta, with its affine
        return d


def target_size(sizes_mm: Iterable[tuple[float, float]]) -> tuple[int, int]:
    """The training size of a site: its most common field of view at SPACING_MM, rounded up to a multiple
    of SIZE_MULTIPLE. Smaller slices are padded with air, larger ones cropped around the centre."""
    from collections import Counter

    common = Counter((round(r / SPACING_MM[0]), round(c / SPACING_MM[1])) for r, c in sizes_mm).most_common(1)
    rows, cols = common[0][0] if common else (64, 64)
    return tuple(-(-max(n, SIZE_MULTIPLE) // SIZE_MULTIPLE) * SIZE_MULTIPLE for n in (rows, cols))


def deterministic_transforms(
    size: tuple[int, int], label_map: dict | None = None, hu_offset: float = 0.0, hu_scale: float = 1.0
) -> Compose:
    """Load a slice (HU from RescaleSlope/Intercept, rows x columns, spacing from PixelSpacing) and its mask,
    resample both to SPACING_MM (bilinear / nearest), window to [0, 1], then pad or crop to `size`.

    `hu_scale * hu + hu_offset` is the site's own intensity harmonisation (site config data.hu_offset /
    hu_scale): windowing the harmonised HU to HU_WINDOW is windowing the stored HU to the shifted bounds."""
    low, high = ((bound - hu_offset) / hu_scale for bound in HU_WINDOW)
    return Compose([
        # swap_ij=False keeps pydicom's (rows, columns) order, the order masks are stored in.
        LoadImaged(keys="image", reader=PydicomReader(swap_ij=False), image_only=True),
        LoadLabeld(label_map),
        EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"),
        Spacingd(keys=KEYS, pixdim=SPACING_MM, mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys=KEYS, spatial_size=size),  # pads with 0: air after windowing, background
        EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False),
    ])  # fmt: skip


def augmentations() -> Compose:
    return Compose([
        RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=KEYS, prob=0.5, max_k=3),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
    ])  # fmt: skip


def make_transforms(train: bool, size: tuple[int, int] = (64, 64), label_map: dict | None = None) -> Compose:
    """The whole chain for one record: deterministic steps, then augmentation if training."""
    steps = deterministic_transforms(size, label_map)
    return Compose([steps, augmentations()]) if train else steps


# Plain training: Dice over the whole batch (batch=True) plus cross-entropy. DP-SGD needs a loss that is a mean
# of per-sample terms (Opacus's loss_reduction="mean"): batch Dice couples the samples, so one slice would move
# every sample's gradient and per-sample clipping would not bound its influence; there each slice's own Dice.
_BATCH_LOSS = DiceCELoss(sigmoid=True, batch=True)
_SAMPLE_LOSS = DiceCELoss(sigmoid=True, batch=False)


def batch_loss(model: torch.nn.Module, batch, device: str = "cpu") -> torch.Tensor:
    """The training loss of one batch: Dice over the batch's pixels plus cross-entropy."""
    return _BATCH_LOSS(model(batch["image"].to(device)), batch["label"].to(device))


def sample_loss(model: torch.nn.Module, batch, device: str = "cpu") -> torch.Tensor:
    """DP-SGD's loss of one batch: the mean over slices of each slice's own Dice + cross-entropy."""
    return _SAMPLE_LOSS(model(batch["image"].to(device)), batch["label"].to(device))


def train(model: torch.nn.Module, loader, *, device: str = "cpu", **options) -> TrainResult:
    """Train for `epochs` passes (or `max_steps` batches) on `batch_loss`; returns steps taken and mean loss.
    `options` (epochs or max_steps, lr, algorithm, should_stop): see tasks.common.train_loop."""
    return train_loop(model, loader, lambda net, batch: batch_loss(net, batch, device), device=device, **options)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, device: str = "cpu") -> float:
    """Mean Dice over slices; a slice without lesion scores 1 if nothing is predicted, else 0."""
    model.to(device).eval()
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    for batch in loader:
        pred = (torch.sigmoid(model(batch["image"].to(device))) > 0.5).float()
        metric(y_pred=pred, y=batch["label"].to(device))
    value = float(metric.aggregate().item())
    metric.reset()
    return value


def _prepare(records: list[dict], steps: Compose, report, split: str) -> list[dict]:
    """Run the deterministic steps once per record (this is where pixels are decoded); a record that fails
    is skipped and listed in the report with the reason, never ends the round."""
    out = []
    for record in records:
        try:
            out.append(steps(record))
        except Exception as exc:  # MONAI wraps the reader's error; its first line names the cause
            cause = exc.__cause__ or exc
            report.skipped.append((record["image"], f"cannot be loaded ({type(cause).__name__}: {cause})"))
            report.usable[split] -= 1
    return out


def _site_size(report) -> tuple[int, int]:
    """The site's training size from each slice's own field of view (its size times its own spacing)."""
    return target_size([fov for fov, n in report.fields_mm.items() for _ in range(n)])


def make_loaders(cfg, *, batch_size: int = 8, seed: int = 0, num_workers: int = 0):
    """A site's (train_loader, val_loader, DataReport) from its checked manifest: slices resampled to
    SPACING_MM and padded or cropped to the site's size (target_size); deterministic steps run once.
    A site without validation patients validates on its training slices (the report warns)."""
    from monai.data import DataLoader, Dataset

    from consortium.data.manifest import load_records

    records, report = load_records(cfg, decode=False)
    size = _site_size(report)
    steps = deterministic_transforms(size, cfg.data.label_map, cfg.data.hu_offset, cfg.data.hu_scale)
    prepared = {split: _prepare(recs, steps, report, split) for split, recs in records.items()}
    if not prepared["train"]:
        from consortium.data.manifest import DataError

        raise DataError(f"site '{cfg.name}': no train slice could be loaded.\n{report.summary()}")
    if not prepared["val"]:
        prepared["val"] = list(prepared["train"])
    generator = torch.Generator().manual_seed(seed)
    augment = augmentations()
    augment.set_random_state(seed=seed)
    train_loader = DataLoader(
        Dataset(prepared["train"], augment), batch_size=batch_size, shuffle=True, num_workers=num_workers,
        generator=generator,
    )  # fmt: skip
    val_loader = DataLoader(Dataset(prepared["val"]), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, val_loader, report


def make_test_loader(cfg, *, batch_size: int = 32):
    """Every usable slice of a site's manifest (train and val splits alike), without augmentation: for a
    held-out cohort that no model trained on, such as the benchmark's generated test patients."""
    from monai.data import DataLoader, Dataset

    from consortium.data.manifest import load_records

    records, report = load_records(cfg, decode=False)
    steps = deterministic_transforms(_site_size(report), cfg.data.label_map, cfg.data.hu_offset, cfg.data.hu_scale)
    data = _prepare(records["train"], steps, report, "train") + _prepare(records["val"], steps, report, "val")
    return DataLoader(Dataset(data), batch_size=batch_size, shuffle=False)
