"""pydensecrf's phantom lattice points, reproduced in the CRF terms.

pydensecrf's x86 build (its SSE code path, which every x86-64 compile takes) embeds the feature
points four at a time and pads the last group with all-zero features, and the vertices of those
padding points go into its lattice like any other. They carry no value, but the blur passes
through them: where they add vertices next to real ones (features near the origin, such as dark
pixels under DeepLab's colour scale, or most pixels under a large one) they relay filtered
mass that a lattice of the real points alone would not: against that lattice, pydensecrf's Q
moved by up to 2.6e-2 on dark odd-size images with DeepLab's parameters and 4e-2 on small
noise images with srgb=50 (tools/fuzz_densecrf.py, tests/test_densecrf_compat.py). So that
fastseg's CRF gives pydensecrf's answers there too, its pairwise terms build the same lattice:
the features with those points appended, then the points dropped from the splat and the slice
while their vertices stay. Only when N is not a multiple of 4. (pydensecrf compiled without
SSE, on ARM for one, has no phantom points; the raw operators in fastseg.ops build the lattice
of exactly the points they are given.)
"""
from __future__ import annotations

from typing import Callable

import torch

from fastseg.ops.lattice import Lattice

# pydensecrf embeds points in groups of four floats (one SSE register).
GROUP = 4


def build_with_phantom_points(features: torch.Tensor, build: Callable) -> Lattice:
    """``build``'s lattice of (N, d) ``features`` as pydensecrf's x86 build makes it."""
    n, d = features.shape
    pad = (-n) % GROUP
    if pad == 0:
        return build(features)
    return drop_trailing_points(build(torch.cat([features, features.new_zeros(pad, d)])), n)


def drop_trailing_points(lattice: Lattice, n: int) -> Lattice:
    """The lattice with points n and up taken out of the splat and the slice; every vertex,
    and so every blur path, stays."""
    keep = lattice.splat_points < n
    removed = torch.nonzero(~keep).flatten()  # entry positions, ascending
    # Each vertex's range starts earlier by the entries removed before it.
    offsets = lattice.splat_offsets - torch.searchsorted(removed, lattice.splat_offsets)
    return Lattice(lattice.vertices[:n], lattice.weights[:n], lattice.neighbors, offsets,
                   lattice.splat_points[keep], lattice.splat_weights[keep], lattice.keys)
