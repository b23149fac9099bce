"""Pairwise terms: a lattice, pydensecrf's normalisation of it, and a label compatibility."""
from __future__ import annotations

import enum
import numbers
from typing import Callable, NamedTuple, Optional

import torch

from fastseg.crf import checks
from fastseg.crf.phantom_points import build_with_phantom_points
from fastseg.ops.lattice import Lattice, build_lattice, permutohedral_filter


class KernelType(enum.IntEnum):
    """pydensecrf's kernel types. They only change which kernel parameters pydensecrf can
    learn; inference is the same for all three, in pydensecrf and here."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """How a term's filter is normalised by K1, the filter applied to a field of ones."""

    NO_NORMALIZATION = 0  # K
    NORMALIZE_BEFORE = 1  # K(Q / K1)
    NORMALIZE_AFTER = 2  # K(Q) / K1
    NORMALIZE_SYMMETRIC = 3  # n K(n Q), n = 1 / sqrt(K1)


class PairwiseTerm(NamedTuple):
    """One pairwise potential, ready for mean-field.

    Its message is ``f = out_scale * K(in_scale * Q)``, added to the logits as ``c * f`` when
    ``compat`` is a (M,) vector, or as ``f @ C`` when it is a (M, M) matrix. The signs follow
    pydensecrf: a Potts weight w becomes c = +w, a per-label vector w becomes c = -w, a matrix
    W becomes C = -(W + W^T) / 2.
    """

    lattice: Lattice
    in_scale: Optional[torch.Tensor]
    out_scale: Optional[torch.Tensor]
    compat: torch.Tensor

    def filter(self, q: torch.Tensor, filter_fn: Callable = permutohedral_filter) -> torch.Tensor:
        return filter_fn(q, self.lattice, self.in_scale, self.out_scale)

    def message(self, q: torch.Tensor, filter_fn: Callable = permutohedral_filter) -> torch.Tensor:
        f = self.filter(q, filter_fn)
        return f @ self.compat if self.compat.dim() == 2 else f * self.compat


def compat_tensor(compat, n_labels: int, device, name: str = "compat") -> torch.Tensor:
    """pydensecrf's compatibility argument as the message coefficients of PairwiseTerm."""
    if isinstance(compat, numbers.Real) and not isinstance(compat, bool):
        w = checks.finite_float(compat, name)
        return torch.full((n_labels,), w, dtype=torch.float32, device=device)
    c = checks.as_float32_tensor(compat, name, device=device)
    checks.all_finite(c, name)
    if c.dim() == 0:
        return torch.full((n_labels,), float(c), dtype=torch.float32, device=device)
    if c.dim() == 1:
        if c.shape[0] != n_labels:
            raise ValueError(f"{name} has {c.shape[0]} per-label weights, expected {n_labels}")
        return (-c).contiguous()
    if c.dim() == 2:
        if tuple(c.shape) != (n_labels, n_labels):
            raise ValueError(
                f"{name} matrix must be ({n_labels}, {n_labels}), got {tuple(c.shape)}")
        return (-(0.5 * (c + c.T))).contiguous()
    raise ValueError(f"{name} must be a number, a 1-D or a 2-D array, got {c.dim()}-D")


def _enum_member(enum_type, value, name: str):
    """``value`` (an int or a member) as a member of ``enum_type``; ValueError naming ``name``."""
    try:
        return enum_type(int(value))
    except (ValueError, TypeError):
        choices = ", ".join(member.name for member in enum_type)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


def normalisation_type(value, name: str = "normalization") -> NormalizationType:
    return _enum_member(NormalizationType, value, name)


def kernel_type(value, name: str = "kernel") -> KernelType:
    return _enum_member(KernelType, value, name)


def make_term(features: torch.Tensor, compat: torch.Tensor,
              normalization: NormalizationType,
              build: Callable = build_lattice,
              filter_fn: Callable = permutohedral_filter) -> PairwiseTerm:
    """Builds the lattice of (N, d) float32 features and the normalisation pydensecrf uses.

    ``build`` and ``filter_fn`` default to the native operators; the reference path passes its
    own, so that both share this code. The lattice includes pydensecrf's phantom points
    (fastseg/crf/phantom_points.py).
    """
    lattice = build_with_phantom_points(features, build)
    return term_from_lattice(lattice, compat, normalization, filter_fn)


def term_from_lattice(lattice: Lattice, compat: torch.Tensor, normalization: NormalizationType,
                      filter_fn: Callable = permutohedral_filter) -> PairwiseTerm:
    """The pairwise term of a built lattice, with the normalisation pydensecrf uses."""
    if normalization == NormalizationType.NO_NORMALIZATION:
        return PairwiseTerm(lattice, None, None, compat)
    ones = torch.ones((lattice.n_points, 1), dtype=torch.float32, device=lattice.weights.device)
    k1 = filter_fn(ones, lattice, None, None)[:, 0]
    # pydensecrf: norm = 1.0 / sqrt(norm + 1e-20) (symmetric) or 1.0 / (norm + 1e-20), in double
    k1 = k1.double() + 1e-20
    if normalization == NormalizationType.NORMALIZE_SYMMETRIC:
        n = (1.0 / torch.sqrt(k1)).float()
        return PairwiseTerm(lattice, n, n, compat)
    n = (1.0 / k1).float()
    if normalization == NormalizationType.NORMALIZE_BEFORE:
        return PairwiseTerm(lattice, n, None, compat)
    return PairwiseTerm(lattice, None, n, compat)
