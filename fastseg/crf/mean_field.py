"""Mean-field inference, as pydensecrf runs it.

Q0 = softmax(-U); each iteration Q = softmax(-U + sum over terms of the term's message), all
pixels updated in parallel, no damping. ``mean_field_loop`` is that iteration written once with
torch operations around a filter function: it runs on any device, is differentiable when the
filter is (the native filter is), and is the reference path when given the reference filter.
``infer`` uses the fused native operator unless gradients are needed.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from fastseg.crf.terms import PairwiseTerm
from fastseg.ops.lattice import mean_field as fused_mean_field
from fastseg.ops.lattice import permutohedral_filter


def mean_field_loop(unary: torch.Tensor, terms: Sequence[PairwiseTerm], iterations: int,
                    q_init: Optional[torch.Tensor] = None,
                    filter_fn: Callable = permutohedral_filter) -> torch.Tensor:
    """Mean-field with torch operations; unary (N, M) energies, returns Q (N, M)."""
    q = torch.softmax(-unary, dim=1) if q_init is None else q_init
    for _ in range(iterations):
        logits = -unary
        for term in terms:
            logits = logits + term.message(q, filter_fn)
        q = torch.softmax(logits, dim=1)
    return q


def infer(unary: torch.Tensor, terms: Sequence[PairwiseTerm], iterations: int,
          q_init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Q after ``iterations`` mean-field steps; differentiable when ``unary`` needs grad."""
    if torch.is_grad_enabled() and unary.requires_grad:
        return mean_field_loop(unary, terms, iterations, q_init)
    return fused_mean_field(
        unary, [t.lattice for t in terms], [t.in_scale for t in terms],
        [t.out_scale for t in terms], [t.compat for t in terms], iterations, q_init)


def kl_divergence(unary: torch.Tensor, terms: Sequence[PairwiseTerm], q: torch.Tensor) -> float:
    """pydensecrf's klDivergence(Q): sum Q log Q + sum U Q - sum Q * messages(Q)."""
    q64 = q.double()
    kl = (q64 * torch.log(q.clamp_min(1e-20)).double()).sum() + (unary.double() * q64).sum()
    for term in terms:
        kl = kl - (q * term.message(q)).sum().double()
    return float(kl)
