"""Launch helpers for the Triton multi-tap convolution kernels (tap_conv.py).

Three entry points, used by the fastseg operators on CUDA tensors, and on CPU tensors when
FASTSEG_FORCE_TRITON=1 with TRITON_INTERPRET=1 (the interpreter runs the same kernels on the
CPU, one program at a time):

* conv_forward:      out = epilogue(multi-tap conv(x));
* conv_input_grad:   the input gradient, as the forward kernel over the (zero-inserted, for
                     stride > 1) output gradient with the tap offsets negated;
* conv_weight_grad:  the per-tap weight gradient, float32, shape (T, Cin, Cout).

Configurations: each kernel has a list of tile configurations (FWD_CONFIGS, WGRAD_CONFIGS).
On a GPU, the configurations that suit the problem (prune_*) are each timed once per problem
key with triton.testing.do_bench, including the split-K reduction where there is one, and the
fastest is cached for the process. Under the interpreter a fixed small configuration is used
(INTERPRETER_*; tests swap it to cover the split paths). compile_check.py compiles every
configuration ahead of time for sm_80 and sm_90.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fastseg.kernels.taps import TapTable, transposed_tap_table


@dataclass(frozen=True)
class FwdConfig:
    BLOCK_H: int
    BLOCK_W: int
    BLOCK_N: int
    BLOCK_K: int
    SPLIT_K: int
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        return dict(BLOCK_H=self.BLOCK_H, BLOCK_W=self.BLOCK_W, BLOCK_N=self.BLOCK_N,
                    BLOCK_K=self.BLOCK_K, SPLIT_K=self.SPLIT_K)


@dataclass(frozen=True)
class WgradConfig:
    BLOCK_C: int
    BLOCK_N: int
    BLOCK_P: int
    SPLIT_P: int
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        return dict(BLOCK_C=self.BLOCK_C, BLOCK_N=self.BLOCK_N, BLOCK_P=self.BLOCK_P, SPLIT_P=self.SPLIT_P)


# Pixel tiles are BLOCK_H x BLOCK_W (M = their product). Large-Cout problems (backbone convs,
# input gradients) want wide N tiles; small-Cout ones (ASPP: 21 classes) want BLOCK_N = 32 and
# split-K to give every SM work.
FWD_CONFIGS = (
    FwdConfig(8, 16, 128, 32, 1, 8, 3),
    FwdConfig(8, 16, 64, 32, 1, 4, 4),
    FwdConfig(16, 16, 64, 32, 1, 8, 3),
    FwdConfig(16, 8, 128, 32, 1, 8, 3),
    FwdConfig(8, 16, 32, 32, 1, 4, 4),
    FwdConfig(16, 16, 32, 64, 1, 8, 3),
    FwdConfig(8, 16, 32, 32, 4, 4, 4),
    FwdConfig(16, 16, 32, 64, 4, 8, 3),
    FwdConfig(8, 8, 32, 64, 8, 4, 4),
    FwdConfig(8, 16, 32, 32, 8, 4, 4),
)

WGRAD_CONFIGS = (
    WgradConfig(64, 32, 64, 1, 4, 3),
    WgradConfig(64, 64, 64, 1, 4, 3),
    WgradConfig(128, 64, 32, 1, 8, 3),
    WgradConfig(128, 128, 32, 1, 8, 3),
    WgradConfig(64, 32, 64, 4, 4, 3),
    WgradConfig(128, 32, 64, 4, 8, 3),
)


def fwd_shared_bytes(cfg: FwdConfig, itemsize: int) -> int:
    """Shared memory the pipelined A and B tiles need (Triton's estimate is close to this)."""
    return cfg.num_stages * (cfg.BLOCK_H * cfg.BLOCK_W + cfg.BLOCK_N) * cfg.BLOCK_K * itemsize


def wgrad_shared_bytes(cfg: WgradConfig, itemsize: int) -> int:
    return cfg.num_stages * (cfg.BLOCK_C + cfg.BLOCK_N) * cfg.BLOCK_P * itemsize


REDUCE_BLOCK = 1024
REDUCE_WARPS = 4

# Under TRITON_INTERPRET=1: small tiles (tl.dot needs every dimension >= 16), and no timing.
INTERPRETER_FWD_CONFIG = FwdConfig(4, 4, 16, 16, 1, 1, 1)
INTERPRETER_WGRAD_CONFIG = WgradConfig(16, 16, 16, 1, 1, 1)


def _kernels():
    # Imported lazily so that `import fastseg` works where triton is not installed.
    from fastseg.kernels import tap_conv
    return tap_conv


def interpreting() -> bool:
    """Whether the Triton kernels were created in interpreter mode (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction
    return isinstance(_kernels().tap_conv_fwd_kernel, InterpretedFunction)


def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _max_shared(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter has no shared memory limit
    import triton
    return triton.runtime.driver.active.utils.get_device_properties(device.index)["max_shared_mem"]


def _dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """TF32 for float32 on CUDA iff cuDNN convolutions may use it (torch.backends.cudnn.allow_tf32)."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def prune_fwd(configs, n_images, c_in, c_out, out_hw, n_taps, sms, itemsize, max_shared):
    """Drop tiles far larger than the problem or than the device's shared memory; keep split-K
    only where the tiles alone would leave SMs idle."""
    keep = [c for c in configs
            if c.BLOCK_N <= max(32, _next_pow2(c_out)) and c.BLOCK_K <= max(16, _next_pow2(c_in))
            and c.SPLIT_K <= max(1, n_taps) and fwd_shared_bytes(c, itemsize) <= max_shared]
    def tiles(c):
        return (n_images * math.ceil(out_hw[0] / c.BLOCK_H) * math.ceil(out_hw[1] / c.BLOCK_W)
                * math.ceil(c_out / c.BLOCK_N))
    keep = [c for c in keep if c.SPLIT_K == 1 or tiles(c) < 2 * sms]
    return keep or [min(configs, key=lambda c: fwd_shared_bytes(c, itemsize))]


def prune_wgrad(configs, c_in, c_out, n_taps, pixels, sms, itemsize, max_shared):
    keep = [c for c in configs if c.BLOCK_N <= max(32, _next_pow2(c_out))
            and c.BLOCK_C <= max(64, _next_pow2(c_in)) and wgrad_shared_bytes(c, itemsize) <= max_shared]
    def tiles(c):
        return n_taps * math.ceil(c_in / c.BLOCK_C) * math.ceil(c_out / c.BLOCK_N)
    keep = [c for c in keep if c.SPLIT_P == 1 or (tiles(c) < 2 * sms and pixels >= 4 * c.BLOCK_P)]
    return keep or [min(configs, key=lambda c: wgrad_shared_bytes(c, itemsize))]


_TUNED: dict = {}


def _pick(key, candidates_for: Callable, launch: Callable, interpreter_config):
    """The cached best configuration for `key`, timing each of candidates_for() on a cache miss.

    A hit costs one dict lookup: this runs on every call, and on a GPU the host's time per
    call, not the kernel's, bounds small problems."""
    if interpreting():
        return interpreter_config
    best = _TUNED.get(key)
    if best is not None:
        return best
    candidates = candidates_for()
    if len(candidates) == 1:
        best = candidates[0]
    else:
        import triton
        from triton.runtime.errors import OutOfResources
        timings = {}
        for cfg in candidates:
            try:
                timings[cfg] = triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20)
            except OutOfResources:
                timings[cfg] = float("inf")
        best = min(timings, key=timings.get)
    _TUNED[key] = best
    return best


