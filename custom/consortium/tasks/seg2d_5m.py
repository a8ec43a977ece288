"""seg2d with a 4.9 M-parameter UNet: the demo task (same data, transforms, loss, depth) at 3.5x the width.

The demo UNet (channels 16..128, 0.40 M parameters) is small next to the models hospitals train; this task,
`task: seg2d_5m` in a job, measures what FLARE, HE and checkpoints cost per round at a realistic size
(bench/round_overhead.py). Same depth as the demo UNet, so the demo's sizes (multiples of 8) still fit."""

from __future__ import annotations

from consortium.tasks import seg2d as _seg2d
from consortium.tasks.seg2d import *  # noqa: F403  (the task interface: loaders, loss, train, evaluate)

CHANNELS = (56, 112, 224, 448)  # 4,903,315 parameters and buffers


def build_model(channels=CHANNELS, num_res_units: int = 2, prior: float = 0.02):
    """seg2d's UNet with wider channels (every other choice as the demo's: instance norm, no in-place ReLU)."""
    return _seg2d.build_model(channels, num_res_units=num_res_units, prior=prior)
