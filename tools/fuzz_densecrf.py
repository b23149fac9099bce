"""fastseg.densecrf against pydensecrf on random small problems, with a float64 arbiter.

    python tools/fuzz_densecrf.py [--trials 300] [--seed 123] [--threshold 1e-3]

Each trial draws an image (random noise or smooth), probabilities, DenseCRF2D parameters (both
terms, any normalisation, 1-11 iterations) and runs the same calls through both libraries.
Where they differ by more than --threshold, the float64 reference path (fastseg.reference, with
the features DenseCRF2D builds) says which one computed the model. pydensecrf's phantom lattice
points (fastseg/crf/phantom_points.py) were found this way: 8 of the default 300 differed
before fastseg reproduced them, 1 after (NO_NORMALIZATION with a wide kernel, the
ill-conditioned case of the README).
"""
import argparse
import warnings

import numpy as np
import pydensecrf.densecrf as pcrf
import pydensecrf.utils as putils
import torch

import fastseg.densecrf as fcrf
import fastseg.densecrf.utils as futils
from fastseg.crf.features import bilateral_features, gaussian_features
from fastseg.crf.terms import NormalizationType
from fastseg.reference.densecrf import make_term_reference, mean_field_reference

NORMALIZATIONS = [pcrf.NO_NORMALIZATION, pcrf.NORMALIZE_BEFORE, pcrf.NORMALIZE_AFTER,
                  pcrf.NORMALIZE_SYMMETRIC]


def draw(rng):
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    m = int(rng.integers(1, 30))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if rng.random() < 0.5:  # smooth rows instead of noise
        steps = rng.integers(-3, 4, (h, w, 3))
        img = np.clip(np.cumsum(steps, axis=1) + 128, 0, 255).astype(np.uint8)
    probs = rng.dirichlet(np.ones(m) * rng.uniform(0.2, 5), size=h * w).T
    return dict(img=img, probs=np.ascontiguousarray(probs.reshape(m, h, w), dtype=np.float32),
                sxy_g=float(rng.choice([0.5, 1, 3, 10])), sxy_b=float(rng.choice([5, 30, 80])),
                srgb=float(rng.choice([1, 3, 13, 50])), compat_g=float(rng.uniform(0, 5)),
                compat_b=float(rng.uniform(0, 10)), iterations=int(rng.integers(1, 12)),
                norm=NORMALIZATIONS[rng.integers(0, 4)])


def run(module, utils, c):
    m, h, w = c["probs"].shape
    d = module.DenseCRF2D(w, h, m)
    d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(c["probs"])))
    d.addPairwiseGaussian(sxy=c["sxy_g"], compat=c["compat_g"], normalization=c["norm"])
    d.addPairwiseBilateral(sxy=c["sxy_b"], srgb=c["srgb"], rgbim=c["img"], compat=c["compat_b"],
                           normalization=c["norm"])
    return np.array(d.inference(c["iterations"]))


def reference64(c):
    m, h, w = c["probs"].shape
    norm = NormalizationType(int(c["norm"]))
    unary = torch.from_numpy(putils.unary_from_softmax(c["probs"])).double().T.contiguous()
    terms = [
        make_term_reference(gaussian_features(h, w, c["sxy_g"], c["sxy_g"]),
                            torch.full((m,), c["compat_g"], dtype=torch.float64), norm),
        make_term_reference(bilateral_features(torch.from_numpy(c["img"]), c["sxy_b"], c["sxy_b"],
                                               (c["srgb"],) * 3),
                            torch.full((m,), c["compat_b"], dtype=torch.float64), norm)]
    terms = [t._replace(in_scale=None if t.in_scale is None else t.in_scale.double(),
                        out_scale=None if t.out_scale is None else t.out_scale.double())
             for t in terms]
    return mean_field_reference(unary, terms, c["iterations"]).T.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--threshold", type=float, default=1e-3)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    above = 0
    for _ in range(args.trials):
        c = draw(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = run(fcrf, futils, c)
        q_pdc = run(pcrf, putils, c)
        diff = float(np.abs(q - q_pdc).max())
        if diff <= args.threshold:
            continue
        above += 1
        q64 = reference64(c)
        m, h, w = c["probs"].shape
        print(f"{h}x{w} (H*W mod 4 = {h * w % 4}), {m} labels, norm {int(c['norm'])}, "
              f"{c['iterations']} it, sxy {c['sxy_g']}/{c['sxy_b']}, srgb {c['srgb']}: "
              f"fastseg-pydensecrf {diff:.1e}, fastseg-float64 {np.abs(q - q64).max():.1e}, "
              f"pydensecrf-float64 {np.abs(q_pdc - q64).max():.1e}")
    print(f"{above} of {args.trials} trials above {args.threshold:g}")


if __name__ == "__main__":
    main()
