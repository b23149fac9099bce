"""Tap tables (fastseg/kernels/taps.py): the geometry every atrous kernel relies on, checked
against brute-force enumeration of the convolution's definition."""
import itertools

import pytest
import torch

from fastseg.kernels.taps import (aspp_tap_table, conv_tap_table, input_row_bands, pack_tap_weights,
                                  transposed_tap_table, unpack_tap_grads)


def _brute_force_offsets(kernel, in_hw, out_hw, stride, padding, dilation):
    """{(dy, dx): set of valid output pixels} straight from the definition of conv2d."""
    valid = {}
    for ky, kx in itertools.product(range(kernel[0]), range(kernel[1])):
        dy, dx = ky * dilation[0] - padding[0], kx * dilation[1] - padding[1]
        pixels = {(oh, ow) for oh in range(out_hw[0]) for ow in range(out_hw[1])
                  if 0 <= oh * stride[0] + dy < in_hw[0] and 0 <= ow * stride[1] + dx < in_hw[1]}
        valid.setdefault((dy, dx), set()).update(pixels)
    return valid


@pytest.mark.parametrize("kernel,in_hw,stride,padding,dilation", [
    ((3, 3), (9, 7), (1, 1), (2, 2), (2, 2)),
    ((3, 3), (6, 6), (2, 2), (1, 1), (1, 1)),
    ((3, 5), (11, 8), (2, 3), (3, 1), (3, 2)),
    ((3, 3), (5, 5), (1, 1), (6, 6), (6, 6)),   # rate larger than the map
    ((1, 1), (4, 4), (2, 2), (0, 0), (1, 1)),
])
def test_conv_taps_match_definition(kernel, in_hw, stride, padding, dilation):
    table = conv_tap_table(kernel, in_hw, stride, padding, dilation)
    expected = _brute_force_offsets(kernel, in_hw, table.out_hw, stride, padding, dilation)
    live = {k: v for k, v in expected.items() if v}
    assert {(t.dy, t.dx) for t in table.taps} == set(live)
    for t in table.taps:
        rect = {(oh, ow) for oh in range(t.oh_lo, t.oh_hi) for ow in range(t.ow_lo, t.ow_hi)}
        assert rect == live[(t.dy, t.dx)]


def test_aspp_taps_merge_centre_and_drop_dead():
    table = aspp_tap_table((6, 12, 18, 24), (65, 65))
    assert table.n_kernel_positions == 36
    assert len(table) == 33
    centre = [t for t in table.taps if (t.dy, t.dx) == (0, 0)]
    assert len(centre) == 1 and sorted(s[0] for s in centre[0].sources) == [0, 1, 2, 3]
    # On a 21x21 map rate 24 sees nothing but its centre; rate 18 still reaches 3 rows/columns.
    small = aspp_tap_table((6, 12, 18, 24), (21, 21))
    assert len(small) == 1 + 8 * 3
    assert all(abs(t.dy) < 21 and abs(t.dx) < 21 for t in small.taps)


def test_pack_and_unpack_are_adjoint():
    torch.manual_seed(0)
    rates = (1, 2, 1)  # a repeated rate merges all nine taps of two branches
    weights = [torch.randn(3, 4, 3, 3, dtype=torch.float64) for _ in rates]
    table = aspp_tap_table(rates, (5, 6))
    for layout in ("oi", "io"):
        packed = pack_tap_weights(weights, table, layout)
        g = torch.randn_like(packed)
        grads = unpack_tap_grads(g, table, [w.shape for w in weights], layout)
        # <pack(W), G> == <W, unpack(G)> for a linear map and its adjoint
        lhs = (packed * g).sum()
        rhs = sum((w * gw).sum() for w, gw in zip(weights, grads))
        torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("layout", ["oi", "io"])
def test_pack_gives_each_tap_the_sum_of_its_sources(layout):
    torch.manual_seed(1)
    rates = (1, 2, 1)  # the centre tap has three sources, the rate-1 ring two each
    weights = [torch.randn(3, 4, 3, 3).to(torch.bfloat16) for _ in rates]
    table = aspp_tap_table(rates, (5, 6))
    packed = pack_tap_weights(weights, table, layout)
    assert packed.dtype == torch.bfloat16 and packed.is_contiguous()
    for i, tap in enumerate(table.taps):
        want = sum(weights[b][:, :, ky, kx].float() for b, ky, kx in tap.sources).to(torch.bfloat16)
        assert torch.equal(packed[i], want if layout == "oi" else want.T)
    with pytest.raises(ValueError, match="same shape"):
        pack_tap_weights([weights[0], weights[1][:2]], table, layout)


def test_tables_and_their_device_rows_are_built_once():
    a = aspp_tap_table([6, 12, 18, 24], (33, 33))
    assert aspp_tap_table((6, 12, 18, 24), (33, 33)) is a
    assert a.as_tensor("cpu") is a.as_tensor(torch.device("cpu"))
    assert transposed_tap_table(a) is transposed_tap_table(a)
    assert conv_tap_table((3, 3), (9, 9), (1, 1), (2, 2), (2, 2)) is conv_tap_table((3, 3), (9, 9), (1, 1), (2, 2), (2, 2))


@pytest.mark.parametrize("hw,overhead", [((65, 65), 0), ((65, 65), 256), ((41, 41), 256), ((7, 30), 0),
                                         ((1, 1), 0), ((30, 7), 10000)])
def test_row_bands_cover_exactly_the_rows_each_tap_reads(hw, overhead):
    table = aspp_tap_table((6, 12, 18, 24), hw)
    bands = input_row_bands(table, overhead)
    for a, b in zip(bands[:-1], bands[1:]):
        assert a.row_hi <= b.row_lo
    for i, t in enumerate(table.taps):
        reads = set(range(t.oh_lo + t.dy, t.oh_hi + t.dy))
        covered = {r for band in bands if band.tap_lo <= i < band.tap_hi
                   for r in range(band.row_lo, band.row_hi)}
        assert reads <= covered


def test_row_bands_skip_rows_at_deeplab_size():
    table = aspp_tap_table((6, 12, 18, 24), (65, 65))
    work = sum((b.tap_hi - b.tap_lo) * (b.row_hi - b.row_lo) for b in input_row_bands(table, 0))
    # 33 live taps over all 65 rows would be 92% of the nominal 36-tap work; row pruning: 76%.
    assert work < 0.77 * table.n_kernel_positions * 65


def test_transposed_table_inverts_offsets():
    table = conv_tap_table((3, 3), (9, 10), (2, 2), (1, 1), (2, 2))
    back = transposed_tap_table(table)
    assert back.out_hw == table.in_hw and back.stride == (1, 1)
    assert [(t.dy, t.dx) for t in back.taps] == [(-t.dy, -t.dx) for t in table.taps]
