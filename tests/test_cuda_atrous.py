"""fastseg.aspp / fastseg.atrous_conv2d on CUDA (the Triton kernels) against the reference.

Skipped without a GPU. The reference runs in float32 with TF32 off; fastseg runs in the tested
dtype, with TF32 as the test sets it.
"""
import pytest
import torch

import fastseg
from fastseg.reference import aspp_reference, atrous_conv2d_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Relative-to-output-scale tolerances: float32 without TF32 as on the CPU; 16-bit inputs carry
# their own rounding (bf16: 8 bits of mantissa) into a float32 accumulator.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_close_to_scale(out, ref, rel):
    scale = ref.abs().max().item()
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,size,cout", [(1, 65, 21), (2, 41, 182), (1, 13, 21)])
def test_aspp_cuda(no_tf32, dtype, batch, size, cout):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 2048, size, size, device="cuda", generator=g).abs()
    ws = [torch.randn(cout, 2048, 3, 3, device="cuda", generator=g) * 0.01 for _ in range(4)]
    bs = [torch.randn(cout, device="cuda", generator=g) * 0.1 for _ in range(4)]
    ref = aspp_reference(x, ws, bs, (6, 12, 18, 24))
    out = fastseg.aspp(x.to(dtype), [w.to(dtype) for w in ws], [b.to(dtype) for b in bs], (6, 12, 18, 24))
    assert out.dtype == dtype and out.device.type == "cuda"
    assert_close_to_scale(out, ref, TOLERANCE[dtype])


def test_aspp_cuda_tf32_follows_cudnn_flag():
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(1, 512, 33, 33, device="cuda", generator=g)
    ws = [torch.randn(21, 512, 3, 3, device="cuda", generator=g) * 0.01 for _ in range(4)]
    bs = [torch.zeros(21, device="cuda") for _ in range(4)]
    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        exact = fastseg.aspp(x, ws, bs)
        ref = aspp_reference(x.double(), [w.double() for w in ws], [b.double() for b in bs], (6, 12, 18, 24))
        assert_close_to_scale(exact, ref, 1e-5)
        torch.backends.cudnn.allow_tf32 = True
        assert_close_to_scale(fastseg.aspp(x, ws, bs), ref, 5e-3)  # TF32: 10-bit mantissa inputs
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_aspp_cuda_gradients(no_tf32):
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(2, 256, 41, 41, device="cuda", generator=g).requires_grad_()
    ws = [(torch.randn(21, 256, 3, 3, device="cuda", generator=g) * 0.01).requires_grad_() for _ in range(4)]
    bs = [torch.zeros(21, device="cuda", requires_grad=True) for _ in range(4)]
    grad = torch.randn(2, 21, 41, 41, device="cuda", generator=g)
    ours = torch.autograd.grad(fastseg.aspp(x, ws, bs), [x, *ws, *bs], grad)
    ref = torch.autograd.grad(aspp_reference(x, ws, bs, (6, 12, 18, 24)), [x, *ws, *bs], grad)
    for a, b in zip(ours, ref):
        assert_close_to_scale(a, b, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cin,rate,stride", [(256, 2, 1), (512, 4, 1), (64, 1, 2)])
def test_atrous_conv2d_cuda_fused_bn_relu_residual(no_tf32, dtype, cin, rate, stride):
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(2, cin, 33, 33, device="cuda", generator=g).relu()
    w = torch.randn(cin, cin, 3, 3, device="cuda", generator=g) * 0.02
    scale = torch.rand(cin, device="cuda", generator=g) + 0.5
    shift = torch.randn(cin, device="cuda", generator=g)
    ref0 = atrous_conv2d_reference(x, w, None, stride, rate, rate)
    res = torch.randn(ref0.shape, device="cuda", generator=g)
    ref = atrous_conv2d_reference(x, w, None, stride, rate, rate, scale=scale, shift=shift, residual=res, relu=True)
    cast = lambda t: t.to(dtype)  # noqa: E731
    out = fastseg.atrous_conv2d(cast(x), cast(w), None, stride, rate, rate, scale=cast(scale), shift=cast(shift),
                                residual=cast(res), relu=True)
    assert_close_to_scale(out, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("stride", [1, 2])
def test_atrous_conv2d_cuda_gradients(no_tf32, stride):
    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(2, 64, 29, 29, device="cuda", generator=g).requires_grad_()
    w = (torch.randn(96, 64, 3, 3, device="cuda", generator=g) * 0.05).requires_grad_()
    b = torch.randn(96, device="cuda", generator=g).requires_grad_()
    out = fastseg.atrous_conv2d(x, w, b, stride, 2, 2, relu=True)
    ref = atrous_conv2d_reference(x, w, b, stride, 2, 2, relu=True)
    grad = torch.randn(out.shape, device="cuda", generator=g)
    for a, r in zip(torch.autograd.grad(out, [x, w, b], grad), torch.autograd.grad(ref, [x, w, b], grad)):
        assert_close_to_scale(a, r, 1e-4)


def test_compile_fullgraph_cuda():
    model = fastseg.ASPP(64, 21).cuda()
    x = torch.randn(1, 64, 33, 33, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
