"""The fastseg atrous/ASPP operators as torch operators: opcheck (schema, fake kernels,
autograd registration, AOT dispatch) and torch.compile(fullgraph=True) on the CPU."""
import pytest
import torch
from torch.library import opcheck

import fastseg
from fastseg.reference import ReferenceASPP


def _aspp_args(requires_grad=False):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, 9, requires_grad=requires_grad)
    ws = [torch.randn(4, 6, 3, 3, requires_grad=requires_grad) for _ in range(4)]
    bs = [torch.randn(4, requires_grad=requires_grad) for _ in range(4)]
    return x, ws, bs, [1, 3, 6, 12]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_aspp(requires_grad):
    opcheck(torch.ops.fastseg.aspp.default, _aspp_args(requires_grad))


def test_opcheck_aspp_gradients():
    x, ws, bs, rates = _aspp_args()
    grad = torch.randn(2, 4, 11, 9)
    opcheck(torch.ops.fastseg.aspp_grad_input.default, (grad, ws, rates, 6))
    opcheck(torch.ops.fastseg.aspp_grad_weights.default, (grad, x, ws, rates))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_opcheck_atrous_conv2d(requires_grad, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 10, 9).contiguous(memory_format=layout).requires_grad_(requires_grad)
    w = torch.randn(4, 5, 3, 3, requires_grad=requires_grad)
    b, scale, shift = (torch.randn(4, requires_grad=requires_grad) for _ in range(3))
    res = torch.randn(2, 4, 5, 5, requires_grad=requires_grad)
    opcheck(torch.ops.fastseg.atrous_conv2d.default, (x, w, b, [2, 2], [2, 2], [2, 2], scale, shift, res, True))
    opcheck(torch.ops.fastseg.atrous_conv2d.default, (x, w, None, [1, 1], [1, 1], [1, 1], None, None, None, False))


def test_opcheck_atrous_conv2d_gradients():
    torch.manual_seed(0)
    x, w, g = torch.randn(2, 5, 10, 9), torch.randn(4, 5, 3, 3), torch.randn(2, 4, 5, 5)
    args = (g, x, w, [2, 2], [2, 2], [2, 2])
    opcheck(torch.ops.fastseg.atrous_conv2d_grad_input.default, args)
    opcheck(torch.ops.fastseg.atrous_conv2d_grad_weight.default, args)


class _TinyDeepLabHead(torch.nn.Module):
    """A dilated backbone conv with folded BN + ReLU, then ASPP, then softmax."""

    def __init__(self):
        super().__init__()
        self.conv = fastseg.AtrousConv2d(3, 16, 3, padding=2, dilation=2, bias=False)
        self.bn = torch.nn.BatchNorm2d(16).eval()
        self.aspp = fastseg.ASPP(16, 5, (2, 4, 6, 8))

    def forward(self, x):
        scale, shift = fastseg.batchnorm_scale_shift(self.bn)
        return self.aspp(self.conv(x, scale=scale, shift=shift, relu=True)).softmax(1)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_cpu(backend):
    torch.manual_seed(0)
    model = _TinyDeepLabHead()
    x = torch.randn(2, 3, 19, 17)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    # Training through the compiled graph: gradients equal eager ones.
    compiled(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model(x).square().sum().backward()
    for a, p in zip(grads, [p for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_torch_compile_reference_state_dict_roundtrip():
    """A compiled fastseg.ASPP loaded from a reference ASPP's state dict gives its outputs."""
    torch.manual_seed(0)
    ref = ReferenceASPP(8, 3, (1, 2, 3, 4))
    ours = fastseg.ASPP(8, 3, (1, 2, 3, 4))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 8, 7, 7)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-6)
