"""fastseg.aspp / fastseg.ASPP against the reference (four nn.Conv2d summed) on the CPU."""
import pytest
import torch
import torch.nn.functional as F

import fastseg
from fastseg.reference import ReferenceASPP, aspp_reference

RATES = (6, 12, 18, 24)


def _features(shape, seed=0, dtype=torch.float32):
    """Backbone-like features: non-negative (post-ReLU), O(1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).abs()


def _branches(cin, cout, n, seed=1, dtype=torch.float32, bias_std=0.1):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(cout, cin, 3, 3, generator=g, dtype=dtype) * 0.01 for _ in range(n)]
    biases = [torch.randn(cout, generator=g, dtype=dtype) * bias_std for _ in range(n)]
    return weights, biases


def assert_close_to_scale(out, ref, rel=1e-4):
    """max |out - ref| <= rel * max |ref|: the issue's tolerance, relative to the output scale."""
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    err = (out - ref).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


@pytest.mark.parametrize("cout", [21, 182])
@pytest.mark.parametrize("size", [41, 65])
@pytest.mark.parametrize("batch", [1, 4])
def test_deeplab_shapes_match_reference(cout, size, batch):
    x = _features((batch, 2048, size, size))
    weights, biases = _branches(2048, cout, 4)
    with torch.no_grad():
        out = fastseg.aspp(x, weights, biases, RATES)
        ref = aspp_reference(x, weights, biases, RATES)
    assert_close_to_scale(out, ref)


@pytest.mark.parametrize("shape,rates", [
    ((1, 8, 1, 1), RATES),                   # 1x1 map: only the merged centre tap is live
    ((2, 8, 5, 5), RATES),                   # every rate larger than the map
    ((3, 16, 13, 7), RATES),                 # odd, non-square, batch > 1
    ((2, 16, 30, 31), RATES),                # rate 24 partially in the map
    ((1, 5, 9, 9), (1, 2, 3)),               # three branches, small rates
    ((2, 4, 11, 6), (2, 2, 7)),              # a repeated rate (its taps merge)
    ((1, 3, 25, 2), (24,)),                  # one branch, taps alive in one direction only
])
def test_adversarial_shapes_match_reference(shape, rates):
    x = _features(shape, seed=3) - 0.5
    weights, biases = _branches(shape[1], 7, len(rates), seed=4)
    with torch.no_grad():
        out = fastseg.aspp(x, weights, biases, rates)
        ref = aspp_reference(x, weights, biases, rates)
    assert_close_to_scale(out, ref)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_non_contiguous_inputs(layout):
    base = _features((2, 24, 19, 23), seed=5)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = _features((2, 48, 19, 46), seed=5)[:, ::2, :, 1::2]
    else:
        x = base.transpose(2, 3)
    assert not x.is_contiguous()
    weights, biases = _branches(x.shape[1], 5, 4, seed=6)
    with torch.no_grad():
        out = fastseg.aspp(x, weights, biases, RATES)
        ref = aspp_reference(x.contiguous(), weights, biases, RATES)
    assert_close_to_scale(out, ref)


def test_module_state_dict_is_deeplab_compatible():
    ours = fastseg.ASPP(64, 21)
    assert list(ours.state_dict()) == [f"c{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    reference = ReferenceASPP(64, 21)
    for name, tensor in reference.state_dict().items():
        assert ours.state_dict()[name].shape == tensor.shape
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)
    # Inside a bigger model the keys become aspp.c0.weight, ... as in DeepLab-v2 checkpoints.
    model = torch.nn.Sequential()
    model.add_module("aspp", fastseg.ASPP(64, 21))
    assert "aspp.c3.bias" in model.state_dict()


def test_module_matches_reference_module():
    torch.manual_seed(0)
    reference = ReferenceASPP(32, 9, (3, 6, 9, 12))
    for conv in reference.children():
        torch.nn.init.normal_(conv.bias)
    ours = fastseg.ASPP(32, 9, (3, 6, 9, 12))
    ours.load_state_dict(reference.state_dict())
    x = _features((2, 32, 17, 15), seed=7)
    with torch.no_grad():
        assert_close_to_scale(ours(x), reference(x))


def test_unbatched_input_as_conv2d():
    ours = fastseg.ASPP(8, 3)
    x = _features((1, 8, 13, 11), seed=3)
    with torch.no_grad():
        assert torch.equal(ours(x[0]), ours(x)[0])


