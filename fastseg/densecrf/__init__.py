"""A drop-in replacement for ``pydensecrf.densecrf``.

Change ``import pydensecrf.densecrf as dcrf`` to ``import fastseg.densecrf as dcrf`` (and
``pydensecrf.utils`` to ``fastseg.densecrf.utils``): the classes, methods, argument orders,
defaults and constants are pydensecrf's, and so are the results (to float rounding).

Differences:

* inputs may be numpy arrays of any real dtype, non-contiguous arrays or torch tensors (they
  are converted to float32; pydensecrf rejects anything but C-contiguous float32), and sizes
  and iteration counts may be whole floats (``w / 1``; pydensecrf truncated any float);
* bad input raises ``ValueError``/``TypeError`` naming the argument instead of crashing (a
  wrong ``rgbim`` dtype raises an error that is both, as pydensecrf raised ``ValueError``);
* unary energies must be finite: pydensecrf reads +inf (``-log(0)``) as "probability 0",
  fastseg raises ``ValueError`` saying to clip the probabilities first;
* features have at most 16 dimensions (pydensecrf has no limit);
* lattice keys are 32-bit, so large images with small standard deviations work;
* ``DenseCRF(..., device="cuda")`` runs the filtering on a GPU (results come back as numpy);
* ``inference``, ``startInference`` return numpy arrays (pydensecrf returns its own matrix
  type; ``np.array(Q)`` works the same on both) and ``stepInference`` updates ``Q`` in place.

Not implemented (raise ``NotImplementedError``): ``LogisticUnary`` / ``setUnaryEnergy(u, f)``
(pydensecrf's learned unary), which need parameter learning that neither package exposes.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from fastseg.crf import checks
from fastseg.crf.features import bilateral_feature_bounds, bilateral_features
from fastseg.crf.grid_terms import gaussian_grid_term
from fastseg.crf.mean_field import infer, kl_divergence
from fastseg.crf.terms import (KernelType, NormalizationType, PairwiseTerm, compat_tensor,
                               kernel_type, make_term, normalisation_type)

CONST_KERNEL = KernelType.CONST_KERNEL
DIAG_KERNEL = KernelType.DIAG_KERNEL
FULL_KERNEL = KernelType.FULL_KERNEL
NO_NORMALIZATION = NormalizationType.NO_NORMALIZATION
NORMALIZE_BEFORE = NormalizationType.NORMALIZE_BEFORE
NORMALIZE_AFTER = NormalizationType.NORMALIZE_AFTER
NORMALIZE_SYMMETRIC = NormalizationType.NORMALIZE_SYMMETRIC

__all__ = [
    "DenseCRF", "DenseCRF2D", "Unary", "ConstUnary", "LogisticUnary", "KernelType",
    "NormalizationType", "CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL", "NO_NORMALIZATION",
    "NORMALIZE_BEFORE", "NORMALIZE_AFTER", "NORMALIZE_SYMMETRIC",
]


# pydensecrf happens to read an energy of +inf as "probability 0"; fastseg refuses non-finite
# energies (NaN and -inf make garbage, and +inf everywhere in a column would too) and says how
# to get the same result.
_PLUS_INF_UNARY_HINT = (
    ": energies must be finite. An energy of +inf is -log(0), a probability of 0, which "
    "pydensecrf reads as 'label ruled out'; clip the probabilities before taking -log "
    "(utils.unary_from_softmax clips them at 1e-5 by default) or use a large finite energy")


class Unary:
    """Base of pydensecrf's unary-energy objects (for ``DenseCRF.setUnary``)."""


class ConstUnary(Unary):
    """A fixed unary energy, (n_labels, n_points)."""

    def __init__(self, u):
        self.u = u


class LogisticUnary(Unary):
    """pydensecrf's learned (logistic) unary. Not implemented by fastseg."""

    def __init__(self, L, f):
        raise NotImplementedError(
            "fastseg.densecrf does not implement LogisticUnary (a learned unary); compute the "
            "unary energies yourself and pass them to setUnaryEnergy(u)")


