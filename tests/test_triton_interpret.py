"""The Triton kernels, run on the CPU by the Triton interpreter, against the reference.

The interpreter must be switched on (TRITON_INTERPRET=1) before the kernels are created, and
FASTSEG_FORCE_TRITON=1 makes the fastseg operators' CPU kernels launch them, so the cases below
run in a child pytest process started by test_triton_kernels_under_the_interpreter, with both
variables set. In the parent process they are skipped (and the child's result is the parent's).
Shapes are small: the interpreter runs one program at a time in numpy. Configurations are
swapped for small ones that exercise the split-K paths; the real ones are compiled by
tests/test_compile_check.py.
"""
import os
import subprocess
import sys

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("FASTSEG_FORCE_TRITON") == "1"
in_interpreter = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the interpreter child process of test_triton_kernels_under_the_interpreter")


def _version(text):
    return tuple(int(part) for part in text.split(".")[:2])


def test_triton_kernels_under_the_interpreter():
    if INTERPRETED:
        pytest.skip("already inside the interpreter child process")
    triton = pytest.importorskip("triton")
    import numpy
    if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
        # Its __index__ made int() of a 1-element array, an error since numpy 2.4; every kernel
        # with a loop over a program id fails in it (seen with Triton 3.6 on the GPU machine).
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run with numpy "
                    f"{numpy.__version__} (triton-lang/triton#9171, fixed in later releases)")
    env = dict(os.environ, TRITON_INTERPRET="1", FASTSEG_FORCE_TRITON="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"interpreter run failed ({summary}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "passed" in summary and "failed" not in summary, summary


# --- cases, run in the child process ------------------------------------------------------------

if INTERPRETED:
    import fastseg
    from fastseg.kernels import tap_conv_launch as launch
    from fastseg.reference import aspp_reference, atrous_conv2d_reference


def assert_close_to_scale(out, ref, rel=1e-4):
    scale = ref.abs().max().item()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


def _rand(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


@pytest.fixture
def split(monkeypatch, request):
    """Run the forward kernel with SPLIT_K = request.param (1: fused epilogue; >1: partials +
    reduction kernel) and the weight-gradient kernel with SPLIT_P likewise."""
    k = request.param
    monkeypatch.setattr(launch, "INTERPRETER_FWD_CONFIG", launch.FwdConfig(4, 4, 16, 16, k, 1, 1))
    monkeypatch.setattr(launch, "INTERPRETER_WGRAD_CONFIG", launch.WgradConfig(16, 16, 16, k, 1, 1))
    return k


@in_interpreter
def test_the_triton_path_is_really_taken():
    assert launch.interpreting()
    from fastseg.ops._backend import triton_forced
    assert triton_forced()


@in_interpreter
@pytest.mark.parametrize("split", [1, 3], indirect=True)
@pytest.mark.parametrize("shape,cout,rates", [
    ((2, 6, 9, 11), 5, (1, 2, 5, 10)),    # dy = +-10 dead, dx = +-10 alive; tiles skip taps
    ((1, 3, 5, 5), 4, (6, 12, 18, 24)),   # only the merged centre tap is live
    ((1, 20, 13, 6), 17, (2, 4)),         # Cin and Cout above one 16-wide block
])
def test_aspp_forward(split, shape, cout, rates):
    x = _rand(shape, 0)
    ws = [_rand((cout, shape[1], 3, 3), i + 1) for i in range(len(rates))]
    bs = [_rand((cout,), i + 10) for i in range(len(rates))]
    assert_close_to_scale(fastseg.aspp(x, ws, bs, rates), aspp_reference(x, ws, bs, rates))


@in_interpreter
@pytest.mark.parametrize("split", [1, 2], indirect=True)
def test_aspp_gradients(split):
    x = _rand((2, 5, 8, 7), 20).requires_grad_()
    ws = [_rand((3, 5, 3, 3), 21 + i).requires_grad_() for i in range(4)]
    bs = [_rand((3,), 31 + i).requires_grad_() for i in range(4)]
    rates = (1, 2, 3, 9)
    g = _rand((2, 3, 8, 7), 40)
    ours = torch.autograd.grad(fastseg.aspp(x, ws, bs, rates), [x, *ws, *bs], g)
    ref = torch.autograd.grad(aspp_reference(x, ws, bs, rates), [x, *ws, *bs], g)
    for a, b in zip(ours, ref):
        assert_close_to_scale(a, b)


@in_interpreter
@pytest.mark.parametrize("split", [1, 2], indirect=True)
@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,layout", [
    ((2, 6, 9, 8), (3, 3), (1, 1), (2, 2), (2, 2), torch.contiguous_format),
    ((1, 5, 11, 9), (3, 3), (2, 2), (1, 1), (1, 1), torch.channels_last),
    ((2, 4, 10, 7), (3, 5), (2, 1), (3, 1), (3, 2), torch.contiguous_format),
    ((1, 3, 5, 5), (3, 3), (1, 1), (6, 6), (6, 6), torch.contiguous_format),
])
def test_atrous_conv2d_forward_with_epilogue(split, shape, kernel, stride, padding, dilation, layout):
    x = _rand(shape, 50).contiguous(memory_format=layout)
    w, b = _rand((5, shape[1], *kernel), 51), _rand((5,), 52)
    scale, shift = _rand((5,), 53).abs() + 0.5, _rand((5,), 54)
    ref = atrous_conv2d_reference(x, w, b, stride, padding, dilation)
    res = _rand(ref.shape, 55)
    kwargs = dict(scale=scale, shift=shift, residual=res, relu=True)
    out = fastseg.atrous_conv2d(x, w, b, stride, padding, dilation, **kwargs)
    assert_close_to_scale(out, atrous_conv2d_reference(x, w, b, stride, padding, dilation, **kwargs))
    assert_close_to_scale(fastseg.atrous_conv2d(x, w, None, stride, padding, dilation),
                          atrous_conv2d_reference(x, w, None, stride, padding, dilation))


@in_interpreter
@pytest.mark.parametrize("split", [1, 2], indirect=True)
@pytest.mark.parametrize("stride,padding,dilation", [((1, 1), (2, 2), (2, 2)), ((2, 2), (1, 1), (1, 1))])
def test_atrous_conv2d_gradients(split, stride, padding, dilation):
    x = _rand((2, 5, 9, 8), 60).requires_grad_()
    w = _rand((4, 5, 3, 3), 61).requires_grad_()
    scale = (_rand((4,), 62).abs() + 0.5).requires_grad_()
    shift = _rand((4,), 63).requires_grad_()
    args = (x, w, None, stride, padding, dilation)
    out = fastseg.atrous_conv2d(*args, scale=scale, shift=shift, relu=True)
    ref = atrous_conv2d_reference(*args, scale=scale, shift=shift, relu=True)
    g = _rand(out.shape, 64)
    for a, b in zip(torch.autograd.grad(out, [x, w, scale, shift], g),
                    torch.autograd.grad(ref, [x, w, scale, shift], g)):
        assert_close_to_scale(a, b)


@in_interpreter
def test_float16_accumulates_in_float32():
    # Large K with inputs whose float16 partial sums would lose precision: the kernel keeps the
    # accumulator in float32, so only the inputs' and output's rounding remain.
    x = _rand((1, 64, 6, 6), 70, torch.float16)
    w = (_rand((8, 64, 3, 3), 71) * 0.1).half()
    out = fastseg.atrous_conv2d(x, w, None, 1, 2, 2)
    ref = atrous_conv2d_reference(x.float(), w.float(), None, 1, 2, 2)
    assert out.dtype == torch.float16
    assert_close_to_scale(out, ref, rel=2e-3)  # float16 output rounding: 2^-11 relative