def test_autocast_computes_in_autocasts_dtype_like_conv2d():
    # A backbone under torch.autocast hands the head bfloat16 features; nn.Conv2d branches
    # cast their float32 weights, and so does fastseg.ASPP.
    torch.manual_seed(0)
    reference = ReferenceASPP(16, 5)
    ours = fastseg.ASPP(16, 5)
    ours.load_state_dict(reference.state_dict())
    x = _features((2, 16, 19, 17), seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = reference(x)
        for inp in (x, x.bfloat16()):
            got = ours(inp)
            assert got.dtype == want.dtype == torch.bfloat16
            assert_close_to_scale(got.float(), want.float(), rel=2e-2)
        assert fastseg.aspp(x.double(), [w.double() for w in _branches(16, 5, 4)[0]], None,
                            RATES).dtype == torch.float64  # autocast leaves float64 alone
    # A model on the meta device (shape inference) has no autocast to ask about.
    meta = fastseg.ASPP(16, 5).to("meta")
    assert meta(x.to("meta")).shape == (2, 5, 19, 17)


def test_numpy_integers_as_nn_conv2d_takes_them():
    np = pytest.importorskip("numpy")
    ours = fastseg.ASPP(np.int64(8), np.int64(3), np.array([6, 12]))
    assert ours.rates == (6, 12) and all(type(r) is int for r in ours.rates)
    x = _features((1, 8, 9, 9))
    w, b = _branches(8, 3, 2)
    torch.testing.assert_close(fastseg.aspp(x, w, b, np.array([6, 12])),
                               fastseg.aspp(x, w, b, [6, 12]))


def test_rates_follow_the_children():
    # A branch re-dilated after construction runs with its new rate (nn.Conv2d children are
    # the state); one that is no longer an ASPP branch is an error, not silently ignored.
    torch.manual_seed(0)
    ours = fastseg.ASPP(8, 3)
    ours.c1.dilation = ours.c1.padding = (3, 3)
    assert ours.rates == (6, 3, 18, 24)
    x = _features((1, 8, 21, 21), seed=5)
    convs = list(ours.children())
    with torch.no_grad():
        assert_close_to_scale(ours(x), sum(c(x) for c in convs))
    ours.c2.padding = (5, 5)
    with pytest.raises(ValueError, match=r"ASPP.c2 is not an ASPP branch.*padding=\(5, 5\)"):
        ours(x)
    ours.c2.padding = (18, 18)
    ours.add_module("act", torch.nn.ReLU())
    with pytest.raises(ValueError, match="ASPP.act is not an ASPP branch: it is a ReLU"):
        ours(x)
    assert "rates: none (ASPP.act is not an ASPP branch" in repr(ours)  # printing still works


def test_module_initialisation_is_deeplab_v2():
    torch.manual_seed(0)
    m = fastseg.ASPP(512, 64)
    weights = torch.cat([c.weight.flatten() for c in m.children()])
    assert abs(weights.mean().item()) < 1e-3
    assert abs(weights.std().item() - 0.01) < 1e-3
    assert all(torch.count_nonzero(c.bias) == 0 for c in m.children())
    assert [c.dilation for c in m.children()] == [(r, r) for r in RATES]
    assert [c.padding for c in m.children()] == [(r, r) for r in RATES]


def test_gradcheck_float64():
    x = _features((2, 3, 7, 6), seed=8, dtype=torch.float64).requires_grad_()
    weights, biases = _branches(3, 2, 4, seed=9, dtype=torch.float64)
    weights = [(w * 100).requires_grad_() for w in weights]
    biases = [b.requires_grad_() for b in biases]
    rates = (1, 2, 4, 9)

    def f(x, *params):
        return fastseg.aspp(x, list(params[:4]), list(params[4:]), rates)

    assert torch.autograd.gradcheck(f, (x, *weights, *biases))


@pytest.mark.parametrize("shape,cout", [((2, 64, 21, 19), 21), ((1, 256, 41, 41), 21)])
def test_gradients_match_reference_float32(shape, cout):
    x = _features(shape, seed=10).requires_grad_()
    weights, biases = _branches(shape[1], cout, 4, seed=11)
    params = [p.requires_grad_() for p in weights + biases]
    g = _features((shape[0], cout, *shape[2:]), seed=12) - 0.5
    ours = torch.autograd.grad(fastseg.aspp(x, weights, biases, RATES), [x, *params], g)
    ref = torch.autograd.grad(aspp_reference(x, weights, biases, RATES), [x, *params], g)
    for name, a, b in zip(["input"] + [f"weights[{i}]" for i in range(4)] + [f"biases[{i}]" for i in range(4)],
                          ours, ref):
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert err <= 1e-4 * scale, f"{name}: {err:.3g} vs scale {scale:.3g}"


def test_training_step_updates_like_reference():
    torch.manual_seed(0)
    ours, ref = fastseg.ASPP(16, 5), ReferenceASPP(16, 5)
    ref.load_state_dict(ours.state_dict())
    x = _features((2, 16, 12, 12), seed=13)
    target = torch.randint(0, 5, (2, 12, 12))
    for model in (ours, ref):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        F.cross_entropy(model(x), target).backward()
        opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_no_bias():
    x = _features((1, 8, 9, 9))
    weights, _ = _branches(8, 3, 4)
    out = fastseg.aspp(x, weights, None, RATES)
    ref = sum(F.conv2d(x, w, None, 1, r, r) for w, r in zip(weights, RATES))
    assert_close_to_scale(out, ref)


# --- bad input ----------------------------------------------------------------------------------


def _valid():
    x = torch.randn(1, 8, 9, 9)
    w, b = _branches(8, 3, 4)
    return x, w, b


@pytest.mark.parametrize("mutate,error,match", [
    (lambda x, w, b, r: (x[0, 0], w, b, r), ValueError, "input must have 4 dimensions"),
    (lambda x, w, b, r: (x.numpy(), w, b, r), TypeError, "input must be a torch.Tensor"),
    (lambda x, w, b, r: (x.long(), w, b, r), TypeError, "input must be a floating-point"),
    (lambda x, w, b, r: (x, w[0], b, r), TypeError, "weights must be a list or tuple"),
    (lambda x, w, b, r: (x, [w[0][0]] + w[1:], b, r), ValueError, r"weights\[0\] must have 4 dimensions"),
    (lambda x, w, b, r: (x, [torch.randn(3, 7, 3, 3)] + w[1:], b, r), ValueError, r"weights\[0\] expects 7 input channels"),
    (lambda x, w, b, r: (x, w[:3] + [torch.randn(4, 8, 3, 3)], b, r), ValueError, r"weights\[3\] has 4 output channels"),
    (lambda x, w, b, r: (x, [torch.randn(3, 8, 5, 5)] + w[1:], b, r), ValueError, r"weights\[0\] must be a 3x3"),
    (lambda x, w, b, r: (x, w, b, r[:3]), ValueError, "rates has 3 entries but weights has 4"),
    (lambda x, w, b, r: (x, w, b, (6, 0, 18, 24)), ValueError, "rates must be positive"),
    (lambda x, w, b, r: (x, w, b, (6, 1.5, 18, 24)), TypeError, "rates must contain ints"),
    (lambda x, w, b, r: (x, w, b[:2], r), ValueError, "biases has 2 entries"),
    (lambda x, w, b, r: (x, w, [torch.randn(4)] + b[1:], r), ValueError, r"biases\[0\] must have shape \(3,\)"),
    (lambda x, w, b, r: (x, [w[0].double()] + w[1:], b, r), TypeError, r"weights\[0\] has dtype torch.float64"),
    (lambda x, w, b, r: (x, w, [b[0].to("meta")] + b[1:], r), ValueError, r"biases\[0\] is on meta"),
])
def test_bad_input_names_the_argument(mutate, error, match):
    x, w, b = _valid()
    args = mutate(x, w, b, RATES)
    with pytest.raises(error, match=match):
        fastseg.aspp(*args)


def test_module_rejects_bad_constructor_arguments():
    with pytest.raises(ValueError, match="in_channels"):
        fastseg.ASPP(0, 21)
    with pytest.raises(ValueError, match="rates must be positive"):
        fastseg.ASPP(8, 21, (6, -12))
    with pytest.raises(ValueError, match="rates must hold"):
        fastseg.ASPP(8, 21, ())


@pytest.mark.parametrize("overhead", [0, 10 ** 6])
def test_tap_chunking_and_band_merging_paths(monkeypatch, overhead):
    """The CPU path splits a band's taps into several GEMMs when the projection exceeds the
    workspace budget, and merges or keeps row bands by its cost model: every combination must
    give the reference's forward and gradients."""
    from fastseg.kernels import aspp_cpu
    monkeypatch.setattr(aspp_cpu, "WORKSPACE_BYTES", 4096)
    monkeypatch.setattr(aspp_cpu, "GEMM_OVERHEAD", overhead)
    aspp_cpu._plan.cache_clear()
    try:
        x = _features((2, 8, 23, 21), seed=20).requires_grad_()
        weights, biases = _branches(8, 6, 4, seed=21)
        params = [p.requires_grad_() for p in weights + biases]
        out, ref = fastseg.aspp(x, weights, biases, RATES), aspp_reference(x, weights, biases, RATES)
        assert_close_to_scale(out, ref)
        g = _features(out.shape, seed=22) - 0.5
        for a, b in zip(torch.autograd.grad(out, [x, *params], g), torch.autograd.grad(ref, [x, *params], g)):
            assert_close_to_scale(a, b)
    finally:
        aspp_cpu._plan.cache_clear()