def _strides4(t: Optional[torch.Tensor]):
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)


def conv_forward(x: torch.Tensor, w_taps: torch.Tensor, table: TapTable, *,
                 bias: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                 shift: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                 relu: bool = False, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Multi-tap convolution with fused epilogue. w_taps: (T, Cin, Cout), contiguous."""
    k = _kernels()
    n, c_in, h, w = x.shape
    c_out = w_taps.shape[2]
    oh, ow = table.out_hw
    out = torch.empty((n, c_out, oh, ow), dtype=x.dtype, device=x.device, memory_format=memory_format)
    if out.numel() == 0:
        return out
    taps = table.as_tensor(x.device)
    if len(table) == 0:  # no live tap: the kernel's loop is empty, give it valid pointers anyway
        taps = torch.zeros((1, 6), dtype=torch.int32, device=x.device)
        w_taps = x.new_zeros((1, c_in, c_out))
    w_taps = w_taps.contiguous()
    dummy = out
    precision = _dot_precision(x.dtype, x.device)
    flags = dict(HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
                 HAS_RES=residual is not None, RELU=bool(relu))

    def launch(cfg: FwdConfig):
        grid = (n * math.ceil(oh / cfg.BLOCK_H) * math.ceil(ow / cfg.BLOCK_W),
                math.ceil(c_out / cfg.BLOCK_N), cfg.SPLIT_K)
        part = out
        if cfg.SPLIT_K > 1:
            part = torch.empty((cfg.SPLIT_K, n, c_out, oh, ow), dtype=torch.float32, device=x.device)
        k.tap_conv_fwd_kernel[grid](
            x, w_taps, taps, out, part,
            bias if bias is not None else dummy, scale if scale is not None else dummy,
            shift if shift is not None else dummy, residual if residual is not None else dummy,
            c_in, h, w, c_out, oh, ow, len(table),
            *x.stride(), *out.stride(), *_strides4(residual),
            n * c_out * oh * ow, c_out * oh * ow,
            *table.stride,
            DOT_PRECISION=precision, **flags, **cfg.meta(),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if cfg.SPLIT_K > 1:
            total = n * c_out * oh * ow
            k.tap_conv_reduce_kernel[(math.ceil(total / REDUCE_BLOCK),)](
                part, out, bias if bias is not None else dummy, scale if scale is not None else dummy,
                shift if shift is not None else dummy, residual if residual is not None else dummy,
                total, c_out, oh, ow, cfg.SPLIT_K,
                *out.stride(), *_strides4(residual), total,
                **flags, BLOCK=REDUCE_BLOCK, num_warps=REDUCE_WARPS,
            )

    key = ("fwd", n, c_in, h, w, c_out, oh, ow, len(table), table.stride, x.dtype, x.stride(),
           memory_format, tuple(flags.values()), precision, x.device)
    cfg = _pick(key, lambda: prune_fwd(FWD_CONFIGS, n, c_in, c_out, (oh, ow), len(table),
                                       _sm_count(x.device), x.element_size(), _max_shared(x.device)),
                launch, INTERPRETER_FWD_CONFIG)
    launch(cfg)
    return out


def conv_input_grad(grad: torch.Tensor, w_taps_oi: torch.Tensor, table: TapTable) -> torch.Tensor:
    """dx for a multi-tap convolution. w_taps_oi: (T, Cout, Cin) (the forward weights with each
    tap's matrix transposed), in table order."""
    sh, sw = table.stride
    if (sh, sw) != (1, 1):  # g'[oh*s] = g[oh]: a stride-1 conv over g' gives dx (taps.transposed_tap_table)
        n, c, oh, ow = grad.shape
        spread = torch.empty((n, c, (oh - 1) * sh + 1, (ow - 1) * sw + 1), dtype=grad.dtype,
                             device=grad.device, memory_format=torch.channels_last).zero_()
        spread[:, :, ::sh, ::sw] = grad
        grad = spread
    return conv_forward(grad, w_taps_oi, transposed_tap_table(table))


def conv_weight_grad(x: torch.Tensor, grad: torch.Tensor, table: TapTable) -> torch.Tensor:
    """dW per tap, float32, (T, Cin, Cout), in table order."""
    k = _kernels()
    n, c_in, _, _ = x.shape
    c_out = grad.shape[1]
    oh, ow = table.out_hw
    n_taps = len(table)
    if n_taps == 0 or n == 0:
        return torch.zeros((n_taps, c_in, c_out), dtype=torch.float32, device=x.device)
    taps = table.as_tensor(x.device)
    precision = _dot_precision(x.dtype, x.device)
    pixels = n * max(t.n_outputs for t in table.taps)
    result = {}

    def launch(cfg: WgradConfig):
        part = torch.empty((cfg.SPLIT_P, n_taps, c_in, c_out), dtype=torch.float32, device=x.device)
        grid = (n_taps * math.ceil(c_in / cfg.BLOCK_C), math.ceil(c_out / cfg.BLOCK_N), cfg.SPLIT_P)
        k.tap_conv_wgrad_kernel[grid](
            x, grad, taps, part, n, c_in, c_out, oh, ow,
            *x.stride(), *grad.stride(), n_taps * c_in * c_out, *table.stride,
            DOT_PRECISION=precision, **cfg.meta(), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        result["dw"] = part[0] if cfg.SPLIT_P == 1 else part.sum(0)

    key = ("wgrad", n, c_in, c_out, table.in_hw, table.out_hw, tuple(table.taps), table.stride,
           x.dtype, x.stride(), grad.stride(), precision, x.device)
    cfg = _pick(key, lambda: prune_wgrad(WGRAD_CONFIGS, c_in, c_out, n_taps, pixels, _sm_count(x.device),
                                         x.element_size(), _max_shared(x.device)),
                launch, INTERPRETER_WGRAD_CONFIG)
    launch(cfg)
    return result["dw"]
