"""ASPP on the CPU: fastseg.ASPP against four nn.Conv2d summed (the reference), and against one
dense GEMM with the same nominal FLOPs (the practical limit), same input, same run.

    pytest bench/test_bench_aspp.py --benchmark-only

Each shape is one pytest-benchmark group with three entries: reference, dense GEMM, fastseg.
fastseg's extra_info holds its max abs difference to the reference, its speedup over the
reference and its fraction of the dense-GEMM limit (min times, which the shared 2-core machine's
noise affects least); the same figures are printed at the end of the run.
"""
import pytest
import torch

import fastseg
from fastseg.kernels import aspp_cpu
from fastseg.reference import ReferenceASPP

RATES = (6, 12, 18, 24)
SHAPES = {  # id: (batch, size, classes)
    "65x65-b1-21cls": (1, 65, 21),
    "41x41-b4-21cls": (4, 41, 21),
    "65x65-b1-182cls": (1, 65, 182),
    "41x41-b1-21cls": (1, 41, 21),
}
ROUNDS = {21: 12, 182: 4}

_results: dict = {}


def _setup(shape_id):
    batch, size, classes = SHAPES[shape_id]
    torch.manual_seed(0)
    x = torch.randn(batch, 2048, size, size).abs()  # post-ReLU backbone features
    ref = ReferenceASPP(2048, classes, RATES)
    for conv in ref.children():
        torch.nn.init.normal_(conv.bias, std=0.1)
    ours = fastseg.ASPP(2048, classes, RATES)
    ours.load_state_dict(ref.state_dict())
    return x, ref.eval(), ours.eval()


def _nominal_flops(batch, size, classes):
    return 2 * batch * size * size * 2048 * classes * 9 * len(RATES)


def _pruned_fraction(size, classes):
    """The share of the nominal 36-tap work that fastseg's CPU plan actually computes."""
    table, chunks, _ = aspp_cpu._plan(RATES, (size, size), classes, 4)
    work = sum((hi - lo) * (band.row_hi - band.row_lo) * size for band, lo, hi, _ in chunks)
    return work / (table.n_kernel_positions * size * size)


@pytest.fixture(scope="module", autouse=True)
def aspp_bench_summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not _results:
        return
    lines = ["", "ASPP on the CPU (min times): fastseg vs four nn.Conv2d, and vs one dense GEMM of equal FLOPs"]
    for shape_id, r in _results.items():
        if {"reference", "gemm", "fastseg"} <= r.keys():
            lines.append(
                f"  {shape_id:16} reference {r['reference'] * 1e3:7.1f} ms  dense GEMM {r['gemm'] * 1e3:7.1f} ms  "
                f"fastseg {r['fastseg'] * 1e3:7.1f} ms  speedup {r['reference'] / r['fastseg']:.2f}x  "
                f"GEMM-limit fraction {r['gemm'] / r['fastseg']:.2f}  max|diff| {r['max_abs_diff']:.2e}")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


def _reference(benchmark, shape_id):
    x, ref, _ = _setup(shape_id)
    benchmark.name = "reference: 4x nn.Conv2d summed"
    with torch.no_grad():
        benchmark.pedantic(ref, (x,), rounds=ROUNDS[SHAPES[shape_id][2]], warmup_rounds=1)
    _results.setdefault(shape_id, {})["reference"] = benchmark.stats.stats.min


def _dense_gemm_limit(benchmark, shape_id):
    """One (36*classes x 2048) @ (2048 x pixels) GEMM: the FLOPs of the four convolutions."""
    batch, size, classes = SHAPES[shape_id]
    torch.manual_seed(0)
    w = torch.randn(36 * classes, 2048)
    x = torch.randn(batch, 2048, size * size)
    benchmark.name = "limit: dense GEMM, same FLOPs"
    benchmark.extra_info["gflop"] = _nominal_flops(batch, size, classes) / 1e9
    benchmark.pedantic(torch.matmul, (w, x), rounds=ROUNDS[classes], warmup_rounds=1)
    t = benchmark.stats.stats.min
    benchmark.extra_info["gflop_per_s"] = _nominal_flops(batch, size, classes) / t / 1e9
    _results.setdefault(shape_id, {})["gemm"] = t


def _fastseg(benchmark, shape_id):
    x, ref, ours = _setup(shape_id)
    batch, size, classes = SHAPES[shape_id]
    benchmark.name = "fastseg.ASPP"
    with torch.no_grad():
        diff = (ours(x) - ref(x)).abs().max().item()
        benchmark.pedantic(ours, (x,), rounds=ROUNDS[classes], warmup_rounds=1)
    t = benchmark.stats.stats.min
    r = _results.setdefault(shape_id, {})
    r.update(fastseg=t, max_abs_diff=diff)
    info = benchmark.extra_info
    info["max_abs_diff"] = diff
    info["work_fraction_after_pruning"] = _pruned_fraction(size, classes)
    info["nominal_gflop_per_s"] = _nominal_flops(batch, size, classes) / t / 1e9
    if "reference" in r:
        info["speedup_vs_reference"] = r["reference"] / t
    if "gemm" in r:
        info["fraction_of_dense_gemm_limit"] = r["gemm"] / t


IMPLS = {"reference": _reference, "dense_gemm_limit": _dense_gemm_limit, "fastseg": _fastseg}


# One shape's three entries run back to back (the machine's load drifts over tens of seconds),
# reference and limit first so that fastseg's entry can record the ratios.
@pytest.mark.parametrize("shape_id,impl", [(s, i) for s in SHAPES for i in IMPLS])
def test_aspp_cpu(benchmark, shape_id, impl):
    benchmark.group = f"aspp-cpu {shape_id}"
    IMPLS[impl](benchmark, shape_id)
