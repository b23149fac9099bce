"""``fastseg`` command line.

    fastseg demo [--repeats N] [--labels 21 182]     side-by-side comparison (see fastseg.demo)
    fastseg crf IMAGE PROBS.npy -o Q.npy [options]   dense-CRF post-processing of an image
                                                     (or a batch), see fastseg crf --help
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


class _CliError(Exception):
    """A problem with the command's arguments or files, reported as "fastseg crf: ..."."""


def _load_array(path: str, what: str) -> np.ndarray:
    try:
        value = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise _CliError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    except (ValueError, EOFError) as exc:  # not an .npy file (pickled, empty, another format)
        raise _CliError(f"{what} {path!r} is not a .npy array file ({exc or 'empty'})") from None
    if not isinstance(value, np.ndarray):  # an .npz archive
        raise _CliError(f"{what} {path!r} holds several arrays (.npz); save the one array with "
                        f"np.save")
    return value


def _load_image(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return _load_array(path, "image")
    try:
        from PIL import Image
    except ImportError:
        raise _CliError("reading image files needs Pillow (pip install pillow); or pass the "
                        "image as a uint8 (H, W, 3) .npy file") from None
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except OSError as exc:  # missing, unreadable, or not an image Pillow knows
        raise _CliError(f"cannot read image {path!r}: {exc}") from None


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise _CliError(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _CliError("--device cuda: no CUDA device is available "
                            "(torch.cuda.is_available() is False)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise _CliError(f"--device {name}: there are {torch.cuda.device_count()} CUDA "
                            f"devices")
    return device


def crf_main(argv) -> int:
    import torch

    import fastseg
    from fastseg.crf import checks

    p = argparse.ArgumentParser(prog="fastseg crf",
                                description="Refine class probabilities with a dense CRF "
                                            "(DeepLab-v2's post-processing).")
    p.add_argument("image", help="the image (any format Pillow reads, or a uint8 (H,W,3) .npy); "
                                 "a batch as a uint8 (B,H,W,3) .npy")
    p.add_argument("probs", help="class probabilities, a (C, H, W) or (B, C, H, W) .npy file")
    p.add_argument("-o", "--out", required=True,
                   help="output file, written as .npy under exactly this name: refined "
                        "probabilities with the shape of PROBS, or labels with --labels")
    p.add_argument("--labels", action="store_true",
                   help="write the argmax labels instead, (H, W) or (B, H, W) uint16")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--pos-w", type=float, default=3.0)
    p.add_argument("--pos-xy-std", type=float, default=1.0)
    p.add_argument("--bi-w", type=float, default=4.0)
    p.add_argument("--bi-xy-std", type=float, default=67.0)
    p.add_argument("--bi-rgb-std", type=float, default=3.0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    a = p.parse_args(argv)
    try:
        device = _device(a.device)
        image = _load_image(a.image)
        probs = _load_array(a.probs, "probs")
        try:
            probs = torch.from_numpy(checks.writable_array(probs)).to(device)
            q = fastseg.dense_crf(probs, image, iterations=a.iterations, pos_w=a.pos_w,
                                  pos_xy_std=a.pos_xy_std, bi_w=a.bi_w, bi_xy_std=a.bi_xy_std,
                                  bi_rgb_std=a.bi_rgb_std)
        except (ValueError, TypeError) as exc:
            raise _CliError(str(exc)) from None
        # Labels over the class axis, which is -3 for (C, H, W) and (B, C, H, W) alike.
        out = q.argmax(-3).to(torch.int32).cpu().numpy().astype(np.uint16) if a.labels \
            else q.cpu().numpy()
        try:
            with open(a.out, "wb") as f:  # np.save(path) would append ".npy" to other names
                np.save(f, out)
        except OSError as exc:
            raise _CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
    except _CliError as exc:
        print(f"fastseg crf: error: {exc}", file=sys.stderr)
        return 2
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
