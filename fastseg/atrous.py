"""fastseg.atrous_conv2d and fastseg.AtrousConv2d: dilated convolution with fused epilogues.

    y = atrous_conv2d(x, weight, bias, stride, padding, dilation,
                      scale=None, shift=None, residual=None, relu=False)
      = relu(((conv2d(x, weight, bias, stride, padding, dilation) * scale + shift) + residual))

with every epilogue step optional: `scale`/`shift` are per-output-channel vectors (a frozen
batch norm folds into them, see batchnorm_scale_shift), `residual` a tensor of the output's
shape. Without epilogues it has the semantics of torch.nn.functional.conv2d with groups=1.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import fastseg.ops  # noqa: F401  (registers torch.ops.fastseg.atrous_conv2d)
from fastseg import _checks
from fastseg.kernels.taps import conv_out_size


def _resolve_padding(padding, kernel_hw, dilation, stride):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions (as in F.conv2d)")
            totals = [d * (k - 1) for d, k in zip(dilation, kernel_hw)]
            if any(t % 2 for t in totals):
                raise NotImplementedError(
                    "padding='same' with an even effective kernel size needs asymmetric padding, which "
                    "fastseg.atrous_conv2d does not implement; pad the input explicitly")
            return tuple(t // 2 for t in totals)
        raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
    return _checks.int_pair("padding", padding, 0)


def atrous_conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  stride=1, padding=0, dilation=1, *, scale: Optional[torch.Tensor] = None,
                  shift: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                  relu: bool = False) -> torch.Tensor:
    """Dilated 2-D convolution (groups=1) with optional fused scale/shift, residual add and ReLU.

    Args:
        input: (N, Cin, H, W) or unbatched (Cin, H, W).
        weight: (Cout, Cin, kh, kw).
        bias: (Cout,) or None.
        stride, padding, dilation: as in torch.nn.functional.conv2d (padding may be 'valid',
            or 'same' when the effective kernel size is odd).
        scale, shift: (Cout,) or None; applied as y * scale + shift after the bias.
        residual: a tensor of the output's shape added after scale/shift, or None.
        relu: apply ReLU last.

    Under torch.autocast every tensor argument is cast to autocast's dtype, as for nn.Conv2d.
    """
    _checks.tensor("input", input)
    if input.dim() not in (3, 4):
        raise ValueError(f"input must have 4 dimensions (N, C, H, W) or 3 (C, H, W), got shape {tuple(input.shape)}")
    _checks.floating("input", input)
    _checks.tensor("weight", weight, 4)
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    cout, cin, kh, kw = weight.shape
    if cin != x.shape[1]:
        raise ValueError(f"weight expects {cin} input channels (weight.shape[1]) but input has {x.shape[1]} "
                         f"channels; fastseg.atrous_conv2d supports groups=1 only")
    if cout == 0 or cin == 0:
        raise ValueError(f"weight must have at least one input and one output channel, got shape {tuple(weight.shape)}")
    stride = _checks.int_pair("stride", stride, 1)
    dilation = _checks.int_pair("dilation", dilation, 1)
    padding = _resolve_padding(padding, (kh, kw), dilation, stride)
    for name, t in (("bias", bias), ("scale", scale), ("shift", shift)):
        _checks.channel_vector(name, t, cout)
    out_hw = tuple(conv_out_size(x.shape[2 + i], (kh, kw)[i], stride[i], padding[i], dilation[i]) for i in range(2))
    if min(out_hw) < 1:
        raise ValueError(f"input of spatial size {tuple(x.shape[2:])} is too small for a {kh}x{kw} kernel "
                         f"with padding {padding} and dilation {dilation}: the output would be {out_hw}")
    res = residual
    if residual is not None:
        _checks.tensor("residual", residual)
        res = residual.unsqueeze(0) if unbatched and residual.dim() == 3 else residual
        expected = (x.shape[0], cout, *out_hw)
        if tuple(res.shape) != expected:
            raise ValueError(f"residual must have the output's shape {expected[1:] if unbatched else expected}, "
                             f"got {tuple(residual.shape)}")
    cast = _checks.autocast_dtype(x)
    if cast is not None:  # torch.autocast: nn.Conv2d's dtype rule for every tensor argument
        x, weight, bias, scale, shift, res = (
            t.to(cast) if t is not None else None for t in (x, weight, bias, scale, shift, res))
    _checks.same_device_dtype("input", x, weight=weight, bias=bias, scale=scale, shift=shift, residual=res)
    y = torch.ops.fastseg.atrous_conv2d(x, weight, bias, list(stride), list(padding), list(dilation),
                                        scale, shift, res, relu)
    return y.squeeze(0) if unbatched else y


def batchnorm_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift for a batch norm in eval mode: the running
    statistics are folded in whatever ``bn.training`` says (a batch norm in training mode
    normalises by each batch's statistics instead, which no fixed scale and shift can do)."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a batch-norm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn must track running statistics (track_running_stats=True)")
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv_std if bn.weight is not None else inv_std
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class AtrousConv2d(nn.Conv2d):
    """nn.Conv2d (groups=1, zero padding) computed by fastseg.atrous_conv2d.

    Same constructor signature, parameters and state_dict as nn.Conv2d, so it replaces one
    unchanged and checkpoints load unchanged; grouped convolutions and padding modes other
    than "zeros" raise NotImplementedError. forward() accepts the optional epilogue arguments
    of atrous_conv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None):
        if isinstance(groups, bool):  # a bias flag in groups' place
            raise TypeError("groups must be an int, got a bool: AtrousConv2d takes nn.Conv2d's "
                            "arguments in nn.Conv2d's order (..., dilation, groups, bias, ...)")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        if self.groups != 1:
            raise NotImplementedError(
                f"AtrousConv2d supports groups=1 only, got groups={groups}; use nn.Conv2d for "
                f"grouped convolutions")
        if self.padding_mode != "zeros":
            raise NotImplementedError(
                f"AtrousConv2d supports padding_mode='zeros' only, got {padding_mode!r}; use "
                f"nn.Conv2d for other padding modes")

    def forward(self, input, *, scale=None, shift=None, residual=None, relu: bool = False):
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        return atrous_conv2d(input, self.weight, self.bias, tuple(self.stride), padding, tuple(self.dilation),
                             scale=scale, shift=shift, residual=residual, relu=relu)
