"""dp_sgd.trainable: DP-SGD trains only the named weights (e.g. the UNet's decoder); the rest stay put."""

import re

import pytest
import torch

from consortium.privacy.dpsgd import DPSGDSettings, SiteDPSGD, freeze_for_dp
from consortium.tasks import seg2d
from tests.unit.test_privacy import _Loader


def test_decoder_only_dp_sgd_moves_only_the_decoder():
    torch.manual_seed(0)
    model = seg2d.build_model(channels=(4, 8, 16, 32), num_res_units=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = DPSGDSettings.from_dict({"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0,
                                        "trainable": "decoder"})  # fmt: skip
    dp = SiteDPSGD(settings, model=model, train_loader=_Loader(3, 2), batch_size=3,
                   decoder_pattern=seg2d.DECODER_PARAMS)  # fmt: skip
    decoder = {n for n, _ in model.named_parameters() if re.search(seg2d.DECODER_PARAMS, n)}
    assert decoder and dp.trained_weights == sum(p.numel() for n, p in model.named_parameters() if n in decoder)
    opt = dp.optimizer(0.05)
    opt.groups = torch.tensor([0, 0, 1, 2, 2])
    opt.zero_grad()
    x, y = torch.randn(5, 1, 16, 16), torch.rand(5, 1, 16, 16)
    torch.nn.functional.mse_loss(dp.module(x), y).backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name in decoder), name


def test_trainable_settings_are_refused_by_name():
    base = {"noise_multiplier": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}
    with pytest.raises(ValueError, match=r"dp_sgd.trainable: '\(' is not a regex"):
        DPSGDSettings.from_dict({**base, "trainable": "("})
    model = torch.nn.Sequential(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match="matches none of the model's parameters"):
        freeze_for_dp(model, "^decoder", decoder_pattern=None)
    with pytest.raises(ValueError, match="names no decoder"):
        freeze_for_dp(model, "decoder", decoder_pattern=None)
    settings = DPSGDSettings.from_dict({**base, "trainable": "decoder"})
    assert DPSGDSettings.from_dict(settings.to_dict()) == settings
