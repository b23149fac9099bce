"""The ASPP comparison for the README's main job: fastseg.ASPP against the reference DeepLab-v2
ASPP (four nn.Conv2d summed), same weights, same input, timed in one run.

    >>> import fastseg.demo_aspp
    >>> r = fastseg.demo_aspp.compare()            # 2048 -> 21 classes on a 65x65 map (513x513 image)
    >>> print(fastseg.demo_aspp.format_result(r))

or from a shell: python -m fastseg.demo_aspp [--classes 21] [--size 65] [--batch 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Optional

import torch

import fastseg
from fastseg.reference import ReferenceASPP


@dataclass
class ASPPComparison:
    device: str
    shape: tuple            # input (N, C, H, W)
    classes: int
    reference_ms: float     # best of `repeats`
    fastseg_ms: float       # best of `repeats`
    speedup: float          # reference_ms / fastseg_ms
    max_abs_diff: float     # max |fastseg - reference| over the output
    output_scale: float     # max |reference|, for judging max_abs_diff


def _best_ms(fn, x, repeats: int, synchronize) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn(x)
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def compare(in_channels: int = 2048, classes: int = 21, size: int = 65, batch: int = 1,
            rates=(6, 12, 18, 24), device: Optional[str] = None, repeats: int = 5,
            seed: int = 0) -> ASPPComparison:
    """Time fastseg.ASPP against the reference ASPP on random backbone-like features.

    The defaults are DeepLab-v2's head on a 513x513 image (output stride 8: a 65x65 map) with the
    21 PASCAL VOC classes. Both modules hold the same weights (the reference's, loaded into
    fastseg.ASPP through load_state_dict, as a checkpoint would be). Times are the best of
    `repeats` runs after one warm-up run each; on a GPU TF32 is switched off for both.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    reference = ReferenceASPP(in_channels, classes, rates)
    for conv in reference.children():
        torch.nn.init.normal_(conv.bias, std=0.1)  # non-zero biases, so they are checked too
    ours = fastseg.ASPP(in_channels, classes, rates)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference, ours = reference.to(device).eval(), ours.to(device).eval()
    x = torch.randn(batch, in_channels, size, size, device=device).relu()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    saved_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref_out, our_out = reference(x), ours(x)  # warm-up (and autotuning on a GPU)
            ref_ms = _best_ms(reference, x, repeats, sync)
            our_ms = _best_ms(ours, x, repeats, sync)
    finally:
        torch.backends.cudnn.allow_tf32 = saved_tf32
    return ASPPComparison(device=str(device), shape=tuple(x.shape), classes=classes, reference_ms=ref_ms,
                          fastseg_ms=our_ms, speedup=ref_ms / our_ms,
                          max_abs_diff=(our_out - ref_out).abs().max().item(),
                          output_scale=ref_out.abs().max().item())


def format_result(r: ASPPComparison) -> str:
    return (f"ASPP {r.shape[1]}->{r.classes} on {r.shape[2]}x{r.shape[3]}, batch {r.shape[0]}, {r.device}: "
            f"reference (4x nn.Conv2d) {r.reference_ms:.1f} ms, fastseg.ASPP {r.fastseg_ms:.1f} ms "
            f"({r.speedup:.2f}x), max |difference| {r.max_abs_diff:.2e} (output scale {r.output_scale:.2f})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="fastseg.ASPP vs the reference DeepLab-v2 ASPP")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--size", type=int, default=65)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(format_result(compare(classes=args.classes, size=args.size, batch=args.batch, device=args.device,
                                repeats=args.repeats)))


if __name__ == "__main__":
    main()
