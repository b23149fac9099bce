"""fastseg.atrous_conv2d on the CPU against F.conv2d on DeepLab-v2's dilated backbone shapes
(513x513 image, output stride 8: 65x65 maps), plain and with BN + ReLU fused against
conv -> BatchNorm2d (eval) -> ReLU. Same input, same run, one group per comparison.

    pytest bench/test_bench_atrous.py --benchmark-only
"""
import pytest
import torch
import torch.nn.functional as F

import fastseg

SHAPES = {  # id: (channels, rate) — layer4's conv3x3 (256, rate 2) and layer5's (512, rate 4)
    "256-r2-65x65": (256, 2),
    "512-r4-65x65": (512, 4),
}
ROUNDS = 20


def _setup(shape_id):
    channels, rate = SHAPES[shape_id]
    torch.manual_seed(0)
    x = torch.randn(1, channels, 65, 65).relu()
    conv = torch.nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, bias=False)
    bn = torch.nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return x, conv.weight.detach(), bn, rate


# The decorator nearest the function varies slowest: each shape's pair runs back to back.
@pytest.mark.parametrize("impl", ["reference: F.conv2d", "fastseg.atrous_conv2d"])
@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_conv(benchmark, shape_id, impl):
    x, w, _, rate = _setup(shape_id)
    benchmark.group = f"atrous-cpu conv {shape_id}"
    benchmark.name = impl
    ref = F.conv2d(x, w, None, 1, rate, rate)
    if impl.startswith("fastseg"):
        fn = lambda: fastseg.atrous_conv2d(x, w, None, 1, rate, rate)  # noqa: E731
        benchmark.extra_info["max_abs_diff"] = (fn() - ref).abs().max().item()
    else:
        fn = lambda: F.conv2d(x, w, None, 1, rate, rate)  # noqa: E731
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["reference: conv -> BN -> ReLU", "fastseg.atrous_conv2d fused BN+ReLU"])
@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_conv_bn_relu(benchmark, shape_id, impl):
    x, w, bn, rate = _setup(shape_id)
    benchmark.group = f"atrous-cpu conv+bn+relu {shape_id}"
    benchmark.name = impl
    with torch.no_grad():
        ref = torch.relu(bn(F.conv2d(x, w, None, 1, rate, rate)))
        if impl.startswith("fastseg"):
            def fn():
                scale, shift = fastseg.batchnorm_scale_shift(bn)
                return fastseg.atrous_conv2d(x, w, None, 1, rate, rate, scale=scale, shift=shift, relu=True)
            benchmark.extra_info["max_abs_diff"] = (fn() - ref).abs().max().item()
        else:
            def fn():
                return torch.relu(bn(F.conv2d(x, w, None, 1, rate, rate)))
        benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1)
