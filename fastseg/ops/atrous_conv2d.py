"""fastseg::atrous_conv2d and its gradient operators.

    fastseg::atrous_conv2d(input, weight, bias?, stride[2], padding[2], dilation[2],
                           scale?, shift?, residual?, relu) -> Tensor
        = relu?(((conv2d(input, weight) + bias) * scale + shift) + residual)
    fastseg::atrous_conv2d_grad_input(grad, input, weight, stride, padding, dilation) -> Tensor
    fastseg::atrous_conv2d_grad_weight(grad, input, weight, stride, padding, dilation) -> Tensor

CPU kernels: oneDNN with the epilogue folded / in place (kernels/conv_cpu.py). CUDA kernels:
the Triton multi-tap implicit GEMM (kernels/tap_conv*.py) on channels_last operands; the input
gradient is the same forward kernel over the output gradient with the taps negated, the weight
gradient its own Triton kernel. Arguments are assumed valid here: fastseg.atrous_conv2d checks
them.

Autograd covers input, weight, bias, scale, shift and residual (first derivatives only).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from fastseg.kernels import conv_cpu
from fastseg.kernels.taps import conv_out_size, conv_tap_table, pack_tap_weights, unpack_tap_grads
from fastseg.ops._backend import output_memory_format, triton_forced


def _table(input: Tensor, weight: Tensor, stride, padding, dilation):
    return conv_tap_table(tuple(weight.shape[2:]), tuple(input.shape[2:]), tuple(stride),
                          tuple(padding), tuple(dilation))


def _nhwc(t: Tensor) -> Tensor:
    # The Triton kernels read channels innermost (16-byte vector loads along K); see tap_conv.py.
    return t.contiguous(memory_format=torch.channels_last)


def _vec(t: Optional[Tensor]) -> Optional[Tensor]:
    return t.contiguous() if t is not None else None


# ---------------------------------------------------------------------------------------------
# Forward


def _forward_triton(input, weight, bias, stride, padding, dilation, scale, shift, residual, relu):
    from fastseg.kernels import tap_conv_launch
    table = _table(input, weight, stride, padding, dilation)
    return tap_conv_launch.conv_forward(
        _nhwc(input), pack_tap_weights([weight], table, "io"), table, bias=_vec(bias),
        scale=_vec(scale), shift=_vec(shift), residual=residual, relu=relu,
        memory_format=output_memory_format(input))


@torch.library.custom_op("fastseg::atrous_conv2d", mutates_args=(), device_types="cpu")
def atrous_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                  padding: List[int], dilation: List[int], scale: Optional[Tensor],
                  shift: Optional[Tensor], residual: Optional[Tensor], relu: bool) -> Tensor:
    if triton_forced():
        return _forward_triton(input, weight, bias, stride, padding, dilation, scale, shift, residual, relu)
    return conv_cpu.conv_forward(input, weight, bias, stride, padding, dilation, scale, shift, residual,
                                 relu, output_memory_format(input))


@atrous_conv2d.register_kernel("cuda")
def _(input, weight, bias, stride, padding, dilation, scale, shift, residual, relu):
    return _forward_triton(input, weight, bias, stride, padding, dilation, scale, shift, residual, relu)


@atrous_conv2d.register_fake
def _(input, weight, bias, stride, padding, dilation, scale, shift, residual, relu):
    n, _, h, w = input.shape
    cout, _, kh, kw = weight.shape
    out_hw = (conv_out_size(h, kh, stride[0], padding[0], dilation[0]),
              conv_out_size(w, kw, stride[1], padding[1], dilation[1]))
    return input.new_empty((n, cout, *out_hw)).contiguous(memory_format=output_memory_format(input))


# ---------------------------------------------------------------------------------------------
# Input gradient


@torch.library.custom_op("fastseg::atrous_conv2d_grad_input", mutates_args=(), device_types="cpu")
def atrous_conv2d_grad_input(grad: Tensor, input: Tensor, weight: Tensor, stride: List[int],
                             padding: List[int], dilation: List[int]) -> Tensor:
    if triton_forced():
        return _grad_input_triton(grad, input, weight, stride, padding, dilation)
    return conv_cpu.conv_grad_input(grad, input, weight, stride, padding, dilation).contiguous()


def _grad_input_triton(grad, input, weight, stride, padding, dilation):
    from fastseg.kernels import tap_conv_launch
    table = _table(input, weight, stride, padding, dilation)
    return tap_conv_launch.conv_input_grad(_nhwc(grad), pack_tap_weights([weight], table, "oi"), table)


@atrous_conv2d_grad_input.register_kernel("cuda")
def _(grad, input, weight, stride, padding, dilation):
    return _grad_input_triton(grad, input, weight, stride, padding, dilation)


@atrous_conv2d_grad_input.register_fake
def _(grad, input, weight, stride, padding, dilation):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# Weight gradient


@torch.library.custom_op("fastseg::atrous_conv2d_grad_weight", mutates_args=(), device_types="cpu")
def atrous_conv2d_grad_weight(grad: Tensor, input: Tensor, weight: Tensor, stride: List[int],
                              padding: List[int], dilation: List[int]) -> Tensor:
    if triton_forced():
        return _grad_weight_triton(grad, input, weight, stride, padding, dilation)
    return conv_cpu.conv_grad_weight(grad, input, weight, stride, padding, dilation).contiguous()


def _grad_weight_triton(grad, input, weight, stride, padding, dilation):
    from fastseg.kernels import tap_conv_launch
    table = _table(input, weight, stride, padding, dilation)
    taps = tap_conv_launch.conv_weight_grad(_nhwc(input), _nhwc(grad), table)
    return unpack_tap_grads(taps, table, [weight.shape], "io")[0].to(weight.dtype)


@atrous_conv2d_grad_weight.register_kernel("cuda")
def _(grad, input, weight, stride, padding, dilation):
    return _grad_weight_triton(grad, input, weight, stride, padding, dilation)


@atrous_conv2d_grad_weight.register_fake
def _(grad, input, weight, stride, padding, dilation):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# Autograd


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, scale, shift, residual, relu = inputs
    ctx.conv_args = (list(stride), list(padding), list(dilation))
    ctx.relu = relu
    ctx.has = (bias is not None, scale is not None, shift is not None, residual is not None)
    ctx.save_for_backward(input, weight, bias, scale, output if relu else None)


def _channel_sum(t: Tensor) -> Tensor:
    return t.sum(dim=(0, 2, 3))


def _backward(ctx, grad):
    input, weight, bias, scale, output = ctx.saved_tensors
    stride, padding, dilation = ctx.conv_args
    needs = ctx.needs_input_grad
    g = grad
    if ctx.relu:
        g = torch.where(output > 0, g, torch.zeros_like(g))
    d_residual = g if needs[8] else None
    d_shift = _channel_sum(g) if needs[7] else None
    d_scale = None
    if scale is not None:
        if needs[6]:  # d/d scale needs the pre-scale value, recomputed rather than stored
            z = torch.ops.fastseg.atrous_conv2d(input, weight, bias, stride, padding, dilation,
                                                None, None, None, False)
            d_scale = _channel_sum(g * z)
        g = g * scale.view(1, -1, 1, 1)
    d_bias = _channel_sum(g) if needs[2] else None
    d_input = d_weight = None
    if needs[0]:
        d_input = torch.ops.fastseg.atrous_conv2d_grad_input(g, input, weight, stride, padding, dilation)
    if needs[1]:
        d_weight = torch.ops.fastseg.atrous_conv2d_grad_weight(g, input, weight, stride, padding, dilation)
    return d_input, d_weight, d_bias, None, None, None, d_scale, d_shift, d_residual, None


atrous_conv2d.register_autograd(_backward, setup_context=_setup_context)
