"""fastseg::aspp and its gradient operators: DeepLab-v2's ASPP as one fused computation.

    fastseg::aspp(input, weights[], biases[], rates[]) -> Tensor
        = sum_i conv2d(input, weights[i], biases[i], padding=rates[i], dilation=rates[i])
    fastseg::aspp_grad_input(grad, weights[], rates[], in_channels) -> Tensor
    fastseg::aspp_grad_weights(grad, input, weights[], rates[]) -> Tensor[]

All branches become one multi-tap convolution (kernels/taps.py): the centre taps merged (their
weights summed), taps that never see the map dropped, the biases summed. CPU kernels: "project,
then shift" on MKL GEMMs with dead rows skipped (kernels/aspp_cpu.py). CUDA kernels: the
Triton multi-tap implicit GEMM with split-K and per-tile tap skipping (kernels/tap_conv*.py).
The output is NCHW-contiguous. Arguments are assumed valid here: fastseg.aspp checks them.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from fastseg.kernels import aspp_cpu
from fastseg.kernels.taps import aspp_tap_table, pack_tap_weights, unpack_tap_grads
from fastseg.ops._backend import triton_forced


def _nhwc(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _forward_triton(input, weights, biases, rates):
    from fastseg.kernels import tap_conv_launch
    table = aspp_tap_table(rates, tuple(input.shape[2:]))
    return tap_conv_launch.conv_forward(
        _nhwc(input), pack_tap_weights(weights, table, "io"), table,
        bias=torch.stack(list(biases)).sum(0, dtype=torch.promote_types(input.dtype, torch.float32)).to(input.dtype))


@torch.library.custom_op("fastseg::aspp", mutates_args=(), device_types="cpu")
def aspp(input: Tensor, weights: List[Tensor], biases: List[Tensor], rates: List[int]) -> Tensor:
    if triton_forced():
        return _forward_triton(input, weights, biases, rates)
    return aspp_cpu.aspp_forward(input, weights, biases, rates)


@aspp.register_kernel("cuda")
def _(input, weights, biases, rates):
    return _forward_triton(input, weights, biases, rates)


@aspp.register_fake
def _(input, weights, biases, rates):
    n, _, h, w = input.shape
    return input.new_empty((n, weights[0].shape[0], h, w))


def _grad_input_triton(grad, weights, rates, in_channels):
    from fastseg.kernels import tap_conv_launch
    table = aspp_tap_table(rates, tuple(grad.shape[2:]))
    return tap_conv_launch.conv_input_grad(_nhwc(grad), pack_tap_weights(weights, table, "oi"), table)


@torch.library.custom_op("fastseg::aspp_grad_input", mutates_args=(), device_types="cpu")
def aspp_grad_input(grad: Tensor, weights: List[Tensor], rates: List[int], in_channels: int) -> Tensor:
    if triton_forced():
        return _grad_input_triton(grad, weights, rates, in_channels)
    return aspp_cpu.aspp_grad_input(grad, weights, rates, in_channels)


@aspp_grad_input.register_kernel("cuda")
def _(grad, weights, rates, in_channels):
    return _grad_input_triton(grad, weights, rates, in_channels)


@aspp_grad_input.register_fake
def _(grad, weights, rates, in_channels):
    n, _, h, w = grad.shape
    return grad.new_empty((n, in_channels, h, w))


def _grad_weights_triton(grad, input, weights, rates):
    from fastseg.kernels import tap_conv_launch
    table = aspp_tap_table(rates, tuple(input.shape[2:]))
    taps = tap_conv_launch.conv_weight_grad(_nhwc(input), _nhwc(grad), table)
    return [g.to(w.dtype) for g, w in zip(unpack_tap_grads(taps, table, [w.shape for w in weights], "io"), weights)]


@torch.library.custom_op("fastseg::aspp_grad_weights", mutates_args=(), device_types="cpu")
def aspp_grad_weights(grad: Tensor, input: Tensor, weights: List[Tensor], rates: List[int]) -> List[Tensor]:
    if triton_forced():
        return _grad_weights_triton(grad, input, weights, rates)
    return aspp_cpu.aspp_grad_weights(grad, input, [w.shape for w in weights], rates)


@aspp_grad_weights.register_kernel("cuda")
def _(grad, input, weights, rates):
    return _grad_weights_triton(grad, input, weights, rates)


@aspp_grad_weights.register_fake
def _(grad, input, weights, rates):
    return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _setup_context(ctx, inputs, output):
    input, weights, biases, rates = inputs
    ctx.rates = list(rates)
    ctx.n_branches = len(weights)
    ctx.save_for_backward(input, *weights)


def _backward(ctx, grad):
    input, *weights = ctx.saved_tensors
    needs_input, needs_weights, needs_biases, _ = ctx.needs_input_grad
    d_input = None
    if needs_input:
        d_input = torch.ops.fastseg.aspp_grad_input(grad, weights, ctx.rates, input.shape[1])
    d_weights = [None] * ctx.n_branches
    if any(needs_weights):
        d_weights = list(torch.ops.fastseg.aspp_grad_weights(grad, input, weights, ctx.rates))
    d_biases = [None] * ctx.n_branches
    if any(needs_biases):
        # Every branch's bias is added to every output pixel: all get the same gradient.
        d_bias = grad.sum(dim=(0, 2, 3))
        d_biases = [d_bias.clone() if needed else None for needed in needs_biases]
    return d_input, d_weights, d_biases, None


aspp.register_autograd(_backward, setup_context=_setup_context)