class DenseCRF:
    """A fully connected CRF over ``nvar`` points with ``nlabels`` labels (pydensecrf API).

    Args:
        nvar: number of points (pixels).
        nlabels: number of labels.
        device: where the lattices are built and filtered (keyword only; default CPU). Results
            are always numpy arrays.
    """

    def __init__(self, nvar, nlabels, *, device=None):
        self._nvar = checks.positive_int(nvar, "nvar", integral_float=True)
        self._nlabel = checks.positive_int(nlabels, "nlabels", integral_float=True)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: no CUDA device is available "
                             f"(torch.cuda.is_available() is False)")
        self._unary: Optional[torch.Tensor] = None  # (N, M) energies: a view of a label-major copy
        self._terms: List[PairwiseTerm] = []

    # -- setup ---------------------------------------------------------------------------

    def setUnaryEnergy(self, u, f=None):
        """Sets the unary energy ``u`` (n_labels, n_points), e.g. -log(probabilities)."""
        if f is not None:
            raise NotImplementedError(
                "setUnaryEnergy(u, f) (pydensecrf's learned logistic unary) is not implemented "
                "by fastseg.densecrf; pass the energies only")
        t = checks.as_float32_tensor(u, "unary", device=self._device)
        if t.dim() != 2 or tuple(t.shape) != (self._nlabel, self._nvar):
            raise ValueError(
                f"unary must have shape (n_labels, n_points) = ({self._nlabel}, {self._nvar}), "
                f"got {tuple(t.shape)}")
        checks.all_finite(t, "unary", _PLUS_INF_UNARY_HINT)
        # A copy (the caller may reuse its array, as pydensecrf allows), kept label-major: the
        # mean-field operator reads it through the transposed (n_points, n_labels) view.
        self._unary = t.clone(memory_format=torch.contiguous_format).T

    def setUnary(self, unary):
        """pydensecrf's ``setUnary(ConstUnary(u))``."""
        if not isinstance(unary, ConstUnary):
            raise TypeError(f"setUnary expects a ConstUnary, got {type(unary).__name__}")
        self.setUnaryEnergy(unary.u)

    def addPairwiseEnergy(self, features, compat, kernel=DIAG_KERNEL,
                          normalization=NORMALIZE_SYMMETRIC):
        """Adds a pairwise term with arbitrary features (n_feature_dims, n_points)."""
        t = checks.as_float32_tensor(features, "features", device=self._device)
        if t.dim() != 2 or t.shape[1] != self._nvar:
            raise ValueError(f"features must have shape (n_dims, {self._nvar}), got "
                             f"{tuple(t.shape)}")
        feats = t.T.contiguous()
        checks.lattice_features(feats, "features")
        self._add_term(feats, compat, kernel, normalization)

    def _add_term(self, feats: torch.Tensor, compat, kernel, normalization) -> None:
        c, norm = self._term_arguments(compat, kernel, normalization)
        self._terms.append(make_term(feats, c, norm))

    def _term_arguments(self, compat, kernel, normalization):
        """pydensecrf's compat, kernel and normalization arguments, checked: (compat, norm)."""
        kernel_type(kernel)
        norm = normalisation_type(normalization)
        return compat_tensor(compat, self._nlabel, self._device), norm

    # -- inference -----------------------------------------------------------------------

    def inference(self, niter):
        """Runs ``niter`` mean-field iterations; returns Q, float32 (n_labels, n_points)."""
        niter = checks.non_negative_int(niter, "niter", integral_float=True)
        with torch.no_grad():
            q = infer(self._unary_or_zero(), self._terms, niter)
        return _to_numpy(q)

    def startInference(self):
        """Returns ``(Q, tmp1, tmp2)`` for ``stepInference``: Q = softmax(-unary)."""
        if self._unary is None:  # pydensecrf starts from zeros when no unary was set
            q = np.zeros((self._nlabel, self._nvar), dtype=np.float32)
        else:
            with torch.no_grad():
                q = _to_numpy(torch.softmax(-self._unary, dim=1))
        return q, np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)

    def stepInference(self, Q, tmp1=None, tmp2=None):
        """One mean-field iteration, updating ``Q`` (n_labels, n_points) in place."""
        q = self._q_tensor(Q, "Q")
        with torch.no_grad():
            new = infer(self._unary_or_zero(), self._terms, 1, q_init=q)
        if isinstance(Q, torch.Tensor):
            Q.copy_(new.T)
        else:
            Q[...] = _to_numpy(new)

    def klDivergence(self, Q):
        """KL divergence between Q and the CRF's distribution (up to the log partition)."""
        q = self._q_tensor(Q, "Q")
        with torch.no_grad():
            return kl_divergence(self._unary_or_zero(), self._terms, q)

    # -- helpers -------------------------------------------------------------------------

    def _unary_or_zero(self) -> torch.Tensor:
        if self._unary is not None:
            return self._unary
        return torch.zeros((self._nvar, self._nlabel), dtype=torch.float32, device=self._device)

    def _q_tensor(self, Q, name: str) -> torch.Tensor:
        if not isinstance(Q, (np.ndarray, torch.Tensor)):
            raise TypeError(f"{name} must be the array returned by startInference, got "
                            f"{type(Q).__name__}")
        t = checks.as_float32_tensor(Q, name, device=self._device)
        if tuple(t.shape) != (self._nlabel, self._nvar):
            raise ValueError(f"{name} must have shape ({self._nlabel}, {self._nvar}), got "
                             f"{tuple(t.shape)}")
        checks.all_finite(t, name)
        return t.T  # (n_points, n_labels) view; the operators read any layout


