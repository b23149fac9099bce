"""DeepLab-v2 ASPP on the CPU: "project, then shift", with dead rows skipped, on MKL GEMMs.

The four dilated 3x3 branches summed are one multi-tap convolution (see taps.py) with T <= 33
live taps. Instead of T small convolutions, project every input pixel onto every tap's weights
with dense GEMMs, Y_t = W_t @ X (T*Cout output channels), then add the T shifted Cout-channel
maps: out[p] = bias + sum_t Y_t[p + offset_t]. This is exact under zero padding (projecting a zero
pixel gives zero) and puts nearly all the work in one large, well-shaped GEMM.

Tap t only needs Y_t on the input rows it reads (rate 24 on a 65-row map: 41 of 65 rows for the
off-centre taps), and with taps sorted by row offset the taps reading each row band form a
contiguous range, so each band is one GEMM over exactly the rows needed (input_row_bands):
76% of the nominal 36-tap work at 65x65, 67% at 41x41. Columns are not pruned: a column range
of an NCHW map is not a matrix BLAS can take without a copy.

The backward pass is the adjoint of the same structure: the output gradient is shifted back
into a (T*Cout, HW) matrix Z (Z_t[q] = dY[q - offset_t], zero outside), then per band
dX = W^T Z (one GEMM) and dW += Z X^T (one GEMM).

All functions take and return plain tensors; argument checking happens in the public layer.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

from fastseg.kernels.taps import TapTable, aspp_tap_table, input_row_bands, pack_tap_weights, unpack_tap_grads

# The per-GEMM overhead of the band cost model, in "pixel columns x classes": a GEMM costs about
# as much as GEMM_OVERHEAD / Cout extra pixel columns. Fitted on the 2-core AVX-512 development
# machine: with 21 classes merging bands down to ~512-pixel overhead was fastest (65x65: 37 ms
# against 46 ms with every band separate), with 182 classes keeping the bands separate was.
GEMM_OVERHEAD = 512 * 21

# Largest projection buffer (bytes) per GEMM. A band's taps are split into chunks below this so
# that the buffer is reused from the heap instead of being mapped (and page-faulted) afresh on
# every call: 182 classes x 33 taps at 65x65 would otherwise be a 101 MB buffer, whose first
# touch alone costs ~20 ms here. Chunks of >= 5 taps x 182 classes still make large GEMMs.
WORKSPACE_BYTES = 16 << 20


def _chunks(table: TapTable, cout: int, width: int, itemsize: int):
    """(band, tap_lo, tap_hi): each band's tap range, split so one projection fits the budget."""
    for band in input_row_bands(table, GEMM_OVERHEAD // cout):
        per_tap = cout * (band.row_hi - band.row_lo) * width * itemsize
        step = max(1, WORKSPACE_BYTES // per_tap)
        for lo in range(band.tap_lo, band.tap_hi, step):
            yield band, lo, min(band.tap_hi, lo + step)


def _tap_rows(table: TapTable, band, tap_lo: int, tap_hi: int):
    """For each tap of a chunk: (index in chunk, output window, window in the band's rows).

    The chunk's projection covers input rows [band.row_lo, band.row_hi); tap t adds the part
    of its input window inside those rows to the output pixels `offset` before it.
    """
    for j, t in enumerate(table.taps[tap_lo:tap_hi]):
        r0 = max(band.row_lo, t.oh_lo + t.dy)
        r1 = min(band.row_hi, t.oh_hi + t.dy)
        if r0 >= r1:
            continue  # a merged band's extra tap: it reads none of these rows
        out_win = (slice(r0 - t.dy, r1 - t.dy), slice(t.ow_lo, t.ow_hi))
        band_win = (slice(r0 - band.row_lo, r1 - band.row_lo), slice(t.ow_lo + t.dx, t.ow_hi + t.dx))
        yield j, out_win, band_win


@functools.lru_cache(maxsize=64)
def _plan(rates: tuple, hw: tuple, cout: int, itemsize: int):
    """Everything about a call that depends only on its sizes: the tap table, the GEMM chunks
    with each chunk's shift windows, and the workspace size. Pure Python; cached."""
    table = aspp_tap_table(rates, hw)
    if len(table) == 0:
        return table, (), 0
    chunks = tuple((band, lo, hi, tuple(_tap_rows(table, band, lo, hi)))
                   for band, lo, hi in _chunks(table, cout, hw[1], itemsize))
    size = max((hi - lo) * cout * (b.row_hi - b.row_lo) * hw[1] for b, lo, hi, _ in chunks)
    return table, chunks, size


def aspp_forward(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 rates: Sequence[int]) -> torch.Tensor:
    n, cin, h, w = x.shape
    cout = weights[0].shape[0]
    table, chunks, ws_size = _plan(tuple(rates), (h, w), cout, x.element_size())
    out = torch.empty((n, cout, h, w), dtype=x.dtype, device=x.device)
    out.copy_(torch.stack(list(biases)).sum(0).view(1, cout, 1, 1).expand_as(out))
    if len(table) == 0:
        return out
    w_taps = pack_tap_weights(weights, table, "oi").reshape(len(table) * cout, cin)
    xm = x.flatten(2)  # a view for NCHW and channels_last: BLAS takes either orientation
    ws = torch.empty(ws_size, dtype=x.dtype, device=x.device)
    for img in range(n):
        for band, lo, hi, windows in chunks:
            rows = band.row_hi - band.row_lo
            y = ws[: (hi - lo) * cout * rows * w].view((hi - lo) * cout, rows * w)
            torch.mm(w_taps[lo * cout:hi * cout], xm[img, :, band.row_lo * w:band.row_hi * w], out=y)
            y_maps = y.view(hi - lo, cout, rows, w)
            for j, (oh, ow), (bh, bw) in windows:
                out[img, :, oh, ow] += y_maps[j, :, bh, bw]
    return out


def _fill_shifted_grad(z_maps: torch.Tensor, grad_img: torch.Tensor, windows):
    """Z_t = the output gradient moved back by tap t's offset, on the band's rows (zero elsewhere)."""
    z_maps.zero_()
    for j, (oh, ow), (bh, bw) in windows:
        z_maps[j, :, bh, bw] = grad_img[:, oh, ow]


def _shifted_grads(grad: torch.Tensor, chunks, ws_size: int):
    """For each image and chunk of taps, the output gradient shifted by each tap's offset,
    ((hi - lo) * cout, rows * w) in one reused workspace: what both backward GEMMs multiply."""
    n, cout, _, w = grad.shape
    ws = torch.empty(ws_size, dtype=grad.dtype, device=grad.device)
    for img in range(n):
        for band, lo, hi, windows in chunks:
            rows = band.row_hi - band.row_lo
            z = ws[: (hi - lo) * cout * rows * w].view((hi - lo) * cout, rows * w)
            _fill_shifted_grad(z.view(hi - lo, cout, rows, w), grad[img], windows)
            yield img, band, lo, hi, z


def aspp_grad_input(grad: torch.Tensor, weights: Sequence[torch.Tensor], rates: Sequence[int],
                    in_channels: int) -> torch.Tensor:
    n, cout, h, w = grad.shape
    table, chunks, ws_size = _plan(tuple(rates), (h, w), cout, grad.element_size())
    dx = torch.zeros((n, in_channels, h * w), dtype=grad.dtype, device=grad.device)
    if len(table) == 0:
        return dx.view(n, in_channels, h, w)
    w_taps = pack_tap_weights(weights, table, "oi").reshape(len(table) * cout, in_channels)
    for img, band, lo, hi, z in _shifted_grads(grad, chunks, ws_size):
        cols = slice(band.row_lo * w, band.row_hi * w)
        dx[img, :, cols].addmm_(w_taps[lo * cout:hi * cout].t(), z)
    return dx.view(n, in_channels, h, w)


def aspp_grad_weights(grad: torch.Tensor, x: torch.Tensor, weight_shapes: Sequence[Sequence[int]],
                      rates: Sequence[int]) -> list[torch.Tensor]:
    n, cin, h, w = x.shape
    cout = grad.shape[1]
    table, chunks, ws_size = _plan(tuple(rates), (h, w), cout, grad.element_size())
    dw = torch.zeros((len(table) * cout, cin), dtype=grad.dtype, device=grad.device)
    if len(table):
        xm = x.flatten(2)
        for img, band, lo, hi, z in _shifted_grads(grad, chunks, ws_size):
            dw[lo * cout:hi * cout].addmm_(z, xm[img, :, band.row_lo * w:band.row_hi * w].t())
    return unpack_tap_grads(dw.view(len(table), cout, cin), table, weight_shapes, "oi")
