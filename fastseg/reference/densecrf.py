"""Reference dense-CRF paths: plain PyTorch (the reference lattice), and pydensecrf itself.

``pydensecrf_*`` need the ``pydensecrf2`` package (``pip install pydensecrf2``, imported as
``pydensecrf``), which the test and benchmark extras install.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from fastseg.crf.mean_field import mean_field_loop
from fastseg.crf.terms import NormalizationType, PairwiseTerm, make_term
from fastseg.reference.permutohedral import build_lattice_reference, filter_reference


def make_term_reference(features: torch.Tensor, compat: torch.Tensor,
                        normalization: NormalizationType) -> PairwiseTerm:
    """A pairwise term built with the reference lattice (same normalisation code as fastseg)."""
    return make_term(features, compat, normalization, build=build_lattice_reference,
                     filter_fn=filter_reference)


def mean_field_reference(unary: torch.Tensor, terms: Sequence[PairwiseTerm], iterations: int,
                         q_init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean-field in plain PyTorch with the reference filter; unary (N, M), returns Q (N, M)."""
    return mean_field_loop(unary, terms, iterations, q_init, filter_fn=filter_reference)


def pydensecrf_dense_crf(probs: np.ndarray, image: np.ndarray, iterations: int = 10,
                         pos_w: float = 3.0, pos_xy_std: float = 1.0, bi_w: float = 4.0,
                         bi_xy_std: float = 67.0, bi_rgb_std: float = 3.0) -> np.ndarray:
    """DeepLab's CRF post-processing with pydensecrf (what ``fastseg.dense_crf`` replaces):
    probs (C, H, W) float32, image uint8 (H, W, 3); returns Q (C, H, W)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(image),
                           compat=bi_w)
    return np.array(d.inference(iterations)).reshape(c, h, w)
