"""Per-sample gradients for DP-SGD: Opacus's GradSampleModule with a faster sampler for convolutions."""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_grad_sampler(layer, activations, backprops):
    """Per-sample weight gradients of a (transposed) convolution in one grouped-convolution backward call.

    Folding the batch into the channels (groups = batch x groups) makes the weight gradient of the grouped
    convolution the stack of every sample's own weight gradient. On the demo UNet (CPU) a DP-SGD step takes
    about 1.9x a plain step this way, against 2.3-2.5x with Opacus's unfold (Conv) and functorch
    (ConvTranspose) paths; tests check both give the same values."""
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        if not isinstance(layer, _TRANSPOSED) and layer.padding_mode == "zeros":
            return compute_conv_grad_sample(layer, activations, backprops)  # Opacus handles "same"/"valid"
        raise ValueError(f"DP-SGD: {type(layer).__name__} with padding_mode={layer.padding_mode!r} is not supported")
    x, grad = activations[0].to(backprops.dtype), backprops
    n, weight, out = x.shape[0], layer.weight, {}
    if weight.requires_grad:
        transposed = isinstance(layer, _TRANSPOSED)
        spatial = weight.dim() - 2
        # only the weight's shape matters for the weight gradient: no n copies of the weight
        shape_only = weight.new_empty((n * weight.shape[0],) + tuple(weight.shape[1:]))
        per_sample = torch.ops.aten.convolution_backward(
            grad.reshape(1, -1, *grad.shape[2:]),
            x.reshape(1, -1, *x.shape[2:]),
            shape_only,
            None,
            list(layer.stride),
            list(layer.padding),
            list(layer.dilation),
            transposed,
            list(layer.output_padding) if transposed else [0] * spatial,
            n * layer.groups,
            [False, True, False],
        )[1]
        out[weight] = per_sample.view(n, *weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = grad.sum(dim=tuple(range(2, grad.dim())))
    return out


class ConvGradSampleModule(GradSampleModule):
    """Opacus's GradSampleModule with `conv_grad_sampler` for every convolution (same values, faster)."""

    GRAD_SAMPLERS = {**GradSampleModule.GRAD_SAMPLERS, **{conv: conv_grad_sampler for conv in _CONVS}}
