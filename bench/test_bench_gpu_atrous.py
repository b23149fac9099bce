"""GPU benchmarks: fastseg's Triton kernels against cuDNN, timed with triton.testing.do_bench.
Skipped without a CUDA device.

    pytest bench/test_bench_gpu_atrous.py --benchmark-only

pytest-benchmark times each implementation (with a synchronize per call) so the groups compare
side by side; do_bench's figure (median over CUDA-event-timed repetitions, L2 cache flushed),
the host time per call (issuing 50 calls without a sync) and the max abs difference to the
reference go into extra_info. TF32 is off on both sides for float32 unless the id says tf32.

The "kernel only" rows launch the Triton kernel with the weights already packed and the input
already NHWC, as the operator does after its per-call preparation: the first H100 run showed
the whole calls host-bound at these sizes (bench/README.md, "GPU"), and these rows separate the
kernels' speed from the per-call overhead.
"""
import time

import pytest
import torch
import torch.nn.functional as F

import fastseg
from fastseg.kernels import tap_conv_launch
from fastseg.kernels.taps import aspp_tap_table, conv_tap_table, pack_tap_weights
from fastseg.reference import aspp_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RATES = (6, 12, 18, 24)
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "bf16": (torch.bfloat16, False)}


def _do_bench(fn):
    import triton
    return triton.testing.do_bench(fn, warmup=25, rep=100)


def _host_ms(fn, calls=50):
    """Host time to issue one call, the GPU left to catch up (50 calls stay far below the
    launch queue's depth)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e3
    torch.cuda.synchronize()
    return host


def _timed(benchmark, fn):
    def run():
        fn()
        torch.cuda.synchronize()
    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    benchmark.extra_info["do_bench_ms"] = _do_bench(fn)
    benchmark.extra_info["host_ms_per_call"] = _host_ms(fn)


def _kernel_only(x, weights, table, **epilogue):
    """The Triton launch alone: weights packed and input made NHWC beforehand."""
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    packed = pack_tap_weights(weights, table, "io")
    return lambda: tap_conv_launch.conv_forward(x_nhwc, packed, table, **epilogue)


@pytest.fixture
def gpu_precision(request):
    saved = torch.backends.cudnn.allow_tf32
    dtype, tf32 = PRECISIONS[request.param]
    torch.backends.cudnn.allow_tf32 = tf32
    yield dtype
    torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("gpu_precision", list(PRECISIONS), indirect=True)
@pytest.mark.parametrize("batch,size,classes", [(1, 65, 21), (4, 41, 21), (1, 65, 182)])
@pytest.mark.parametrize("impl", ["cudnn: 4x conv2d summed", "fastseg.aspp (Triton)", "fastseg kernel only"])
def test_gpu_aspp(benchmark, gpu_precision, batch, size, classes, impl):
    dtype = gpu_precision
    torch.manual_seed(0)
    x = torch.randn(batch, 2048, size, size, device="cuda").abs().to(dtype)
    ws = [(torch.randn(classes, 2048, 3, 3, device="cuda") * 0.01).to(dtype) for _ in RATES]
    bs = [torch.zeros(classes, device="cuda", dtype=dtype) for _ in RATES]
    benchmark.group = f"aspp-gpu {batch}x{size}x{size} {classes}cls {torch.backends.cudnn.allow_tf32 and 'tf32' or dtype}"
    benchmark.name = impl
    ref = aspp_reference(x, ws, bs, RATES)
    if impl == "fastseg kernel only":
        bias = torch.stack(bs).sum(0, dtype=torch.float32).to(dtype)
        fn = _kernel_only(x, ws, aspp_tap_table(RATES, (size, size)), bias=bias)
    elif impl.startswith("fastseg"):
        fn = lambda: fastseg.aspp(x, ws, bs, RATES)  # noqa: E731
    else:
        fn = lambda: aspp_reference(x, ws, bs, RATES)  # noqa: E731
    if impl.startswith("fastseg"):
        benchmark.extra_info["max_abs_diff"] = (fn().float() - ref.float()).abs().max().item()
    with torch.no_grad():
        _timed(benchmark, fn)


@pytest.mark.parametrize("gpu_precision", list(PRECISIONS), indirect=True)
@pytest.mark.parametrize("channels,rate", [(256, 2), (512, 4)])
@pytest.mark.parametrize("impl", ["cudnn: conv -> BN -> ReLU", "fastseg.atrous_conv2d fused BN+ReLU (Triton)",
                                  "fastseg kernel only"])
def test_gpu_atrous_bn_relu(benchmark, gpu_precision, channels, rate, impl):
    dtype = gpu_precision
    torch.manual_seed(0)
    x = torch.randn(4, channels, 65, 65, device="cuda").relu().to(dtype)
    w = (torch.randn(channels, channels, 3, 3, device="cuda") * 0.02).to(dtype)
    scale = (torch.rand(channels, device="cuda") + 0.5).to(dtype)
    shift = torch.randn(channels, device="cuda").to(dtype)
    benchmark.group = f"atrous-gpu {channels}-r{rate} 4x65x65 {torch.backends.cudnn.allow_tf32 and 'tf32' or dtype}"
    benchmark.name = impl

    def ref():
        return torch.relu(F.conv2d(x, w, None, 1, rate, rate) * scale.view(-1, 1, 1) + shift.view(-1, 1, 1))

    if impl == "fastseg kernel only":
        table = conv_tap_table((3, 3), (65, 65), (1, 1), (rate, rate), (rate, rate))
        fn = _kernel_only(x, [w], table, scale=scale, shift=shift, relu=True)
    elif impl.startswith("fastseg"):
        fn = lambda: fastseg.atrous_conv2d(x, w, None, 1, rate, rate, scale=scale, shift=shift, relu=True)  # noqa: E731
    else:
        fn = ref
    if impl.startswith("fastseg"):
        benchmark.extra_info["max_abs_diff"] = (fn().float() - ref().float()).abs().max().item()
    with torch.no_grad():
        _timed(benchmark, fn)
