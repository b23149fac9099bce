"""Reference permutohedral lattice in plain PyTorch: small, slow, and obviously correct.

It follows Adams, Baek & Davis (2010) as pydensecrf implements it, one vectorised torch
operation per step (torch.unique instead of a hash table), on any device. Tests compare the
native lattice with it tensor by tensor; it shares no code with ``csrc/``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from fastseg.ops.lattice import Lattice

# pydensecrf's float arithmetic is kept below this elevated-coordinate magnitude; above it the
# native code (and this reference) embed in float64 (see csrc/lattice/permutohedral_math.h).
FLOAT_LIMIT = 32768.0


def _scale_factors(d: int) -> np.ndarray:
    inv_std = np.float32(math.sqrt(2.0 / 3.0) * (d + 1))
    return np.array([np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std))
                     for i in range(d)], dtype=np.float32)


def build_lattice_reference(features: torch.Tensor) -> Lattice:
    """The lattice of (N, d) float32 features, in the native operator's format."""
    from fastseg.crf.checks import elevated_bound

    n, d = features.shape
    dev = features.device
    dtype = torch.float32 if elevated_bound(features) < FLOAT_LIMIT else torch.float64
    scale = torch.from_numpy(_scale_factors(d)).to(dev, dtype)
    f = features.to(dtype)
    inv_dp1 = torch.tensor(np.float32(1.0 / (d + 1)), dtype=dtype, device=dev)

    # Elevate: y_j = sum_{i >= j} cf_i - j cf_{j-1}, accumulated from the last coordinate.
    elevated = torch.empty((n, d + 1), dtype=dtype, device=dev)
    sm = torch.zeros(n, dtype=dtype, device=dev)
    for j in range(d, 0, -1):
        cf = f[:, j - 1] * scale[j - 1]
        elevated[:, j] = sm - j * cf
        sm = sm + cf
    elevated[:, 0] = sm

    # Closest remainder-0 point, then the rank of each coordinate's remainder.
    v = torch.round(inv_dp1 * elevated)  # half to even, like SSE
    rem0 = v * (d + 1)
    total = v.sum(1).to(torch.int64)
    diff = elevated - rem0
    rank = torch.zeros((n, d + 1), dtype=torch.int64, device=dev)
    for i in range(d):
        for j in range(i + 1, d + 1):
            less = diff[:, i] < diff[:, j]
            rank[:, i] += less
            rank[:, j] += ~less
    rank += total[:, None]
    low, high = rank < 0, rank > d
    rank = rank + (d + 1) * low - (d + 1) * high
    rem0 = rem0 + (d + 1) * low.to(dtype) - (d + 1) * high.to(dtype)

    # Barycentric weights, accumulated in pydensecrf's order.
    bary = torch.zeros((n, d + 2), dtype=dtype, device=dev)
    delta = (elevated - rem0) * inv_dp1
    for i in range(d + 1):
        pos = (d - rank[:, i])[:, None]
        bary.scatter_add_(1, pos, delta[:, i:i + 1])
        bary.scatter_add_(1, pos + 1, -delta[:, i:i + 1])
    bary[:, 0] += 1 + bary[:, d + 1]
    weights = bary[:, :d + 1].to(torch.float32)

    # Vertex keys: remainder r of the simplex is rem0 + the canonical offset picked by rank.
    r = torch.arange(d + 1, device=dev)[None, :, None]  # (1, d+1, 1)
    rk = rank[:, None, :d]
    offset = torch.where(rk <= d - r, r, r - (d + 1))
    keys = rem0[:, None, :d].to(torch.int64) + offset  # (N, d+1, d)
    flat = keys.reshape(-1, d)

    # Unique vertices, numbered by first use.
    uniq, inverse = torch.unique(flat, dim=0, return_inverse=True)
    n_entries = flat.shape[0]
    first = torch.full((uniq.shape[0],), n_entries, dtype=torch.int64, device=dev)
    first.scatter_reduce_(0, inverse, torch.arange(n_entries, device=dev), reduce="amin")
    order = torch.argsort(first)
    renumber = torch.empty_like(order)
    renumber[order] = torch.arange(order.numel(), device=dev)
    vertex_of_entry = renumber[inverse]
    vertex_keys = uniq[order]
    nv = vertex_keys.shape[0]

    # Neighbours: "+" along direction j is key - 1 + (d+1) e_j; "-" is its inverse.
    neighbors = torch.full((d + 1, nv, 2), nv, dtype=torch.int64, device=dev)
    for j in range(d + 1):
        shifted = vertex_keys - 1
        if j < d:
            shifted[:, j] += d + 1
        both = torch.cat((vertex_keys, shifted))
        _, inv = torch.unique(both, dim=0, return_inverse=True)
        owner = torch.full((both.shape[0],), -1, dtype=torch.int64, device=dev)
        owner[inv[:nv]] = torch.arange(nv, device=dev)
        plus = owner[inv[nv:]]
        found = plus >= 0
        neighbors[j, found, 0] = plus[found]
        neighbors[j, plus[found], 1] = torch.arange(nv, device=dev)[found]

    # Transposed index: entries sorted by vertex, stable (point order within a vertex).
    perm = torch.sort(vertex_of_entry, stable=True).indices
    counts = torch.bincount(vertex_of_entry, minlength=nv)
    offsets = torch.zeros(nv + 1, dtype=torch.int64, device=dev)
    offsets[1:] = torch.cumsum(counts, 0)
    return Lattice(
        vertices=vertex_of_entry.reshape(n, d + 1).to(torch.int32),
        weights=weights,
        neighbors=neighbors.to(torch.int32),
        splat_offsets=offsets,
        splat_points=torch.div(perm, d + 1, rounding_mode="floor").to(torch.int32),
        splat_weights=weights.reshape(-1)[perm],
        keys=vertex_keys.to(torch.int32),
    )


def filter_reference(values: torch.Tensor, lattice: Lattice,
                     in_scale: Optional[torch.Tensor] = None,
                     out_scale: Optional[torch.Tensor] = None,
                     reverse: bool = False) -> torch.Tensor:
    """out_scale * alpha * slice(blur(splat(in_scale * values))), with torch indexing ops."""
    n, m = values.shape
    d = lattice.dim
    nv = lattice.n_vertices
    x = values if in_scale is None else values * in_scale[:, None]
    vert = lattice.vertices.long()
    # Splat: each point adds weight * value to its d+1 vertices; row nv stays zero.
    buf = torch.zeros((nv + 1, m), dtype=values.dtype, device=values.device)
    contrib = lattice.weights[:, :, None] * x[:, None, :]
    buf.index_add_(0, vert.reshape(-1), contrib.reshape(-1, m))
    # Blur: [1/2, 1, 1/2] along each lattice direction; missing neighbours read row nv (zero).
    nb = lattice.neighbors.long()
    for j in (range(d, -1, -1) if reverse else range(d + 1)):
        new = buf.clone()
        new[:nv] = buf[:nv] + 0.5 * (buf[nb[j, :, 0]] + buf[nb[j, :, 1]])
        buf = new
    alpha = 1.0 / (1.0 + 2.0 ** (-d))
    out = alpha * (lattice.weights[:, :, None] * buf[vert]).sum(1)
    return out if out_scale is None else out * out_scale[:, None]
