"""``fastseg.dense_crf``: DeepLab's dense-CRF post-processing as one torch call."""
from __future__ import annotations

import torch

from fastseg.crf import checks
from fastseg.crf.features import bilateral_feature_bounds, bilateral_features
from fastseg.crf.grid_terms import gaussian_grid_term
from fastseg.crf.mean_field import infer
from fastseg.crf.terms import NormalizationType, make_term

# pydensecrf.utils.unary_from_softmax's default clip.
UNARY_CLIP = 1e-5


def dense_crf(probs: torch.Tensor, image, *, iterations: int = 10, pos_w: float = 3.0,
              pos_xy_std: float = 1.0, bi_w: float = 4.0, bi_xy_std: float = 67.0,
              bi_rgb_std: float = 3.0) -> torch.Tensor:
    """Refines class probabilities with a fully connected CRF (DeepLab-v2's post-processing).

    Computes exactly what DeepLab's PyTorch pipeline computes with pydensecrf::

        U = unary_from_softmax(probs)              # -log(clip(probs, 1e-5, 1))
        d = DenseCRF2D(W, H, C); d.setUnaryEnergy(U)
        d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
        d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=image, compat=bi_w)
        Q = d.inference(iterations)

    Args:
        probs: (C, H, W) or (B, C, H, W) class probabilities, any floating dtype, any device.
        image: uint8 (H, W, 3) or (B, H, W, 3) image (any channel order: it is only compared
            with itself), a tensor or a numpy array.
        iterations: mean-field iterations (>= 1).
        pos_w, pos_xy_std: weight and spatial standard deviation of the Gaussian term.
        bi_w, bi_xy_std, bi_rgb_std: weight and spatial / colour standard deviations of the
            bilateral term.

    Returns:
        Q, the marginals, with the shape, dtype and device of ``probs``. Differentiable with
        respect to ``probs`` when it requires grad.
    """
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise TypeError(f"probs must be a floating-point tensor, got {probs.dtype}")
    if probs.dim() not in (3, 4):
        raise ValueError(f"probs must be (C, H, W) or (B, C, H, W), got shape {tuple(probs.shape)}")
    iterations = checks.positive_int(iterations, "iterations")
    pos_w = checks.finite_float(pos_w, "pos_w")
    bi_w = checks.finite_float(bi_w, "bi_w")
    pos_xy_std = checks.positive_float(pos_xy_std, "pos_xy_std")
    bi_xy_std = checks.positive_float(bi_xy_std, "bi_xy_std")
    bi_rgb_std = checks.positive_float(bi_rgb_std, "bi_rgb_std")

    batched = probs.dim() == 4
    probs_b = probs if batched else probs[None]
    n_batch, n_labels, height, width = probs_b.shape
    if n_labels == 0:
        raise ValueError("probs must have at least one label (C >= 1)")
    if height == 0 or width == 0:
        raise ValueError(f"probs has an empty image ({height}x{width})")
    image_b = _image_tensor(image, probs.device)
    image_shape = tuple(image_b.shape)
    if image_b.dim() == 3:
        image_b = image_b[None]
    if image_b.dim() != 4 or image_b.shape[-1] != 3 or (batched and image_b.shape[0] != n_batch) \
            or (not batched and image_b.shape[0] != 1):
        expected = f"({n_batch}, {height}, {width}, 3)" if batched else f"({height}, {width}, 3)"
        raise ValueError(f"image must be uint8 {expected} to match probs, got shape "
                         f"{image_shape}")
    if tuple(image_b.shape[1:3]) != (height, width):
        hint = ""
        if tuple(image_b.shape[1:3]) == (n_labels, height):  # probs passed channels-last
            hint = ("; probs looks like (H, W, C): pass it as (C, H, W), e.g. "
                    "probs.permute(2, 0, 1)" if not batched else
                    "; probs looks like (B, H, W, C): pass it as (B, C, H, W), e.g. "
                    "probs.permute(0, 3, 1, 2)")
        raise ValueError(f"image is {image_b.shape[1]}x{image_b.shape[2]} but probs is "
                         f"{height}x{width} (H x W){hint}")
    checks.all_finite(probs_b, "probs")
    if n_batch == 0:  # an empty batch, as torch operators take one
        return torch.empty_like(probs)

    # The gaussian term depends on the image size and pos_xy_std only: one for the whole batch
    # (and kept for later calls of this size, see grid_terms).
    compat_pos = torch.full((n_labels,), pos_w, dtype=torch.float32, device=probs.device)
    compat_bi = torch.full((n_labels,), bi_w, dtype=torch.float32, device=probs.device)
    gaussian = gaussian_grid_term(height, width, pos_xy_std, pos_xy_std,
                                  NormalizationType.NORMALIZE_SYMMETRIC, compat_pos,
                                  device=probs.device, what="gaussian features (pos_xy_std)")
    bounds = bilateral_feature_bounds(height, width, bi_xy_std, bi_xy_std, (bi_rgb_std,) * 3)
    out = []
    for b in range(n_batch):
        # Label-major (C, H*W) throughout: mean-field reads the unary through its transposed
        # view and returns Q in the same layout, so nothing is transposed in memory.
        p = probs_b[b].to(torch.float32).reshape(n_labels, -1)
        unary = p.clamp(UNARY_CLIP, 1.0).log_().neg_()  # one temporary, not two
        bil = bilateral_features(image_b[b], bi_xy_std, bi_xy_std, (bi_rgb_std,) * 3)
        checks.lattice_features(bil, "bilateral features (bi_xy_std, bi_rgb_std)", bounds)
        terms = [gaussian, make_term(bil, compat_bi, NormalizationType.NORMALIZE_SYMMETRIC)]
        q = infer(unary.T, terms, iterations)
        out.append(q.T.reshape(n_labels, height, width))
    result = (out[0][None] if n_batch == 1 else torch.stack(out)).to(probs.dtype)
    return result if batched else result[0]


def _image_tensor(image, device) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        try:
            image = torch.from_numpy(checks.writable_array(image))
        except TypeError:
            raise TypeError(f"image must be a uint8 tensor or array, got {type(image).__name__}") \
                from None
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    return image.to(device).contiguous()
