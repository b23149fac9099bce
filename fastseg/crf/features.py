"""Pairwise features of 2-D images, computed as pydensecrf computes them.

pydensecrf divides in float32 (``feature = i / sx`` with float ``sx``); so do we, with a
tensor divisor (a Python-number divisor may be turned into a multiplication by its inverse,
which rounds differently and can move a point across a simplex boundary).
"""
from __future__ import annotations

import numpy as np
import torch


def _div(values: torch.Tensor, std: float) -> torch.Tensor:
    return values / torch.tensor([std], dtype=torch.float32, device=values.device)


def gaussian_features(height: int, width: int, sx: float, sy: float, device=None) -> torch.Tensor:
    """(H*W, 2) features (x / sx, y / sy), pixel index = y * W + x."""
    xs = _div(torch.arange(width, dtype=torch.float32, device=device), sx)
    ys = _div(torch.arange(height, dtype=torch.float32, device=device), sy)
    return torch.stack(
        (xs.expand(height, width).reshape(-1), ys[:, None].expand(height, width).reshape(-1)), 1)


def bilateral_features(image: torch.Tensor, sx: float, sy: float, srgb) -> torch.Tensor:
    """(H*W, 5) features (x / sx, y / sy, r / sr, g / sg, b / sb) of a uint8 (H, W, 3) image."""
    height, width, _ = image.shape
    pos = gaussian_features(height, width, sx, sy, device=image.device)
    colour = image.reshape(-1, 3).to(torch.float32)
    colour = colour / torch.tensor([srgb], dtype=torch.float32, device=image.device)
    return torch.cat((pos, colour), 1)


def bilateral_feature_bounds(height: int, width: int, sx: float, sy: float, srgb) -> list:
    """Per-dimension upper bounds of |bilateral_features(...)| for any uint8 image of this size,
    from the largest coordinate and colour value, divided in float32 as the features are
    (the division rounds monotonically, so no feature exceeds its bound)."""
    def div(v: float, std: float) -> float:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf/nan: no skip
            return float(np.float32(v) / np.float32(std))

    return [div(width - 1, sx), div(height - 1, sy)] + [div(255, s) for s in srgb]
