"""Bad input raises a clear Python exception naming the argument; nothing crashes."""
import numpy as np
import pytest
import torch

import fastseg
import fastseg.densecrf as dcrf
import fastseg.densecrf.utils as utils
from fastseg.ops import build_lattice, permutohedral_filter


def crf(w=5, h=4, m=3):
    d = dcrf.DenseCRF2D(w, h, m)
    d.setUnaryEnergy(np.ones((m, w * h), np.float32))
    return d


@pytest.mark.parametrize("args,match", [
    ((0, 4, 3), "width"), ((5, 0, 3), "height"), ((5, 4, 0), "nlabels"),
    ((5.5, 4, 3), "width"), ((5, 4, -1), "nlabels")])
def test_bad_sizes(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dcrf.DenseCRF2D(*args)


def test_unary_shape_dtype_and_values():
    d = dcrf.DenseCRF2D(5, 4, 3)
    with pytest.raises(ValueError, match=r"unary must have shape .*\(3, 20\)"):
        d.setUnaryEnergy(np.ones((3, 21), np.float32))
    with pytest.raises(ValueError, match="unary must have shape"):
        d.setUnaryEnergy(np.ones((20, 3), np.float32))  # transposed
    with pytest.raises(ValueError, match="unary contains NaN or Inf"):
        d.setUnaryEnergy(np.full((3, 20), np.nan, np.float32))
    with pytest.raises(ValueError, match="unary contains NaN or Inf"):
        d.setUnaryEnergy(np.full((3, 20), np.inf, np.float32))
    with pytest.raises(ValueError, match=r"\(1 NaN, 2 -inf of 60 values\)$"):
        d.setUnaryEnergy(np.array([np.nan, -np.inf, -np.inf] + [1.0] * 57, np.float32).reshape(3, 20))
    with pytest.raises(TypeError, match="unary"):
        d.setUnaryEnergy(np.array([["a"] * 20] * 3))
    with pytest.raises(NotImplementedError, match="logistic"):
        d.setUnaryEnergy(np.ones((3, 20), np.float32), np.ones((2, 20), np.float32))


def test_plus_inf_unary_from_a_zero_probability_says_to_clip():
    # -log(0): pydensecrf reads it as "label ruled out"; fastseg wants finite energies and
    # says how to get them.
    probs = np.array([[0.0, 0.3], [1.0, 0.7]], np.float32)
    d = dcrf.DenseCRF2D(2, 1, 2)
    with pytest.raises(ValueError, match=r"unary contains NaN or Inf \(1 \+inf of 4 values\)"
                                         r": .*clip the probabilities"):
        with np.errstate(divide="ignore"):
            d.setUnaryEnergy(-np.log(probs))
    d.setUnaryEnergy(utils.unary_from_softmax(probs))  # clipped at 1e-5: accepted
    assert np.isfinite(d.inference(3)).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_device_without_a_gpu():
    with pytest.raises(ValueError, match="device='cuda': no CUDA device is available"):
        dcrf.DenseCRF2D(5, 4, 3, device="cuda")


def test_whole_float_sizes_and_iterations_are_accepted_others_refused():
    # pydensecrf truncated any float; sizes computed with / are whole floats.
    d = dcrf.DenseCRF2D(10 / 2, 8 / 2, 3.0)
    d.setUnaryEnergy(np.ones((3, 20), np.float32))
    assert np.array_equal(d.inference(2.0), crf(5, 4, 3).inference(2))
    assert np.array_equal(d.inference(np.array(2)), crf(5, 4, 3).inference(np.int64(2)))
    for bad in (5.5, float("inf"), float("nan")):
        with pytest.raises(TypeError, match="width must be a whole number"):
            dcrf.DenseCRF2D(bad, 4, 3)
    with pytest.raises(TypeError, match="niter must be a whole number"):
        crf().inference(2.5)
    with pytest.raises(TypeError, match="iterations must be an int"):  # torch-native: ints
        fastseg.dense_crf(torch.ones(2, 4, 5) / 2, torch.zeros(4, 5, 3, dtype=torch.uint8),
                          iterations=2.0)


def test_image_size_and_dtype():
    d = crf()
    with pytest.raises(ValueError, match=r"rgbim must have shape \(4, 5, 3\)"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((5, 4, 3), np.uint8), compat=3)
    with pytest.raises(TypeError, match="rgbim must be a uint8"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((4, 5, 3), np.float32), compat=3)
    with pytest.raises(ValueError, match="rgbim must be a uint8"):  # pydensecrf's type, too
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((4, 5, 3), np.uint16), compat=3)
    with pytest.raises(ValueError, match="3-channel"):
        d.addPairwiseBilateral(sxy=3, srgb=3, rgbim=np.zeros((4, 5, 4), np.uint8), compat=3)


@pytest.mark.parametrize("sxy,srgb,match", [
    (0, 3, "sxy"), (-1, 3, "sxy"), (3, 0, "srgb"), (float("nan"), 3, "sxy"),
    ((3, -2), 3, r"sxy\[1\]"), (3, (1, 2), "srgb must have 3 values")])
def test_non_positive_standard_deviations(sxy, srgb, match):
    with pytest.raises(ValueError, match=match):
        crf().addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.zeros((4, 5, 3), np.uint8),
                                   compat=3)


def test_tiny_srgb_that_crashes_pydensecrf_is_a_clear_error():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"srgb=1e-09.*too large"):
        crf().addPairwiseBilateral(sxy=3, srgb=1e-9, rgbim=image, compat=3)
    with pytest.raises(ValueError, match="bi_rgb_std"):
        fastseg.dense_crf(torch.rand(3, 4, 5), image, bi_rgb_std=1e-9)


