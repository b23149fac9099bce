"""The side-by-side demo (README's main job): fastseg against the reference path on bundled
real photographs, printing the time of each and how closely their outputs agree.

    python -m fastseg.demo            # or: fastseg demo

Needs the reference implementations (``pip install "fastseg[bench]"``: pydensecrf2 and
scikit-image, whose wheel carries the photographs). No downloads.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch


def best_times_interleaved(fns: Sequence[Callable], repeats: int) -> Tuple[List[float], list]:
    """Each function's best wall-clock time over ``repeats`` rounds (after one warm-up call
    each), and its last result. Every round calls each function once, in turn, so all of them
    are timed across the same minutes: on a shared machine whose speed drifts, timing one
    function's repeats and then the other's can hand either of them the slow minute."""
    outs = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def crf_rows(photo_name: str, n_labels: int, repeats: int) -> List[str]:
    import pydensecrf.densecrf as pcrf
    import pydensecrf.utils as putils

    import fastseg
    from fastseg.crf import grid_terms
    from fastseg.testing import image_probs, photo

    image = photo(photo_name)
    probs = image_probs(image, n_labels, seed=n_labels)
    c, h, w = probs.shape

    def reference():
        d = pcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(putils.unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=1, compat=3)
        d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=image, compat=4)
        return np.array(d.inference(10))

    def ours():
        q = fastseg.dense_crf(torch.from_numpy(probs), torch.from_numpy(image), iterations=10)
        return q.reshape(c, -1).numpy()

    def ours_new_size():
        # As for the first image of a size: no gaussian term kept from an earlier call.
        grid_terms.clear()
        return ours()

    (t_ref, t_ours, t_new_size), (q_ref, q, _) = best_times_interleaved(
        [reference, ours, ours_new_size], repeats)
    diff = float(np.abs(q - q_ref).max())
    agree = float((q.argmax(0) == q_ref.argmax(0)).mean())
    what = f"dense CRF, {photo_name} {w}x{h}, {n_labels} labels, 10 it."
    return [f"{what:42s} pydensecrf {t_ref * 1e3:8.0f} ms | fastseg {t_ours * 1e3:7.0f} ms | "
            f"{t_ref / t_ours:5.1f}x | max|dQ| {diff:.1e}, argmax agree {agree * 100:.3f}%",
            f"{'':42s} fastseg at a new image size (gaussian lattice built): "
            f"{t_new_size * 1e3:.0f} ms, {t_ref / t_new_size:.1f}x"]


def aspp_rows(repeats: int) -> List[str]:
    """fastseg.ASPP against four nn.Conv2d summed (see fastseg.demo_aspp)."""
    from fastseg.demo_aspp import compare, format_result

    return [format_result(compare(classes=c, size=s, batch=b, repeats=max(repeats, 3)))
            for c, s, b in ((21, 65, 1), (21, 41, 4), (182, 65, 1))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastseg demo", description="fastseg against the reference path on bundled real "
        "photographs, printing the time of each and how closely their outputs agree.")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds, each implementation once per round (best is shown)")
    parser.add_argument("--labels", type=int, nargs="+", default=[21, 182],
                        help="label counts for the CRF comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"fastseg demo: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    comparisons = [lambda n=n: crf_rows("astronaut", n, args.repeats) for n in args.labels]
    comparisons += [lambda: crf_rows("coffee", 21, args.repeats),
                    lambda: aspp_rows(args.repeats)]
    for comparison in comparisons:
        for row in comparison():
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
