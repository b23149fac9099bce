"""Tap tables: the host-side geometry shared by every atrous-convolution kernel in fastseg.

A dilated KxK convolution, and the sum of the four dilated 3x3 convolutions of DeepLab-v2's
ASPP, are both a *multi-tap convolution*:

    out[n, :, oh, ow] = sum over taps t of  W_t @ x[n, :, oh*stride + dy_t, ow*stride + dx_t]

where W_t is a (Cout, Cin) matrix, (dy_t, dx_t) the tap's input offset, and input pixels outside
the map read as zero (zero padding). This module turns convolution parameters into that form:

* every kernel position (ky, kx) of every branch becomes an offset
  (ky*dilation - padding, kx*dilation - padding);
* taps with the same offset are merged (their weights are summed): the four ASPP centre taps
  all read offset (0, 0), so 36 taps become 33;
* taps that no output pixel can read validly are dropped (rate 24 on a 21x21 map): they only
  ever multiply zeros;
* each remaining tap carries the rectangle of output pixels for which its input pixel is
  inside the map, so kernels can skip tiles and CPU GEMMs can skip rows exactly.

Everything here is plain Python integer arithmetic and torch indexing: the same table drives the
CPU path and the Triton kernels.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

# One row per tap in the int32 table handed to the Triton kernels (see TapTable.as_tensor).
TAP_FIELDS = ("dy", "dx", "oh_lo", "oh_hi", "ow_lo", "ow_hi")


def _valid_range(offset: int, in_size: int, out_size: int, stride: int) -> tuple[int, int]:
    """Output indices o in [lo, hi) with 0 <= o*stride + offset < in_size (empty if hi <= lo)."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride), exact in integer arithmetic
    hi = min(out_size, (in_size - 1 - offset) // stride + 1)
    return lo, hi


@dataclass(frozen=True)
class Tap:
    dy: int
    dx: int
    oh_lo: int
    oh_hi: int
    ow_lo: int
    ow_hi: int
    # (branch, ky, kx) of every kernel position whose weights are summed into this tap.
    sources: tuple[tuple[int, int, int], ...]

    @property
    def n_outputs(self) -> int:
        """How many output pixels (per image) read a valid input pixel through this tap."""
        return (self.oh_hi - self.oh_lo) * (self.ow_hi - self.ow_lo)


@dataclass(frozen=True)
class Branch:
    """One convolution: kernel size, padding and dilation per spatial dimension."""
    kh: int
    kw: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int


@dataclass(frozen=True)
class TapTable:
    taps: tuple[Tap, ...]          # live taps, sorted by (dy, dx)
    branches: tuple[Branch, ...]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    # Things derived from the table and kept with it (device copies of the tap rows, gather
    # indices): the builders below are cached, so a model calling the same layer again reuses
    # them. The first device copy of a host tensor waits for the GPU to catch up; making it once
    # per table keeps the host ahead of the GPU on later calls.
    _derived: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __len__(self) -> int:
        return len(self.taps)

    def derived(self, key, make: Callable):
        """make(), computed once per key and kept with the table."""
        value = self._derived.get(key)
        if value is None:
            value = self._derived[key] = make()
        return value

    @property
    def n_kernel_positions(self) -> int:
        """Taps before merging and dropping (36 for DeepLab-v2's ASPP)."""
        return sum(b.kh * b.kw for b in self.branches)

    def as_tensor(self, device: torch.device | str) -> torch.Tensor:
        """(T, 6) int32 table, columns TAP_FIELDS, for the Triton kernels (cached per device)."""
        def make():
            rows = [[t.dy, t.dx, t.oh_lo, t.oh_hi, t.ow_lo, t.ow_hi] for t in self.taps]
            return torch.tensor(rows, dtype=torch.int32).reshape(-1, len(TAP_FIELDS)).to(device)
        return self.derived(("rows", torch.device(device)), make)

    def source_index(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(branch, ky, kx) of every tap's first source, as three int64 tensors (cached per device)."""
        def make():
            first = torch.tensor([t.sources[0] for t in self.taps], dtype=torch.int64).reshape(-1, 3)
            return tuple(first.to(device).unbind(1))
        return self.derived(("first_source", torch.device(device)), make)


def conv_out_size(in_size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """nn.Conv2d's output size formula."""
    return (in_size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def build_tap_table(branches: Sequence[Branch], in_hw: tuple[int, int], out_hw: tuple[int, int],
                    stride: tuple[int, int] = (1, 1)) -> TapTable:
    """Merge the kernel positions of all branches into live taps (see the module docstring)."""
    merged: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for b_idx, b in enumerate(branches):
        for ky in range(b.kh):
            for kx in range(b.kw):
                offset = (ky * b.dil_h - b.pad_h, kx * b.dil_w - b.pad_w)
                merged.setdefault(offset, []).append((b_idx, ky, kx))
    taps = []
    for (dy, dx), sources in sorted(merged.items()):
        oh_lo, oh_hi = _valid_range(dy, in_hw[0], out_hw[0], stride[0])
        ow_lo, ow_hi = _valid_range(dx, in_hw[1], out_hw[1], stride[1])
        if oh_hi > oh_lo and ow_hi > ow_lo:
            taps.append(Tap(dy, dx, oh_lo, oh_hi, ow_lo, ow_hi, tuple(sources)))
    return TapTable(tuple(taps), tuple(branches), tuple(in_hw), tuple(out_hw), tuple(stride))


@functools.lru_cache(maxsize=512)
def conv_tap_table(kernel_hw: tuple[int, int], in_hw: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], dilation: tuple[int, int]) -> TapTable:
    """Tap table of one convolution (groups=1); cached (arguments are tuples of ints)."""
    kh, kw = kernel_hw
    out_hw = (conv_out_size(in_hw[0], kh, stride[0], padding[0], dilation[0]),
              conv_out_size(in_hw[1], kw, stride[1], padding[1], dilation[1]))
    branch = Branch(kh, kw, padding[0], padding[1], dilation[0], dilation[1])
    return build_tap_table([branch], in_hw, out_hw, stride)


def aspp_tap_table(rates: Sequence[int], in_hw: tuple[int, int]) -> TapTable:
    """Tap table of DeepLab-v2's ASPP: one 3x3 branch per rate, padding = dilation = rate."""
    return _aspp_tap_table(tuple(rates), tuple(in_hw))


@functools.lru_cache(maxsize=512)
def _aspp_tap_table(rates: tuple[int, ...], in_hw: tuple[int, int]) -> TapTable:
    branches = [Branch(3, 3, r, r, r, r) for r in rates]
    return build_tap_table(branches, in_hw, in_hw, (1, 1))


def transposed_tap_table(table: TapTable) -> TapTable:
    """The table of the input-gradient convolution (stride 1 over the zero-inserted gradient);
    kept with `table`.

    With g' the output gradient with (stride - 1) zeros inserted between pixels, of size
    ((OH-1)*stride + 1, (OW-1)*stride + 1), the input gradient is
    dx[ih, iw] = sum_t W_t^T g'[ih - dy_t, iw - dx_t]: a multi-tap convolution with the offsets
    negated, stride 1, whose output is the input's size. Tap order (and so weight order) is kept.
    """
    return table.derived("transposed", lambda: _transposed(table))


def _transposed(table: TapTable) -> TapTable:
    (h, w), (oh, ow), (sh, sw) = table.in_hw, table.out_hw, table.stride
    gh, gw = (oh - 1) * sh + 1, (ow - 1) * sw + 1
    taps = []
    for t in table.taps:
        lo_h, hi_h = _valid_range(-t.dy, gh, h, 1)
        lo_w, hi_w = _valid_range(-t.dx, gw, w, 1)
        taps.append(Tap(-t.dy, -t.dx, lo_h, max(lo_h, hi_h), lo_w, max(lo_w, hi_w), t.sources))
    return TapTable(tuple(taps), table.branches, (gh, gw), (h, w), (1, 1))


# Per layout: the axis order a branch's weights (Cout, Cin, kh, kw) take in the stacked bank of
# pack_tap_weights / unpack_tap_grads, and the index of the tap matrices of kernel positions
# (b, ky, kx) in that bank (ints or index tensors; the matrix's rows and columns in the
# layout's order). "oi" keeps Cout outermost, (Cout, kh, kw, Cin): the copy then reads each
# output channel's weights once (ATen's CPU copy iterates the output's outer axes first; a
# (kh, kw, ...) outer order re-reads the whole weight per kernel position, 3x slower here).
_BANK = {"oi": ((0, 2, 3, 1), lambda b, ky, kx: (b, slice(None), ky, kx)),
         "io": ((2, 3, 1, 0), lambda b, ky, kx: (b, ky, kx))}


def _check_layout(layout: str, shapes: Sequence[Sequence[int]]) -> None:
    if layout not in _BANK:
        raise ValueError(f"layout must be 'oi' or 'io', not {layout!r}")
    if any(tuple(s) != tuple(shapes[0]) for s in shapes):
        raise ValueError(f"all branch weights must have the same shape, got {[tuple(s) for s in shapes]}")


def pack_tap_weights(weights: Sequence[torch.Tensor], table: TapTable, layout: str) -> torch.Tensor:
    """Gather (and sum, for merged taps) branch weights into one tensor indexed by tap.

    weights[b] has nn.Conv2d's shape (Cout, Cin, kh, kw), the same for every branch. ``layout``
    is "oi" for (T, Cout, Cin) (the CPU GEMM's left operand; also the input-gradient kernel's
    weights) or "io" for (T, Cin, Cout) (the Triton forward kernel's right operand, Cout
    contiguous).

    A fixed number of tensor operations whatever the number of taps: the branches stacked
    tap-major (one copy), one gather by the taps' first sources, and a float32 sum for each
    merged tap (ASPP has one). On a GPU every operation is a kernel launch paid on the host,
    and this runs on every call.
    """
    _check_layout(layout, [w.shape for w in weights])
    perm, at = _BANK[layout]
    cout, cin = weights[0].shape[:2]
    if not table.taps:  # every tap dead
        return weights[0].new_zeros((0, cout, cin) if layout == "oi" else (0, cin, cout))
    bank = torch.stack([w.permute(*perm) for w in weights])
    packed = bank[at(*table.source_index(bank.device))]
    for i, tap in enumerate(table.taps):
        if len(tap.sources) > 1:  # merged taps (the shared ASPP centre): sum, in float32 at least
            acc = bank[at(*tap.sources[0])].to(torch.promote_types(packed.dtype, torch.float32))
            for src in tap.sources[1:]:
                acc = acc + bank[at(*src)]
            packed[i] = acc
    return packed


def unpack_tap_grads(tap_grads: torch.Tensor, table: TapTable, weight_shapes: Sequence[Sequence[int]],
                     layout: str) -> list[torch.Tensor]:
    """Adjoint of pack_tap_weights: each kernel position gets its tap's gradient; dead taps get 0.

    A merged tap's weight is a plain sum of its sources, so every source receives the full
    gradient of the tap. One scatter into a zeroed tap-major bank (every kernel position is the
    source of at most one tap, so the scatter has no duplicate destinations and is exact).
    """
    _check_layout(layout, weight_shapes)
    perm, at = _BANK[layout]
    shape = weight_shapes[0]
    bank = tap_grads.new_zeros((len(weight_shapes),) + tuple(shape[axis] for axis in perm))
    if table.taps:
        def make():
            pairs = [(i, src) for i, tap in enumerate(table.taps) for src in tap.sources]
            index = torch.tensor([[i, *src] for i, src in pairs], dtype=torch.int64)
            return tuple(index.to(tap_grads.device).unbind(1))
        tap_of, b, ky, kx = table.derived(("all_sources", tap_grads.device), make)
        bank[at(b, ky, kx)] = tap_grads[tap_of]
    inverse = [perm.index(axis) for axis in range(4)]
    return [g.permute(*inverse).contiguous() for g in bank.unbind(0)]


@dataclass(frozen=True)
class RowBand:
    """Input rows [row_lo, row_hi) and the contiguous tap range [tap_lo, tap_hi) reading them."""
    row_lo: int
    row_hi: int
    tap_lo: int
    tap_hi: int


def input_row_bands(table: TapTable, gemm_overhead_pixels: int = 0) -> list[RowBand]:
    """Partition the input rows into bands read by a constant, contiguous range of taps.

    Stride 1 only. Tap t reads input rows [oh_lo + dy, oh_hi + dy); with taps sorted by dy both
    ends are non-decreasing in t, so the taps reading any row form a contiguous range, and each
    band becomes one dense GEMM over exactly the rows its taps need (the "project, then shift"
    formulation with dead rows skipped). Rows that no tap reads are in no band.

    Small GEMMs run below the machine's peak, so adjacent bands are merged when that is cheaper
    under the cost model  cost(band) = n_taps * (n_pixels + gemm_overhead_pixels): a merged band
    takes the union of the tap ranges (again a range; the extra taps compute values that are
    never read). The best merge is found exactly by dynamic programming over the few bands.
    """
    if table.stride != (1, 1):
        raise ValueError("input_row_bands needs a stride-1 tap table")
    width = table.in_hw[1]
    spans = [(t.oh_lo + t.dy, t.oh_hi + t.dy) for t in table.taps]
    cuts = sorted({0, table.in_hw[0], *[a for a, _ in spans], *[b for _, b in spans]})
    bands = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        readers = [i for i, (a, b) in enumerate(spans) if a <= lo and hi <= b]
        if not readers:
            continue
        assert readers == list(range(readers[0], readers[-1] + 1)), "taps must be sorted by dy"
        bands.append(RowBand(lo, hi, readers[0], readers[-1] + 1))

    def merge(group: list[RowBand]) -> RowBand | None:
        if any(a.row_hi != b.row_lo for a, b in zip(group[:-1], group[1:])):
            return None  # rows between them are read by no tap: never worth computing
        return RowBand(group[0].row_lo, group[-1].row_hi, min(b.tap_lo for b in group),
                       max(b.tap_hi for b in group))

    def cost(b: RowBand) -> int:
        return (b.tap_hi - b.tap_lo) * ((b.row_hi - b.row_lo) * width + gemm_overhead_pixels)

    # best[i]: cheapest partition of bands[:i]; choice[i]: where its last group starts.
    best, choice = [0] + [None] * len(bands), [0] * (len(bands) + 1)
    for i in range(1, len(bands) + 1):
        for j in range(i):
            merged = merge(bands[j:i])
            if merged is not None and best[j] is not None:
                c = best[j] + cost(merged)
                if best[i] is None or c < best[i]:
                    best[i], choice[i] = c, j
    out, i = [], len(bands)
    while i > 0:
        out.append(merge(bands[choice[i]:i]))
        i = choice[i]
    return out[::-1]
