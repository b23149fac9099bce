"""Where a CPU dense-CRF call spends its time, step by step.

    python tools/profile_cpu_crf.py [--labels 21 182] [--threads 2] [--rounds 7]

For the astronaut (512x512) with DeepLab-v2's parameters, each step of ``fastseg.dense_crf``
timed on its own (median and best of --rounds, in one process): the unary, the bilateral
features, lattice and normalisation, the gaussian term (kept per image size, so only a new
size pays it: "cold"), and the fused mean-field operator with 0, 1, 2 and 10 iterations: 0
iterations pad the unary, take the first softmax and copy Q out; 1 adds the lattice views'
analysis and one iteration; 2 adds the blur chains (built only for two or more) and another;
the later iterations' cost is (10 - 2) / 8. Differences between these rows are rough (a first
iteration touches cold buffers); timers in the C++ (bench/README.md, "The eighth session")
split them exactly. The whole call's page faults and system time come last: buffers above
64 MB (182 labels) are not kept between calls, so their pages are faulted in again each time.
The host's load moves every figure by up to 1.5x between minutes: compare within one run.
"""
import argparse
import resource
import statistics
import time

import torch

import fastseg
from fastseg.crf import grid_terms
from fastseg.crf.dense_crf import UNARY_CLIP
from fastseg.crf.features import bilateral_features, gaussian_features
from fastseg.crf.mean_field import infer
from fastseg.crf.terms import NormalizationType, make_term
from fastseg.ops import build_lattice
from fastseg.testing import image_probs, photo


def timed(fn, rounds):
    """(median ms, best ms) of fn() over `rounds` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def profile(n_labels, rounds):
    image = photo("astronaut")
    h, w = image.shape[:2]
    probs = torch.from_numpy(image_probs(image, n_labels, seed=n_labels))
    rows = []

    def step(name, fn):
        rows.append((name, *timed(fn, rounds)))

    p = probs.reshape(n_labels, -1)
    step("unary -log(clamp(probs))", lambda: p.clamp(UNARY_CLIP, 1.0).log_().neg_())
    unary = p.clamp(UNARY_CLIP, 1.0).log_().neg_().T  # label-major, as dense_crf passes it
    im = torch.from_numpy(image)
    step("bilateral features", lambda: bilateral_features(im, 67.0, 67.0, (3.0,) * 3))
    feats = bilateral_features(im, 67.0, 67.0, (3.0,) * 3)
    step("bilateral lattice build", lambda: build_lattice(feats))
    compat_bi = torch.full((n_labels,), 4.0)
    step("bilateral lattice + normalisation",
         lambda: make_term(feats, compat_bi, NormalizationType.NORMALIZE_SYMMETRIC))
    gfeats = gaussian_features(h, w, 1.0, 1.0)
    compat_pos = torch.full((n_labels,), 3.0)
    step("gaussian lattice + normalisation (cold only)",
         lambda: make_term(gfeats, compat_pos, NormalizationType.NORMALIZE_SYMMETRIC))
    terms = [make_term(gfeats, compat_pos, NormalizationType.NORMALIZE_SYMMETRIC),
             make_term(feats, compat_bi, NormalizationType.NORMALIZE_SYMMETRIC)]
    mf = {it: timed(lambda it=it: infer(unary, terms, it), rounds) for it in (0, 1, 2, 10)}
    rows.append(("mean-field, 0 iterations (pad, first softmax, copy)", *mf[0]))
    rows.append(("mean-field, 1 iteration (+ views' analysis)", *mf[1]))
    rows.append(("mean-field, 2 iterations (+ blur chains)", *mf[2]))
    rows.append(("mean-field, 10 iterations", *mf[10]))
    rows.append(("mean-field, each iteration after the second",
                 (mf[10][0] - mf[2][0]) / 8, (mf[10][1] - mf[2][1]) / 8))
    step("dense_crf, whole call (gaussian term kept)", lambda: fastseg.dense_crf(probs, image))

    def cold():
        grid_terms.clear()
        fastseg.dense_crf(probs, image)

    step("dense_crf, whole call (cold)", cold)
    before = resource.getrusage(resource.RUSAGE_SELF)
    fastseg.dense_crf(probs, image)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = after.ru_minflt - before.ru_minflt
    system_ms = (after.ru_stime - before.ru_stime) * 1e3
    return rows, faults, system_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[21, 182])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"astronaut 512x512, DeepLab-v2 parameters; median / best of {args.rounds} (ms)")
    for n_labels in args.labels:
        print(f"\n{n_labels} labels")
        rows, faults, system_ms = profile(n_labels, args.rounds)
        for name, median, best in rows:
            print(f"  {name:52s} {median:8.1f} {best:8.1f}")
        print(f"  one whole call: {faults} page faults, {system_ms:.0f} ms of system time "
              "(all threads)")


if __name__ == "__main__":
    main()
