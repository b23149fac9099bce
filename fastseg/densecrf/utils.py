"""A drop-in replacement for ``pydensecrf.utils``: unaries and pairwise features as numpy arrays.

Same functions, arguments and results as pydensecrf's; invalid arguments raise ``ValueError``
(pydensecrf uses ``assert``, which ``python -O`` removes). Torch tensors are accepted too.
"""
from __future__ import annotations

import numbers
import warnings

import numpy as np

__all__ = [
    "unary_from_labels", "unary_from_softmax", "create_pairwise_gaussian",
    "create_pairwise_bilateral", "compute_unary", "softmax_to_unary",
]


def _array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array")
    return arr


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """Unary energies (n_labels, n_points) float32 from a label map.

    Each point's label gets probability ``gt_prob`` and the others share the rest. With
    ``zero_unsure`` label 0 means "unknown" (uniform probability) and labels 1..n_labels map to
    classes 0..n_labels-1.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    if isinstance(n_labels, bool) or not isinstance(n_labels, numbers.Integral) or n_labels < 2:
        raise ValueError(f"n_labels must be an int >= 2, got {n_labels!r}")
    labels = _array(labels, "labels").reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    cls = labels - 1 if zero_unsure else labels
    valid = labels != 0 if zero_unsure else np.ones(labels.shape, bool)
    if np.any((cls[valid] < 0) | (cls[valid] >= n_labels)):
        raise ValueError(f"labels must be in [{int(zero_unsure)}, "
                         f"{n_labels - 1 + int(zero_unsure)}]")
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    unary = np.full((n_labels, labels.size), n_energy, dtype=np.float32)
    idx = np.nonzero(valid)[0]
    unary[cls[idx], idx] = p_energy
    if zero_unsure:
        unary[:, labels == 0] = -np.log(1.0 / n_labels)
    return unary


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """Unary energies -log(p), (n_classes, n_points) float32, from softmax output ``sm``
    (n_classes, ...). ``scale`` in (0, 1] mixes in a uniform distribution first; ``clip`` is the
    smallest probability kept (None: no clipping)."""
    sm = _array(sm, "sm")
    if sm.ndim < 1 or sm.shape[0] == 0:
        raise ValueError(f"sm must have the classes on its first axis, got shape {sm.shape}")
    n_classes = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / n_classes)
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return -np.log(sm).reshape([n_classes, -1]).astype(np.float32)


def create_pairwise_gaussian(sdims, shape):
    """Positional features (len(sdims), prod(shape)) float32: each axis's coordinate divided
    by its standard deviation (axis 0 first, so (y, x) for an (H, W) image)."""
    sdims = _stds(sdims, "sdims")
    shape = tuple(int(s) for s in shape)
    if len(sdims) != len(shape):
        raise ValueError(f"sdims has {len(sdims)} values but shape has {len(shape)} axes")
    mesh = np.array(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= np.float32(s)
    return mesh.reshape([len(sdims), -1])


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Bilateral features: positions / sdims followed by the image's channels / schan,
    (len(sdims) + channels, n_points) float32. ``chdim`` is the image's channel axis, or -1 for
    a single-channel image without one."""
    img = _array(img, "img")
    sdims = _stds(sdims, "sdims")
    if chdim == -1:
        feat = img[np.newaxis].astype(np.float32)
    else:
        feat = np.rollaxis(img, chdim).astype(np.float32)
    if isinstance(schan, numbers.Real):
        feat /= np.float32(_stds([schan], "schan")[0])
    else:
        schan = _stds(schan, "schan")
        if len(schan) > feat.shape[0]:
            raise ValueError(f"schan has {len(schan)} values but img has {feat.shape[0]} channels")
        if len(schan) < feat.shape[0]:
            # pydensecrf divides the channels it has a value for and leaves the rest as they
            # are; scripts rely on it (Keras pp_denseCRF passes schan=(0.005,) with RGB), so
            # the features are the same here, with a warning.
            warnings.warn(f"schan has {len(schan)} values for {feat.shape[0]} channels: as in "
                          f"pydensecrf, channels {len(schan)} and up are not scaled", UserWarning, 2)
        for i, s in enumerate(schan):
            feat[i] /= np.float32(s)
    spatial = feat.shape[1:]
    if len(sdims) != len(spatial):
        raise ValueError(f"sdims has {len(sdims)} values but img has {len(spatial)} spatial axes")
    mesh = np.array(np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij"), dtype=np.float32)
    for i, s in enumerate(sdims):
        mesh[i] /= np.float32(s)
    feats = np.concatenate([mesh, feat])
    return feats.reshape([feats.shape[0], -1])


def compute_unary(labels, M, GT_PROB=0.5):
    """Deprecated in pydensecrf: use unary_from_labels."""
    warnings.warn("compute_unary is deprecated, use unary_from_labels", DeprecationWarning, 2)
    return unary_from_labels(labels, M, GT_PROB)


def softmax_to_unary(sm, GT_PROB=1):
    """Deprecated in pydensecrf: use unary_from_softmax."""
    warnings.warn("softmax_to_unary is deprecated, use unary_from_softmax", DeprecationWarning, 2)
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _stds(values, name: str) -> list:
    out = [float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64))]
    for v in out:
        if not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be positive and finite, got {values}")
    return out
