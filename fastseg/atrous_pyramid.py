"""fastseg.aspp and fastseg.ASPP: DeepLab-v2's atrous spatial pyramid pooling, fused.

DeepLab-v2's head is four 3x3 convolutions with padding = dilation = rate (6, 12, 18, 24), each
with a bias, whose outputs are summed into class logits. fastseg computes all branches as one
operation (torch.ops.fastseg.aspp); see kernels/aspp_cpu.py and kernels/tap_conv.py for how.

(The module is named atrous_pyramid rather than aspp so that `fastseg.aspp` can be the function.)
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

import fastseg.ops  # noqa: F401  (registers torch.ops.fastseg.aspp)
from fastseg import _checks

DEEPLAB_V2_RATES = (6, 12, 18, 24)


def aspp(input: torch.Tensor, weights: Sequence[torch.Tensor], biases: Optional[Sequence[torch.Tensor]],
         rates: Sequence[int] = DEEPLAB_V2_RATES) -> torch.Tensor:
    """sum_i conv2d(input, weights[i], biases[i], padding=rates[i], dilation=rates[i]), fused.

    Args:
        input: (N, Cin, H, W) or unbatched (Cin, H, W), any memory layout.
        weights: one (Cout, Cin, 3, 3) tensor per rate.
        biases: one (Cout,) tensor per rate, or None for no bias.
        rates: the dilation (= padding) of each branch, positive ints.
    Returns:
        (N, Cout, H, W) (or (Cout, H, W)), NCHW-contiguous. Under torch.autocast the branches
        run in autocast's dtype, as nn.Conv2d's would.
    """
    _checks.tensor("input", input)
    if input.dim() == 3:  # unbatched, as nn.Conv2d accepts
        return aspp(input.unsqueeze(0), weights, biases, rates).squeeze(0)
    if input.dim() != 4:
        raise ValueError(f"input must have 4 dimensions (N, C, H, W) or 3 (C, H, W), got shape "
                         f"{tuple(input.shape)}")
    _checks.floating("input", input)
    weights = _checks.tensor_list("weights", weights, 4)
    rates = _checks.positive_int_list("rates", rates)
    if not weights:
        raise ValueError("weights must hold at least one branch")
    if len(rates) != len(weights):
        raise ValueError(f"rates has {len(rates)} entries but weights has {len(weights)}: one rate per branch")
    cout = weights[0].shape[0]
    for i, w in enumerate(weights):
        if tuple(w.shape[2:]) != (3, 3):
            raise ValueError(f"weights[{i}] must be a 3x3 kernel (Cout, Cin, 3, 3), got shape {tuple(w.shape)}")
        if w.shape[1] != input.shape[1]:
            raise ValueError(f"weights[{i}] expects {w.shape[1]} input channels but input has {input.shape[1]}")
        if w.shape[0] != cout:
            raise ValueError(f"weights[{i}] has {w.shape[0]} output channels but weights[0] has {cout}")
    if cout == 0 or input.shape[1] == 0:
        raise ValueError("weights must have at least one input and one output channel")
    if biases is None:
        biases = [weights[0].new_zeros(cout) for _ in weights]
    else:
        biases = _checks.tensor_list("biases", biases, 1)
        if len(biases) != len(weights):
            raise ValueError(f"biases has {len(biases)} entries but weights has {len(weights)}")
        for i, b in enumerate(biases):
            _checks.channel_vector(f"biases[{i}]", b, cout)
    cast = _checks.autocast_dtype(input)
    if cast is not None:
        input = input.to(cast)
        weights = [w.to(cast) for w in weights]
        biases = [b.to(cast) for b in biases]
    tensors = {f"weights[{i}]": w for i, w in enumerate(weights)}
    tensors.update({f"biases[{i}]": b for i, b in enumerate(biases)})
    _checks.same_device_dtype("input", input, **tensors)
    return torch.ops.fastseg.aspp(input, weights, biases, rates)


class ASPP(nn.Module):
    """Drop-in DeepLab-v2 ASPP: children c0..c{n-1} are nn.Conv2d(in, out, 3, padding=r,
    dilation=r, bias=True), so state_dict keys and shapes are those of DeepLab-v2 checkpoints
    (aspp.c0.weight, aspp.c0.bias, ...); the branches run fused through fastseg.aspp.

    Initialisation as DeepLab-v2: weights N(0, 0.01), biases 0. The rates are read from the
    children at every call, so a branch whose dilation is changed later runs with the new
    one; a branch that is no longer an ASPP branch (padding != dilation, ...) is an error.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = DEEPLAB_V2_RATES):
        super().__init__()
        in_channels = _checks.positive_int("in_channels", in_channels)
        out_channels = _checks.positive_int("out_channels", out_channels)
        rates = _checks.positive_int_list("rates", rates)
        if not rates:
            raise ValueError("rates must hold at least one rate")
        for i, rate in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(in_channels, out_channels, 3, 1, padding=rate,
                                               dilation=rate, bias=True))
        for m in self.children():
            nn.init.normal_(m.weight, mean=0, std=0.01)
            nn.init.constant_(m.bias, 0)

    @property
    def rates(self) -> tuple:
        rates = []
        for name, c in self.named_children():
            if not isinstance(c, nn.Conv2d):  # (a ValueError: an AttributeError would be lost
                # in nn.Module.__getattr__, which would report "no attribute 'rates'")
                raise ValueError(f"ASPP.{name} is not an ASPP branch: it is a "
                                 f"{type(c).__name__}, not an nn.Conv2d")
            rate = c.dilation[0]
            if (c.kernel_size != (3, 3) or c.stride != (1, 1) or c.groups != 1
                    or c.padding_mode != "zeros" or c.dilation != (rate, rate)
                    or c.padding != (rate, rate)):
                raise ValueError(
                    f"ASPP.{name} is not an ASPP branch: it needs a 3x3 kernel, stride 1, one "
                    f"group, zero padding and padding = dilation, got kernel_size="
                    f"{c.kernel_size}, stride={c.stride}, groups={c.groups}, padding_mode="
                    f"{c.padding_mode!r}, padding={c.padding}, dilation={c.dilation}")
            rates.append(rate)
        return tuple(rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rates = self.rates  # checks the children first
        convs = list(self.children())
        return aspp(x, [c.weight for c in convs], [c.bias for c in convs], rates)

    def extra_repr(self) -> str:
        # Printing the module is how one finds out what is wrong with it: never raise here.
        try:
            return f"rates={self.rates}"
        except ValueError as exc:
            return f"rates: none ({exc})"