class DenseCRF2D(DenseCRF):
    """A dense CRF over a ``width`` x ``height`` image (note pydensecrf's argument order)."""

    def __init__(self, width, height, nlabels, *, device=None):
        self._w = checks.positive_int(width, "width", integral_float=True)
        self._h = checks.positive_int(height, "height", integral_float=True)
        super().__init__(self._w * self._h, nlabels, device=device)

    def addPairwiseGaussian(self, sxy, compat, kernel=DIAG_KERNEL,
                            normalization=NORMALIZE_SYMMETRIC):
        """Adds a Gaussian term on pixel positions, standard deviation ``sxy`` (or (sx, sy))."""
        sx, sy = checks.std_tuple(sxy, 2, "sxy")
        c, norm = self._term_arguments(compat, kernel, normalization)
        # Built once per image size and kept for later images (see fastseg.crf.grid_terms).
        self._terms.append(gaussian_grid_term(self._h, self._w, sx, sy, norm, c,
                                              device=self._device,
                                              what=f"gaussian features (sxy={sxy})"))

    def addPairwiseBilateral(self, sxy, srgb, rgbim, compat, kernel=DIAG_KERNEL,
                             normalization=NORMALIZE_SYMMETRIC):
        """Adds a bilateral term on positions (std ``sxy``) and colours (std ``srgb``) of the
        uint8 (height, width, 3) image ``rgbim``."""
        sx, sy = checks.std_tuple(sxy, 2, "sxy")
        srgb_t = checks.std_tuple(srgb, 3, "srgb")
        image = _uint8_image(rgbim, self._h, self._w, self._device)
        feats = bilateral_features(image, sx, sy, srgb_t)
        checks.lattice_features(feats, f"bilateral features (sxy={sxy}, srgb={srgb})",
                                bilateral_feature_bounds(self._h, self._w, sx, sy, srgb_t))
        self._add_term(feats, compat, kernel, normalization)


def _uint8_image(rgbim, height: int, width: int, device) -> torch.Tensor:
    if isinstance(rgbim, torch.Tensor):
        t = rgbim.detach()
    else:
        arr = np.asarray(rgbim)
        if arr.dtype != np.uint8:  # pydensecrf raised ValueError ("Buffer dtype mismatch")
            raise checks.DtypeError(f"rgbim must be a uint8 image, got dtype {arr.dtype}")
        t = torch.from_numpy(checks.writable_array(arr))
    if t.dtype != torch.uint8:
        raise checks.DtypeError(f"rgbim must be a uint8 image, got {t.dtype}")
    if t.dim() != 3 or tuple(t.shape[:2]) != (height, width):
        raise ValueError(f"rgbim must have shape ({height}, {width}, 3), got {tuple(t.shape)}")
    if t.shape[2] != 3:
        raise ValueError(
            "addPairwiseBilateral only works for 3-channel images; for other images build the "
            "features with utils.create_pairwise_bilateral and use addPairwiseEnergy")
    return t.to(device).contiguous()


def _to_numpy(q: torch.Tensor) -> np.ndarray:
    """(N, M) point-major Q as pydensecrf's (M, N) float32 array."""
    return np.ascontiguousarray(q.detach().T.cpu().numpy())
