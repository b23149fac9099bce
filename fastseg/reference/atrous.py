"""Reference for fastseg.atrous_conv2d: F.conv2d, then the epilogue as separate operations."""
import torch
import torch.nn.functional as F


def atrous_conv2d_reference(input, weight, bias=None, stride=1, padding=0, dilation=1, *,
                            scale=None, shift=None, residual=None, relu=False) -> torch.Tensor:
    y = F.conv2d(input, weight, bias, stride, padding, dilation)
    if scale is not None:
        y = y * scale.view(1, -1, 1, 1)
    if shift is not None:
        y = y + shift.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual
    if relu:
        y = torch.relu(y)
    return y
