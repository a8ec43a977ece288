"""Lesion segmentation on 2D CT slices: model, transforms, train and evaluate.

The executor, the server's initial model and both baselines import these same functions.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Iterable

import torch
from monai.data import PydicomReader
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
)

from consortium.tasks.common import TrainResult, train_loop

# MONAI's PydicomReader probes for a GPU decoder on every read; on CPU sites that is noise, not news.
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

METRIC_NAME = "Dice"  # what evaluate() returns; reports and progress lines use this name
HU_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window
KEYS = ("image", "label")


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


def make_transforms(train: bool) -> Compose:
    """Load DICOM (HU, rows x cols) and the .npy mask, window to [0, 1], channel-first; augment if training."""
    steps = [
        # swap_ij=False keeps pydicom's (rows, columns) order, the order masks are stored in.
        LoadImaged(keys="image", reader=PydicomReader(swap_ij=False), image_only=True),
        LoadImaged(keys="label", reader="NumpyReader", image_only=True),
        EnsureChannelFirstd(keys=KEYS, channel_dim="no_channel"),
        ScaleIntensityRanged(keys="image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=KEYS, dtype=torch.float32, track_meta=False),
    ]
    if train:
        steps += [
            RandFlipd(keys=KEYS, prob=0.5, spatial_axis=1),
            RandRotate90d(keys=KEYS, prob=0.5, max_k=3),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        ]
    return Compose(steps)


def train(
    model: torch.nn.Module, loader, *, device: str = "cpu", per_sample_loss: bool = False, **options
) -> TrainResult:
    """Train for `epochs` passes (or `max_steps` batches); returns steps taken and mean loss.
    `options` (epochs or max_steps, lr, optimizer, algorithm, should_stop): see tasks.common.train_loop.

    `per_sample_loss=True` (DP-SGD): Dice over the whole batch (batch=True) couples the samples, so one
    slice would move every sample's gradient and per-sample clipping would not bound its influence. Then
    the loss is instead the mean over samples of each sample's own Dice + CE, as Opacus's
    loss_reduction="mean" assumes."""
    loss_fn = DiceCELoss(sigmoid=True, batch=not per_sample_loss)

    def batch_loss(net, batch):
        return loss_fn(net(batch["image"].to(device)), batch["label"].to(device))

    return train_loop(model, loader, batch_loss, device=device, **options)


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


def make_loaders(cfg, *, batch_size: int = 8, seed: int = 0, num_workers: int = 0):
    """A site's (train_loader, val_loader, DataReport) from its checked manifest; deterministic steps cached."""
    from monai.data import CacheDataset, DataLoader

    from consortium.data.manifest import load_records

    records, report = load_records(cfg)
    generator = torch.Generator().manual_seed(seed)
    train_tf = make_transforms(train=True)
    train_tf.set_random_state(seed=seed)
    train_ds = CacheDataset(records["train"], train_tf, progress=False)
    val_ds = CacheDataset(records["val"], make_transforms(train=False), progress=False)
    train_loader = DataLoader(
        train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, generator=generator
    )
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, val_loader, report


def make_test_loader(cfg, *, batch_size: int = 32):
    """Every usable slice of a site's manifest (train and val splits alike), without augmentation: for a
    held-out cohort that no model trained on, such as the benchmark's generated test patients."""
    from monai.data import CacheDataset, DataLoader

    from consortium.data.manifest import load_records

    records, _ = load_records(cfg)
    # cached: every model of a benchmark is scored on it, and its transforms are all deterministic
    dataset = CacheDataset(records["train"] + records["val"], make_transforms(train=False), progress=False)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)
