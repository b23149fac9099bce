"""Gaussian (position-only) terms of an image grid, kept for reuse across images.

A gaussian term's lattice and normalisation depend on the image size and the standard
deviations only, never on the pixels: every image of a batch, every frame of a video and every
later call at the same size can share them. The most recently used terms are kept, up to
``FASTSEG_LATTICE_CACHE_MB`` of tensors in all (default 256; 0 disables the cache); a term
larger than that is built for each call and never kept. ``fastseg.empty_cache()`` drops them.
"""
from __future__ import annotations

import collections
import os
import threading

import torch

from fastseg.crf import checks
from fastseg.crf.features import gaussian_features
from fastseg.crf.terms import NormalizationType, PairwiseTerm, make_term

_DEFAULT_CACHE_MB = 256

_lock = threading.Lock()
_terms: collections.OrderedDict = collections.OrderedDict()  # key -> term without compat


def _cache_limit_bytes() -> int:
    text = os.environ.get("FASTSEG_LATTICE_CACHE_MB", str(_DEFAULT_CACHE_MB))
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(
            f"FASTSEG_LATTICE_CACHE_MB must be a number of megabytes, got {text!r}") from None
    return max(0, int(megabytes * (1 << 20)))


def _term_bytes(term: PairwiseTerm) -> int:
    tensors = list(term.lattice) + [term.in_scale, term.out_scale]
    unique = {id(t): t for t in tensors if t is not None}  # symmetric: in_scale is out_scale
    return sum(t.numel() * t.element_size() for t in unique.values())


def gaussian_grid_term(height: int, width: int, sx: float, sy: float,
                       normalization: NormalizationType, compat: torch.Tensor,
                       device=None, what: str = "gaussian features") -> PairwiseTerm:
    """The gaussian term on the pixel positions of a height x width image (features x / sx,
    y / sy, as pydensecrf's addPairwiseGaussian), with message coefficients ``compat``.

    Built once per (size, standard deviations, normalisation, device) and reused while it
    stays in the cache; ``what`` names the arguments in the error raised for unusable features.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    limit = _cache_limit_bytes()  # a bad setting fails before any work
    key = (int(height), int(width), float(sx), float(sy), int(normalization), str(device))
    with _lock:
        cached = _terms.get(key)
        if cached is not None:
            _terms.move_to_end(key)
            return cached._replace(compat=compat)
    feats = gaussian_features(height, width, sx, sy, device=device)
    checks.lattice_features(feats, what)
    term = make_term(feats, compat, normalization)
    size = _term_bytes(term)
    if size <= limit:
        with _lock:
            _terms[key] = term._replace(compat=None)
            while sum(_term_bytes(t) for t in _terms.values()) > limit:
                _terms.popitem(last=False)
    return term


def clear() -> int:
    """Drops every kept term; returns the bytes of tensors they held."""
    with _lock:
        released = sum(_term_bytes(t) for t in _terms.values())
        _terms.clear()
    return released
