"""The permutohedral-lattice operators (``torch.ops.fastseg.*``): build, filter, mean-field.

The native kernels live in ``csrc/lattice/`` (CPU and CUDA); this module gives them Python
signatures, fake (meta) kernels for ``torch.compile``, and autograd for the filter.

A lattice is data (see :class:`Lattice`): it depends only on the features, so it is built once
and reused for every label and every mean-field iteration.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

import torch

from fastseg import _native  # noqa: F401  (loads the operators)

__all__ = ["Lattice", "build_lattice", "permutohedral_filter", "mean_field"]

_ops = torch.ops.fastseg


class Lattice(NamedTuple):
    """A permutohedral lattice over N points with d-dimensional features.

    Fields (V = number of lattice vertices, E = N * (d + 1)):

    * ``vertices`` (N, d+1) int32: the vertices of each point's enclosing simplex;
    * ``weights`` (N, d+1) float32: the point's barycentric weight on each of them;
    * ``neighbors`` (d+1, V, 2) int32: each vertex's two blur neighbours along each lattice
      direction; the value V means "no such vertex" (it reads as zero);
    * ``splat_offsets`` (V+1,) int64, ``splat_points`` (E,) int32, ``splat_weights`` (E,)
      float32: the transposed index, each vertex's points in point order (CSR), used to splat by
      gathering (deterministic, no atomics);
    * ``keys`` (V, d) int32: each vertex's lattice coordinates (the last one is implied).

    Vertices are numbered in order of first use by the points, as pydensecrf numbers them.
    """

    vertices: torch.Tensor
    weights: torch.Tensor
    neighbors: torch.Tensor
    splat_offsets: torch.Tensor
    splat_points: torch.Tensor
    splat_weights: torch.Tensor
    keys: torch.Tensor

    @property
    def n_points(self) -> int:
        return self.vertices.shape[0]

    @property
    def dim(self) -> int:
        return self.vertices.shape[1] - 1

    @property
    def n_vertices(self) -> int:
        return self.neighbors.shape[1]

    @property
    def index_tensors(self) -> tuple:
        """The six tensors the filter reads, in the operators' argument order."""
        return tuple(self[:6])

    def to(self, device) -> "Lattice":
        return Lattice(*(t.to(device) for t in self))


def build_lattice(features: torch.Tensor) -> Lattice:
    """Builds the lattice of ``features`` (N, d) float32, 1 <= d <= 16, on their device."""
    return Lattice(*_ops.permutohedral_build(features.contiguous()))


def permutohedral_filter(
    values: torch.Tensor,
    lattice: Lattice,
    in_scale: Optional[torch.Tensor] = None,
    out_scale: Optional[torch.Tensor] = None,
    reverse: bool = False,
) -> torch.Tensor:
    """``out_scale * K (in_scale * values)``: the lattice's approximate Gaussian filter.

    ``values`` is (N, M) float32; ``in_scale`` and ``out_scale`` are optional per-point (N,)
    factors (how pydensecrf's normalisations are applied). ``reverse=True`` runs the blur in
    the opposite direction order, which gives the transposed filter. Differentiable in
    ``values``, ``in_scale`` and ``out_scale``.
    """
    return _ops.permutohedral_filter(
        values, *lattice.index_tensors, in_scale, out_scale, reverse
    )


