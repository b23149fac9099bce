"""fastseg.atrous_conv2d / AtrousConv2d against F.conv2d (+ BN, residual, ReLU) on the CPU."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastseg
from fastseg.reference import atrous_conv2d_reference


def _rand(shape, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * scale


def assert_close_to_scale(out, ref, rel=1e-4):
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    err = (out - ref).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


@pytest.mark.parametrize("cin,cout,size,rate", [(256, 256, 65, 2), (512, 512, 65, 4)])
def test_backbone_shapes_with_fused_bn_relu(cin, cout, size, rate):
    x = _rand((1, cin, size, size), 0).relu()
    w = _rand((cout, cin, 3, 3), 1, scale=0.02)
    scale = _rand((cout,), 2).abs() + 0.5
    shift = _rand((cout,), 3)
    with torch.no_grad():
        out = fastseg.atrous_conv2d(x, w, None, 1, rate, rate, scale=scale, shift=shift, relu=True)
        ref = atrous_conv2d_reference(x, w, None, 1, rate, rate, scale=scale, shift=shift, relu=True)
    assert_close_to_scale(out, ref)


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((2, 6, 13, 11), (3, 3), 1, 2, 2),
    ((1, 5, 9, 9), (3, 3), 2, 1, 1),
    ((2, 4, 10, 7), (3, 3), (2, 1), (3, 1), (3, 2)),
    ((1, 3, 5, 5), (3, 3), 1, 8, 8),          # rate larger than the map
    ((1, 4, 1, 1), (3, 3), 1, 1, 1),          # 1x1 map
    ((3, 8, 8, 8), (1, 1), 2, 0, 1),          # strided 1x1 (the backbone's reduce convs)
    ((1, 3, 17, 15), (7, 7), 2, 3, 1),        # the stem
    ((2, 4, 9, 9), (3, 5), 1, "same", 2),
    ((2, 4, 9, 9), (3, 3), 1, "valid", 3),
])
def test_matches_conv2d(shape, kernel, stride, padding, dilation):
    x = _rand(shape, 4)
    w = _rand((5, shape[1], *kernel), 5)
    b = _rand((5,), 6)
    with torch.no_grad():
        out = fastseg.atrous_conv2d(x, w, b, stride, padding, dilation)
    assert_close_to_scale(out, F.conv2d(x, w, b, stride, padding, dilation))


def test_unbatched_input():
    x, w = _rand((4, 9, 9), 7), _rand((3, 4, 3, 3), 8)
    out = fastseg.atrous_conv2d(x, w, None, 1, 2, 2)
    assert_close_to_scale(out, F.conv2d(x, w, None, 1, 2, 2))


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_inputs_and_output_layout(layout):
    if layout == "channels_last":
        x = _rand((2, 16, 12, 10), 9).contiguous(memory_format=torch.channels_last)
    else:
        x = _rand((2, 32, 12, 20), 9)[:, 1::2, :, ::2]
    w, b = _rand((8, 16, 3, 3), 10), _rand((8,), 11)
    res = _rand((2, 8, 12, 10), 12)
    out = fastseg.atrous_conv2d(x, w, b, 1, 2, 2, residual=res, relu=True)
    ref = atrous_conv2d_reference(x.contiguous(), w, b, 1, 2, 2, residual=res, relu=True)
    assert_close_to_scale(out, ref)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


@pytest.mark.parametrize("epilogue", [
    dict(), dict(relu=True), dict(scale=True), dict(shift=True), dict(residual=True),
    dict(scale=True, shift=True, residual=True, relu=True),
])
def test_each_epilogue(epilogue):
    x, w, b = _rand((2, 6, 9, 8), 13), _rand((4, 6, 3, 3), 14), _rand((4,), 15)
    kwargs = {}
    if epilogue.get("scale"):
        kwargs["scale"] = _rand((4,), 16).abs() + 0.1
    if epilogue.get("shift"):
        kwargs["shift"] = _rand((4,), 17)
    if epilogue.get("residual"):
        kwargs["residual"] = _rand((2, 4, 9, 8), 18)
    kwargs["relu"] = epilogue.get("relu", False)
    out = fastseg.atrous_conv2d(x, w, b, 1, 2, 2, **kwargs)
    assert_close_to_scale(out, atrous_conv2d_reference(x, w, b, 1, 2, 2, **kwargs))


def test_gradcheck_float64_with_all_epilogues():
    x = _rand((2, 3, 8, 7), 19, torch.float64).requires_grad_()
    w = _rand((4, 3, 3, 3), 20, torch.float64).requires_grad_()
    b = _rand((4,), 21, torch.float64).requires_grad_()
    scale = (_rand((4,), 22, torch.float64).abs() + 0.5).requires_grad_()
    shift = _rand((4,), 23, torch.float64).requires_grad_()
    res = _rand((2, 4, 4, 4), 24, torch.float64).requires_grad_()

    def f(x, w, b, scale, shift, res):
        return fastseg.atrous_conv2d(x, w, b, 2, 2, 2, scale=scale, shift=shift, residual=res, relu=True)

    assert torch.autograd.gradcheck(f, (x, w, b, scale, shift, res))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 2, 2), (2, 1, 1), (1, 4, 4)])
def test_gradients_match_reference_float32(stride, padding, dilation):
    x = _rand((2, 32, 17, 17), 25).requires_grad_()
    w = _rand((16, 32, 3, 3), 26, scale=0.1).requires_grad_()
    scale = (_rand((16,), 27).abs() + 0.5).requires_grad_()
    shift = _rand((16,), 28).requires_grad_()
    out = fastseg.atrous_conv2d(x, w, None, stride, padding, dilation, scale=scale, shift=shift, relu=True)
    ref = atrous_conv2d_reference(x, w, None, stride, padding, dilation, scale=scale, shift=shift, relu=True)
    g = _rand(out.shape, 29)
    for name, a, b in zip(["input", "weight", "scale", "shift"],
                          torch.autograd.grad(out, [x, w, scale, shift], g),
                          torch.autograd.grad(ref, [x, w, scale, shift], g)):
        err, s = (a - b).abs().max().item(), b.abs().max().item()
        assert err <= 1e-4 * s, f"{name}: {err:.3g} vs scale {s:.3g}"


def test_module_is_a_conv2d_drop_in():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 6, 3, stride=1, padding=4, dilation=4)
    ours = fastseg.AtrousConv2d(8, 6, 3, stride=1, padding=4, dilation=4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = _rand((2, 8, 15, 15), 30)
    assert_close_to_scale(ours(x), ref(x))
    bn = torch.nn.BatchNorm2d(6).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    scale, shift = fastseg.batchnorm_scale_shift(bn)
    with torch.no_grad():
        assert_close_to_scale(ours(x, scale=scale, shift=shift, relu=True), torch.relu(bn(ref(x))))


def test_module_constructor_is_conv2ds():
    # Positional arguments land where nn.Conv2d puts them: ..., dilation, groups, bias.
    ref = torch.nn.Conv2d(8, 6, 3, 1, 2, 2, 1, False)
    ours = fastseg.AtrousConv2d(8, 6, 3, 1, 2, 2, 1, False)
    assert ours.bias is None and ours.weight.shape == ref.weight.shape
    assert (ours.stride, ours.padding, ours.dilation) == (ref.stride, ref.padding, ref.dilation)
    ours = fastseg.AtrousConv2d(8, 6, 3, padding=np.int64(2), dilation=np.int64(2), groups=1,
                                padding_mode="zeros")
    assert ours(_rand((1, 8, 9, 9), 3)).shape == (1, 6, 9, 9)
    with pytest.raises(TypeError, match="groups must be an int, got a bool"):
        fastseg.AtrousConv2d(8, 6, 3, 1, 2, 2, False)  # the old order put bias here
    with pytest.raises(NotImplementedError, match="groups=1 only, got groups=2"):
        fastseg.AtrousConv2d(8, 6, 3, groups=2)
    with pytest.raises(NotImplementedError, match="padding_mode='zeros' only"):
        fastseg.AtrousConv2d(8, 6, 3, padding=1, padding_mode="reflect")


def test_autocast_computes_in_autocasts_dtype_like_conv2d():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 6, 3, padding=2, dilation=2)
    ours = fastseg.AtrousConv2d(8, 6, 3, padding=2, dilation=2)
    ours.load_state_dict(ref.state_dict())
    x = _rand((2, 8, 11, 13), 31)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv = ref(x)
        got = ours(x, scale=scale, shift=shift, relu=True)
        assert ours(x).dtype == conv.dtype == torch.bfloat16
    # The fused epilogue stays in autocast's dtype too (the unfused version would promote to
    # float32 at the multiplication by a float32 scale).
    assert got.dtype == torch.bfloat16
    want = torch.relu(conv.float() * scale[:, None, None] + shift[:, None, None])
    assert_close_to_scale(got.float(), want, rel=2e-2)


# --- bad input ----------------------------------------------------------------------------------


def _valid():
    return torch.randn(1, 4, 9, 9), torch.randn(3, 4, 3, 3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(input=torch.randn(9, 9)), ValueError, "input must have 4 dimensions"),
    (dict(weight=torch.randn(3, 4, 3)), ValueError, "weight must have 4 dimensions"),
    (dict(weight=torch.randn(3, 5, 3, 3)), ValueError, r"weight expects 5 input channels"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(dilation=(2, -1)), ValueError, "dilation must be positive"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(padding=-1), ValueError, "padding must be >= 0"),
    (dict(padding="full"), ValueError, "padding must be an int"),
    (dict(dilation=1.5), TypeError, "dilation must be an int or a pair"),
    (dict(bias=torch.randn(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(scale=torch.randn(3, 1)), ValueError, r"scale must have shape \(3,\)"),
    (dict(residual=torch.randn(1, 3, 8, 8)), ValueError, "residual must have the output's shape"),
    (dict(bias=torch.randn(3, dtype=torch.float64)), TypeError, "bias has dtype torch.float64"),
    (dict(weight=torch.randn(3, 4, 3, 3, device="meta")), ValueError, "weight is on meta"),
    (dict(input=torch.randn(1, 4, 2, 2), padding=0), ValueError, "too small"),
    (dict(relu=1), TypeError, "relu must be a bool"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    x, w = _valid()
    args = dict(input=x, weight=w, bias=None, stride=1, padding=1, dilation=1)
    args.update(kwargs)
    epilogue = {k: args.pop(k) for k in ("scale", "shift", "residual", "relu") if k in args}
    with pytest.raises(error, match=match):
        fastseg.atrous_conv2d(args["input"], args["weight"], args["bias"], args["stride"], args["padding"],
                              args["dilation"], **epilogue)


def test_asymmetric_same_padding_is_not_implemented():
    x, _ = _valid()
    with pytest.raises(NotImplementedError, match="asymmetric"):
        fastseg.atrous_conv2d(x, torch.randn(3, 4, 2, 2), None, 1, "same", 1)
