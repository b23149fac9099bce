"""Inputs shared by fastseg's tests, benchmarks and demo: real photographs and synthetic
segmentation-network outputs. No downloads: the photographs ship inside scikit-image."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str) -> np.ndarray:
    """A uint8 (H, W, 3) RGB photograph from scikit-image's data: astronaut (512x512), coffee
    (400x600), chelsea (300x451), rocket (427x640)."""
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f"photo must be one of {PHOTOS}, got {name!r}")
    return np.ascontiguousarray(getattr(data, name)()[..., :3])


@contextlib.contextmanager
def _one_thread():
    """Runs torch on one thread inside the block. torch's CPU softmax over a dimension other than
    the last rounds some values differently with the thread count (its vectorised loop takes
    the elements where the threads' shares split them, and the ends of the shares go through
    another path): the inputs made here are computed on one thread so that a test, benchmark
    or demo gets the same bits whatever the thread count (chelsea with 21 labels differed
    between 1 and 2 threads, coffee with 5 between 1 and 16)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def smooth_probs(n_labels: int, height: int, width: int, seed: int = 0, sharpness: float = 3.0,
                 cell: int = 8) -> np.ndarray:
    """(C, H, W) float32 class probabilities shaped like a segmentation network's output:
    the softmax of random logits drawn at 1/`cell` resolution and upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, n_labels, max(1, height // cell), max(1, width // cell), generator=g)
    with _one_thread():
        logits = torch.nn.functional.interpolate(low * sharpness, size=(height, width),
                                                 mode="bilinear", align_corners=False)[0]
        return torch.softmax(logits, 0).numpy()


def image_probs(image: np.ndarray, n_labels: int, seed: int = 0, confidence: float = 4.0):
    """(C, H, W) float32 probabilities that follow the image: pixels are assigned to the
    nearest of `n_labels` random colour centres, blurred logits make the boundaries soft and
    noise makes the network "wrong" in places, which the CRF then has something to fix."""
    g = np.random.default_rng(seed)
    h, w, _ = image.shape
    centres = g.uniform(0, 255, size=(n_labels, 3)).astype(np.float32)
    dist = ((image.reshape(-1, 1, 3).astype(np.float32) - centres[None]) ** 2).sum(-1)
    logits = torch.from_numpy(-dist / dist.mean()).T.reshape(1, n_labels, h, w) * confidence
    logits = logits + torch.from_numpy(
        smooth_probs(n_labels, h, w, seed=seed, sharpness=confidence))[None]
    with _one_thread():
        logits = torch.nn.functional.avg_pool2d(logits, 5, stride=1, padding=2,
                                                count_include_pad=False)
        return torch.softmax(logits[0], 0).numpy()