def test_compat_and_kernel_arguments():
    d = crf()
    with pytest.raises(ValueError, match="compat has 2 per-label weights, expected 3"):
        d.addPairwiseGaussian(sxy=3, compat=np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"compat matrix must be \(3, 3\)"):
        d.addPairwiseGaussian(sxy=3, compat=np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="compat must be finite"):
        d.addPairwiseGaussian(sxy=3, compat=float("inf"))
    with pytest.raises(ValueError, match="normalization must be one of"):
        d.addPairwiseGaussian(sxy=3, compat=3, normalization=7)
    with pytest.raises(ValueError, match="kernel must be one of"):
        d.addPairwiseGaussian(sxy=3, compat=3, kernel=5)


def test_custom_features():
    d = crf()
    with pytest.raises(ValueError, match=r"features must have shape \(n_dims, 20\)"):
        d.addPairwiseEnergy(np.ones((2, 19), np.float32), compat=3)
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        d.addPairwiseEnergy(np.full((2, 20), np.nan), compat=3)
    with pytest.raises(ValueError, match="between 1 and 16 feature dimensions"):
        d.addPairwiseEnergy(np.ones((17, 20), np.float32), compat=3)
    with pytest.raises(ValueError, match="features are too large"):
        d.addPairwiseEnergy(np.full((2, 20), 1e12), compat=3)


def test_iterations_and_q():
    d = crf()
    with pytest.raises(ValueError, match="niter must be >= 0"):
        d.inference(-1)
    with pytest.raises(TypeError, match="niter must be an int"):
        d.inference("2")
    with pytest.raises(ValueError, match=r"Q must have shape \(3, 20\)"):
        d.stepInference(np.ones((3, 19), np.float32))
    with pytest.raises(TypeError, match="Q must be the array returned by startInference"):
        d.klDivergence([[1.0]])


def test_dense_crf_arguments():
    probs = torch.rand(3, 4, 5)
    image = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="iterations must be positive"):
        fastseg.dense_crf(probs, image, iterations=0)
    with pytest.raises(ValueError, match="pos_xy_std must be a positive"):
        fastseg.dense_crf(probs, image, pos_xy_std=0.0)
    with pytest.raises(ValueError, match="bi_xy_std must be a positive"):
        fastseg.dense_crf(probs, image, bi_xy_std=-3.0)
    with pytest.raises(ValueError, match=r"image is 5x4 but probs is 4x5"):
        fastseg.dense_crf(probs, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"probs looks like \(H, W, C\).*permute\(2, 0, 1\)"):
        fastseg.dense_crf(probs.permute(1, 2, 0), image)  # channels-last probs
    with pytest.raises(ValueError, match=r"probs looks like \(B, H, W, C\)"):
        fastseg.dense_crf(probs.permute(1, 2, 0)[None], image[None])
    with pytest.raises(TypeError, match="image must be uint8"):
        fastseg.dense_crf(probs, np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError, match=r"probs must be \(C, H, W\)"):
        fastseg.dense_crf(torch.rand(4, 5), image)
    with pytest.raises(TypeError, match="probs must be a floating-point"):
        fastseg.dense_crf(torch.ones(3, 4, 5, dtype=torch.int64), image)
    with pytest.raises(ValueError, match="probs contains NaN or Inf"):
        fastseg.dense_crf(torch.full((3, 4, 5), float("nan")), image)
    with pytest.raises(ValueError, match="at least one label"):
        fastseg.dense_crf(torch.rand(0, 4, 5), image)
    with pytest.raises(ValueError, match="empty image"):
        fastseg.dense_crf(torch.rand(3, 0, 5), np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match=r"image must be uint8 \(2, 4, 5, 3\)"):
        fastseg.dense_crf(torch.rand(2, 3, 4, 5), image)


def test_utils_arguments():
    with pytest.raises(ValueError, match="gt_prob"):
        utils.unary_from_labels(np.zeros(4, int), 3, 1.5)
    with pytest.raises(ValueError, match="n_labels"):
        utils.unary_from_labels(np.zeros(4, int), 1, 0.5)
    with pytest.raises(ValueError, match="labels must be in"):
        utils.unary_from_labels(np.array([0, 1, 7]), 3, 0.5)
    with pytest.raises(ValueError, match="scale"):
        utils.unary_from_softmax(np.ones((2, 3)) / 2, scale=0)
    with pytest.raises(ValueError, match="sdims"):
        utils.create_pairwise_gaussian((0, 1), (3, 3))


def test_native_operators_check_their_inputs():
    with pytest.raises(RuntimeError, match=r"features must be \(N, d\)"):
        build_lattice(torch.ones(5))
    with pytest.raises(RuntimeError, match="features must be float32"):
        torch.ops.fastseg.permutohedral_build(torch.ones(5, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="at least one point"):
        build_lattice(torch.ones(0, 2))
    lat = build_lattice(torch.rand(10, 2))
    with pytest.raises(RuntimeError, match="vertices must be int32 .N, d.1. with N = 11"):
        permutohedral_filter(torch.rand(11, 3), lat)
    with pytest.raises(RuntimeError, match="in_scale/out_scale must be float32"):
        permutohedral_filter(torch.rand(10, 3), lat, torch.rand(9))
    with pytest.raises(RuntimeError, match="iterations must be >= 0"):
        torch.ops.fastseg.mean_field(torch.rand(10, 3), None, [], [], [], [], [], [], [], [], [],
                                     -1)
