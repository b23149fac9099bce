"""``fastseg`` command line.

    fastseg demo [--repeats N] [--labels 21 182]     side-by-side comparison (see fastseg.demo)
    fastseg crf IMAGE PROBS.npy -o Q.npy [options]   dense-CRF post-processing of one image
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _load_image(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("fastseg crf: reading image files needs Pillow (pip install pillow); "
                         "or pass the image as a uint8 (H, W, 3) .npy file") from None
    return np.asarray(Image.open(path).convert("RGB"))


def crf_main(argv) -> int:
    import torch

    import fastseg

    p = argparse.ArgumentParser(prog="fastseg crf",
                                description="Refine class probabilities with a dense CRF "
                                            "(DeepLab-v2's post-processing).")
    p.add_argument("image", help="the image (any format Pillow reads, or a uint8 (H,W,3) .npy)")
    p.add_argument("probs", help="class probabilities, a (C, H, W) .npy file")
    p.add_argument("-o", "--out", required=True,
                   help="output .npy: refined probabilities (C, H, W), or labels with --labels")
    p.add_argument("--labels", action="store_true", help="write the argmax labels (H, W) uint16")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--pos-w", type=float, default=3.0)
    p.add_argument("--pos-xy-std", type=float, default=1.0)
    p.add_argument("--bi-w", type=float, default=4.0)
    p.add_argument("--bi-xy-std", type=float, default=67.0)
    p.add_argument("--bi-rgb-std", type=float, default=3.0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args(argv)
    image = _load_image(a.image)
    probs = torch.from_numpy(np.load(a.probs)).to(a.device)
    try:
        q = fastseg.dense_crf(probs, image, iterations=a.iterations, pos_w=a.pos_w,
                              pos_xy_std=a.pos_xy_std, bi_w=a.bi_w, bi_xy_std=a.bi_xy_std,
                              bi_rgb_std=a.bi_rgb_std)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"fastseg crf: {exc}") from None
    out = q.argmax(0).to(torch.int32).cpu().numpy().astype(np.uint16) if a.labels \
        else q.cpu().numpy()
    np.save(a.out, out)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"demo": lambda rest: __import__("fastseg.demo").demo.main(rest), "crf": crf_main}
    if not argv or argv[0] not in commands:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
