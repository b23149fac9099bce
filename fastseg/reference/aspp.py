"""DeepLab-v2's ASPP exactly as the PyTorch port (kazuto1011/deeplab-pytorch) writes it: four
3x3 convolutions with padding = dilation = rate, each with a bias, summed."""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ReferenceASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_channels, out_channels, 3, 1, padding=rate,
                                               dilation=rate, bias=True))
        for m in self.children():
            nn.init.normal_(m.weight, mean=0, std=0.01)
            nn.init.constant_(m.bias, 0)

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


def aspp_reference(input: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                   rates: Sequence[int]) -> torch.Tensor:
    return sum(F.conv2d(input, w, b, 1, r, r) for w, b, r in zip(weights, biases, rates))
