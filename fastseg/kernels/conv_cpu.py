"""Atrous convolution on the CPU with the fused epilogues DeepLab's backbone needs.

oneDNN's direct convolution (what F.conv2d runs on the CPU) already runs the backbone's
dilated 3x3 shapes near this machine's GEMM peak (256 -> 256 at rate 2 and 512 -> 512 at rate 4
on 65x65 maps: ~225-320 GFLOP/s on 2 cores), and "project, then shift" loses to it there: the
(9*Cout)-channel projection is 9x the output and has to be written and read back. So the CPU
path keeps oneDNN for the convolution and removes the epilogue's extra passes instead:

* folded batch norm:  conv(x, w) * scale + shift == conv(x, w * scale) + (bias * scale + shift),
  exact up to float rounding, so BN costs a (Cout x Cin x kh x kw) multiply instead of two
  passes over the output;
* residual add and ReLU run in place on the convolution's fresh output.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def fold_epilogue(weight: torch.Tensor, bias: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                  shift: Optional[torch.Tensor]):
    """(weight, bias) of the convolution that already includes `* scale + shift`."""
    if scale is not None:
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = bias * scale if bias is not None else None
    if shift is not None:
        bias = shift if bias is None else bias + shift
    return weight, bias


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                 scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor], relu: bool, memory_format) -> torch.Tensor:
    w, b = fold_epilogue(weight, bias, scale, shift)
    y = F.conv2d(x, w, b, tuple(stride), tuple(padding), tuple(dilation))
    if residual is not None:
        y.add_(residual)
    if relu:
        y.relu_()
    return y.contiguous(memory_format=memory_format)


def conv_grad_input(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding,
                    dilation) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], 1,
        [True, False, False])[0]


def conv_grad_weight(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride, padding,
                     dilation) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0], 1,
        [False, True, False])[1]
