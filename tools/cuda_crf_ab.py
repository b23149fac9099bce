"""A/B of two builds of the CUDA dense CRF on a lent GPU: timings and outputs of one build, then
how far two builds' outputs differ.

    python tools/cuda_crf_ab.py record TAG OUT.npz   # with one build on PYTHONPATH
    python tools/cuda_crf_ab.py compare A.npz B.npz

`record` times `fastseg.dense_crf` on the astronaut (512x512, 21 and 182 labels; median of 15
calls after 3 warm-ups), one filtering per term and column count (triton.testing.do_bench), and
a flat grey 1024x1024 image (one lattice vertex holds nearly every pixel: the splat's worst
case), and saves every output. How the second GPU session ran it (bench/README.md, "Dense CRF
(GPU)"): build A in place and copy the package (`cp -r fastseg /tmp/A/`), change the sources,
build B and copy it to /tmp/B, then alternate `PYTHONPATH=/tmp/A:$PWD ... record A1 /tmp/A1.npz`,
B1, A2, B2 in separate processes, and `compare` A1 with B1 (and A1 with A2 for the noise floor).
"""
import argparse
import os
import sys

import numpy as np
import torch
from profile_cuda_crf import astronaut_lattices, call_ms  # tools/, the script's folder

import fastseg
from fastseg.ops import permutohedral_filter
from fastseg.testing import image_probs, photo


def record(tag, out):
    import triton

    print(f"{tag}: fastseg from {os.path.dirname(fastseg.__file__)}, {torch.cuda.get_device_name()}")
    image = photo("astronaut")
    results = {}
    for n_labels in (21, 182):
        probs = torch.from_numpy(image_probs(image, n_labels, seed=n_labels)).cuda()
        ms, _, q = call_ms(probs, torch.from_numpy(image).cuda(), rounds=15, warmup=3)
        print(f"{tag} dense_crf {n_labels} labels: median {ms:.2f} ms")
        results[f"crf{n_labels}"] = q.cpu().numpy()
    torch.manual_seed(0)
    for kind, lattice in astronaut_lattices(image).items():
        for m in (21, 182):
            x = torch.rand(image.shape[0] * image.shape[1], m, device="cuda")
            ms = triton.testing.do_bench(lambda: permutohedral_filter(x, lattice), warmup=10, rep=100)
            print(f"{tag} filter {kind} m={m}: {ms:.3f} ms")
            results[f"filter_{kind}{m}"] = permutohedral_filter(x, lattice).cpu().numpy()
    flat = np.full((1024, 1024, 3), 128, np.uint8)
    probs = torch.from_numpy(image_probs(flat, 21, seed=1)).cuda()
    ms, _, q = call_ms(probs, torch.from_numpy(flat).cuda(), rounds=5)
    print(f"{tag} dense_crf flat 1024x1024 21 labels: median {ms:.2f} ms")
    results["flat"] = q.cpu().numpy()
    np.savez(out, **results)


def compare(a_path, b_path):
    a, b = np.load(a_path), np.load(b_path)
    for key in a.files:
        x, y = a[key], b[key]
        diff = float(np.abs(x - y).max())
        line = f"{key}: max abs {diff:.3g}, relative {diff / max(float(np.abs(x).max()), 1e-30):.3g}"
        if not key.startswith("filter"):  # CRF probabilities (C, H, W): labels on axis 0
            line += f", argmax agreement {np.mean(x.argmax(0) == y.argmax(0)) * 100:.5f}%"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("tag")
    rec.add_argument("out")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("a")
    cmp_.add_argument("b")
    args = parser.parse_args()
    if args.command == "record":
        if not torch.cuda.is_available():
            sys.exit("cuda_crf_ab.py record: needs a CUDA device")
        record(args.tag, args.out)
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
