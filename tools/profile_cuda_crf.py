"""Where a CUDA dense-CRF call spends its GPU time, for a session on a lent GPU.

    python tools/profile_cuda_crf.py [--labels 21 182]

For the astronaut (512x512) with DeepLab-v2's parameters: the whole call's time, the kernels'
share (torch.profiler), each term's filtering time, and the splat's vertex-degree tail (the
heaviest vertex bounds the CUDA splat; bench/README.md, "Dense CRF (GPU)").
"""
import argparse
import time

import torch

import fastseg
from fastseg.crf.features import bilateral_features, gaussian_features
from fastseg.ops import build_lattice, permutohedral_filter
from fastseg.testing import image_probs, photo


def call_ms(probs, image, rounds=10, warmup=2):
    """(median ms, best ms, Q of the last call) of fastseg.dense_crf on the GPU."""
    for _ in range(warmup):
        q = fastseg.dense_crf(probs, image)
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        q = fastseg.dense_crf(probs, image)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[rounds // 2], min(times), q


def astronaut_lattices(image):
    """The astronaut's two CUDA lattices with DeepLab-v2's parameters, by term name."""
    h, w = image.shape[:2]
    return {"gaussian": build_lattice(gaussian_features(h, w, 1.0, 1.0).cuda()),
            "bilateral": build_lattice(
                bilateral_features(torch.from_numpy(image), 67.0, 67.0, (3.0,) * 3).cuda())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[21, 182])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_cuda_crf.py needs a CUDA device")
    import triton
    from torch.profiler import ProfilerActivity, profile

    image = photo("astronaut")
    im = torch.from_numpy(image)
    h, w = image.shape[:2]
    lattices = astronaut_lattices(image)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    for name, lat in lattices.items():
        degree = (lat.splat_offsets[1:] - lat.splat_offsets[:-1]).double()
        print(f"{name} lattice: {degree.numel()} vertices, {int(degree.sum())} splat entries, "
              f"entries per vertex mean {degree.mean():.1f}, 99th percentile "
              f"{degree.quantile(0.99):.0f}, max {int(degree.max())}")
    for n_labels in args.labels:
        probs = torch.from_numpy(image_probs(image, n_labels, seed=n_labels)).cuda()
        median, best, _ = call_ms(probs, im.cuda())
        print(f"\n{n_labels} labels: dense_crf {median:.2f} ms median, {best:.2f} ms best")
        for name, lat in lattices.items():
            x = torch.rand(h * w, n_labels, device="cuda")
            ms = triton.testing.do_bench(lambda: permutohedral_filter(x, lat), warmup=5, rep=50)
            print(f"  one {name} filtering: {ms:.3f} ms")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fastseg.dense_crf(probs, im.cuda())
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12,
                                        max_name_column_width=60))


if __name__ == "__main__":
    main()