def mean_field(
    unary: torch.Tensor,
    lattices: Sequence[Lattice],
    in_scales: Sequence[Optional[torch.Tensor]],
    out_scales: Sequence[Optional[torch.Tensor]],
    compats: Sequence[torch.Tensor],
    iterations: int,
    q_init: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean-field inference of a dense CRF, fused in one native operator (not differentiable).

    ``unary`` is (N, M) float32 (energies, point-major). Each pairwise term t has a lattice,
    optional normalisation scales, and a compatibility ``compats[t]`` that says how its
    filtered values f enter the logits: a (M,) vector c gives ``logits += c * f``, a (M, M)
    matrix C gives ``logits += f @ C``. Starting from ``q_init`` (default softmax(-unary)),
    each iteration sets ``Q = softmax(-unary + sum of messages)``. Returns Q (N, M),
    contiguous, or label-major when ``unary`` is (the transposed view of a contiguous (M, N)
    tensor): pass a label-major unary as ``unary.T`` and no transposing copy is made on either
    side.
    """
    def column(i: int) -> List[torch.Tensor]:
        return [lat[i] for lat in lattices]

    return _ops.mean_field(
        unary,
        q_init,
        column(0),
        column(1),
        column(2),
        column(3),
        column(4),
        column(5),
        list(in_scales),
        list(out_scales),
        list(compats),
        iterations,
    )


# --- fake kernels (shapes only), for torch.compile and meta tensors -------------------------


@torch.library.register_fake("fastseg::permutohedral_build")
def _build_fake(features):
    n, d = features.shape
    ctx = torch.library.get_ctx()
    v = ctx.new_dynamic_size()
    dev = features.device
    e = n * (d + 1)
    return (
        features.new_empty((n, d + 1), dtype=torch.int32),
        features.new_empty((n, d + 1), dtype=torch.float32),
        torch.empty((d + 1, v, 2), dtype=torch.int32, device=dev),
        torch.empty((v + 1,), dtype=torch.int64, device=dev),
        torch.empty((e,), dtype=torch.int32, device=dev),
        torch.empty((e,), dtype=torch.float32, device=dev),
        torch.empty((v, d), dtype=torch.int32, device=dev),
    )


@torch.library.register_fake("fastseg::permutohedral_filter")
def _filter_fake(values, vertices, weights, neighbors, splat_offsets, splat_points,
                 splat_weights, in_scale=None, out_scale=None, reverse=False):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastseg::mean_field")
def _mean_field_fake(unary, q_init, vertices, weights, neighbors, splat_offsets, splat_points,
                     splat_weights, in_scales, out_scales, compats, iterations):
    n, m = unary.shape
    if n > 1 and m > 1 and unary.stride() == (1, n):  # label-major in, label-major out
        return unary.new_empty((m, n)).T
    return unary.new_empty((n, m))


# --- autograd of the filter ----------------------------------------------------------------
# out = o * K(i * x), with K = alpha S^T B_d ... B_0 S (splat S, blur passes B_j, each
# symmetric). K^T = alpha S^T B_0 ... B_d S is the same filter with the blur order reversed, so
#   dL/dx = i * K^T(o * g),  dL/di = sum_labels x * K^T(o * g),  dL/do = sum_labels g * K(i * x).


def _filter_setup_context(ctx, inputs, output):
    values, *index, in_scale, out_scale, reverse = inputs
    ctx.index = index
    ctx.reverse = reverse
    ctx.save_for_backward(values, in_scale, out_scale)


def _filter_backward(ctx, grad):
    values, in_scale, out_scale = ctx.saved_tensors
    index = ctx.index
    need_x, need_in, need_out = (
        ctx.needs_input_grad[0], ctx.needs_input_grad[7], ctx.needs_input_grad[8])
    grad_x = grad_in = grad_out = None
    if need_x or need_in:
        g = grad if out_scale is None else grad * out_scale[:, None]
        back = _ops.permutohedral_filter(g.contiguous(), *index, None, None, not ctx.reverse)
        if need_x:
            grad_x = back if in_scale is None else back * in_scale[:, None]
        if need_in:
            grad_in = (back * values).sum(1)
    if need_out:
        fwd = _ops.permutohedral_filter(values, *index, in_scale, None, ctx.reverse)
        grad_out = (grad * fwd).sum(1)
    return (grad_x,) + (None,) * 6 + (grad_in, grad_out, None)


torch.library.register_autograd(
    "fastseg::permutohedral_filter", _filter_backward, setup_context=_filter_setup_context
)
