"""fastseg.densecrf against pydensecrf (pydensecrf2 1.1) itself, same inputs, same calls.

Agreement required everywhere: argmax agreement >= 99.9% and max |Q - Q_ref| <= 1e-3.
"""
import numpy as np
import pydensecrf.densecrf as pcrf
import pydensecrf.utils as putils
import pytest
import torch

import fastseg.densecrf as fcrf
import fastseg.densecrf.utils as futils
from fastseg.testing import image_probs, smooth_probs

DEEPLAB = dict(pos_xy_std=1, pos_w=3, bi_xy_std=67, bi_rgb_std=3, bi_w=4)


def assert_agrees(q, q_ref, max_diff=1e-3, min_agreement=0.999):
    q, q_ref = np.asarray(q), np.asarray(q_ref)
    assert q.shape == q_ref.shape and q.dtype == np.float32
    diff = float(np.abs(q - q_ref).max())
    agreement = float((q.argmax(0) == q_ref.argmax(0)).mean())
    assert diff <= max_diff, f"max |Q - Q_ref| = {diff:.3g}"
    assert agreement >= min_agreement, f"argmax agreement {agreement:.5f}"


def deeplab_crf(module, utils, probs, image, iterations=10, **over):
    p = dict(DEEPLAB, **over)
    c, h, w = probs.shape
    d = module.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(utils.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=p["pos_xy_std"], compat=p["pos_w"])
    d.addPairwiseBilateral(sxy=p["bi_xy_std"], srgb=p["bi_rgb_std"], rgbim=image, compat=p["bi_w"])
    return np.array(d.inference(iterations))


@pytest.mark.parametrize("photo_name,n_labels", [
    ("astronaut", 21), ("coffee", 21), ("chelsea", 2), ("rocket", 21)])
def test_deeplab_parameters_on_photographs(request, photo_name, n_labels):
    from fastseg.testing import photo

    image = photo(photo_name)
    probs = image_probs(image, n_labels, seed=n_labels)
    assert_agrees(deeplab_crf(fcrf, futils, probs, image), deeplab_crf(pcrf, putils, probs, image))


@pytest.mark.parametrize("photo_name,height,width", [("coffee", 399, 599), ("rocket", 427, 639)])
def test_deeplab_parameters_on_odd_sizes(photo_name, height, width):
    # H*W not a multiple of 4: pydensecrf's phantom lattice points (see below) are in play.
    from fastseg.testing import photo

    image = np.ascontiguousarray(photo(photo_name)[:height, :width])
    probs = image_probs(image, 21, seed=1)
    assert_agrees(deeplab_crf(fcrf, futils, probs, image), deeplab_crf(pcrf, putils, probs, image),
                  max_diff=1e-4, min_agreement=1.0)


def test_182_labels(astronaut):
    image = np.ascontiguousarray(astronaut[100:300, 150:350])
    probs = smooth_probs(182, 200, 200, seed=182)
    assert_agrees(deeplab_crf(fcrf, futils, probs, image), deeplab_crf(pcrf, putils, probs, image))


def test_one_label_and_one_pixel():
    probs = np.ones((1, 7, 5), np.float32)
    image = np.zeros((7, 5, 3), np.uint8)
    q = deeplab_crf(fcrf, futils, probs, image)
    assert q.shape == (1, 35) and np.all(q == 1.0)
    probs = np.array([[[0.2]], [[0.8]]], np.float32)
    image = np.array([[[10, 20, 30]]], np.uint8)
    assert_agrees(deeplab_crf(fcrf, futils, probs, image), deeplab_crf(pcrf, putils, probs, image))


def test_mean_subtracted_bgr_image_cast_to_uint8(coffee):
    # DeepLab's evaluation script feeds the CRF its network input cast back to uint8.
    mean = np.array([104.008, 116.669, 122.675], np.float32)
    image = (coffee[..., ::-1].astype(np.float32) - mean).astype(np.uint8)
    probs = image_probs(coffee, 21, seed=5)
    assert_agrees(deeplab_crf(fcrf, futils, probs, image), deeplab_crf(pcrf, putils, probs, image))


# Normalisation x compatibility on a crop. Without normalisation the filter is not scaled to
# ~1, so the weights are scaled down to keep messages in a range where float32 is meaningful.
NORMS = [0, 1, 2, 3]
COMPATS = ["potts", "per_label", "matrix"]


def compat_for(kind, n_labels, weight, seed):
    g = np.random.default_rng(seed)
    if kind == "potts":
        return weight
    if kind == "per_label":
        return (weight * g.uniform(0.5, 1.5, n_labels)).astype(np.float32)
    m = g.uniform(0, weight, (n_labels, n_labels)).astype(np.float32)
    np.fill_diagonal(m, 0)
    return -m  # penalise co-occurring different labels (pydensecrf's sign convention)


def kernel_member(module, name):
    # pydensecrf built with Cython 3.3 has the members on KernelType only, not on the module
    # (seen on the GPU machine); fastseg.densecrf has both, as pydensecrf's older builds do.
    return getattr(module, name) if hasattr(module, name) else getattr(module.KernelType, name)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", COMPATS)
def test_normalizations_and_compatibilities(chelsea, norm, kind):
    image = np.ascontiguousarray(chelsea[50:200, 100:325])
    n_labels = 5
    probs = image_probs(image, n_labels, seed=norm)
    scale = 1.0 if norm != 0 else 0.02
    results = []
    for module, utils in ((fcrf, futils), (pcrf, putils)):
        d = module.DenseCRF2D(image.shape[1], image.shape[0], n_labels)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        norm_t = module.NormalizationType(norm)
        d.addPairwiseGaussian(sxy=(3, 2), compat=compat_for(kind, n_labels, 3 * scale, 1),
                              kernel=kernel_member(module, "DIAG_KERNEL"), normalization=norm_t)
        d.addPairwiseBilateral(sxy=40, srgb=(10, 12, 14), rgbim=image,
                               compat=compat_for(kind, n_labels, 5 * scale, 2),
                               kernel=kernel_member(module, "FULL_KERNEL"), normalization=norm_t)
        results.append(np.array(d.inference(8)))
    assert_agrees(*results)


@pytest.mark.parametrize("kernel", ["CONST_KERNEL", "DIAG_KERNEL", "FULL_KERNEL"])
def test_kernel_types_do_not_change_inference(chelsea, kernel):
    image = np.ascontiguousarray(chelsea[::2, ::2])
    probs = image_probs(image, 3, seed=2)
    results = []
    for module, utils in ((fcrf, futils), (pcrf, putils)):
        d = module.DenseCRF2D(image.shape[1], image.shape[0], 3)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        d.addPairwiseBilateral(sxy=30, srgb=8, rgbim=image, compat=5,
                               kernel=kernel_member(module, kernel))
        results.append(np.array(d.inference(5)))
    assert_agrees(*results)


@pytest.mark.parametrize("chdim", [-1, 2])
def test_add_pairwise_energy_with_custom_features(coffee, chdim):
    image = np.ascontiguousarray(coffee[::2, ::2])
    h, w = image.shape[:2]
    img = image if chdim == 2 else np.ascontiguousarray(image.mean(-1).astype(np.uint8))
    probs = image_probs(image, 6, seed=9)
    results = []
    for module, utils in ((fcrf, futils), (pcrf, putils)):
        d = module.DenseCRF(h * w, 6)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        d.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(2, 3), shape=(h, w)), compat=3)
        d.addPairwiseEnergy(
            utils.create_pairwise_bilateral(sdims=(50, 50), schan=(13,) * (3 if chdim == 2 else 1),
                                            img=img, chdim=chdim), compat=6)
        results.append(np.array(d.inference(10)))
    assert_agrees(*results)


def stepped(module, utils, image, probs, steps, **kw):
    """Q after `steps` calls of stepInference, the KL divergence before each, and the CRF."""
    d = module.DenseCRF2D(image.shape[1], image.shape[0], probs.shape[0], **kw)
    d.setUnaryEnergy(utils.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=60, srgb=10, rgbim=image, compat=5)
    q, tmp1, tmp2 = d.startInference()
    kls = []
    for _ in range(steps):
        kls.append(d.klDivergence(q))
        d.stepInference(q, tmp1, tmp2)
    return np.array(q), kls, d


def test_step_inference_and_kl_divergence(chelsea):
    image = np.ascontiguousarray(chelsea[::2, ::2])
    probs = image_probs(image, 4, seed=4)
    q, kls, d = stepped(fcrf, futils, image, probs, 4)
    q_ref, kls_ref, _ = stepped(pcrf, putils, image, probs, 4)
    assert_agrees(q, q_ref)
    assert_agrees(np.array(d.inference(4)), q_ref)  # four steps are four iterations
    np.testing.assert_allclose(kls, kls_ref, rtol=1e-4)
    assert kls[-1] < kls[0]  # mean-field decreases the KL divergence


def test_start_inference_without_unary_matches_pydensecrf():
    for module in (fcrf, pcrf):
        d = module.DenseCRF2D(4, 3, 2)
        q, _, _ = d.startInference()
        assert np.array(q).shape == (2, 12) and not np.array(q).any()
        np.testing.assert_array_equal(np.array(d.inference(0)), np.full((2, 12), 0.5, np.float32))


def test_accepts_float64_non_contiguous_and_torch_inputs(chelsea):
    image = np.ascontiguousarray(chelsea[::3, ::3])
    h, w = image.shape[:2]
    probs = image_probs(image, 3, seed=1)
    unary = putils.unary_from_softmax(probs)

    def run(u, img):
        d = fcrf.DenseCRF2D(w, h, 3)
        d.setUnaryEnergy(u)
        d.addPairwiseBilateral(sxy=20, srgb=10, rgbim=img, compat=4)
        return np.array(d.inference(5))

    want = run(unary, image)
    np.testing.assert_array_equal(run(unary.astype(np.float64), image), want)
    np.testing.assert_array_equal(run(np.asfortranarray(unary), image), want)
    np.testing.assert_array_equal(run(torch.from_numpy(unary), torch.from_numpy(image)), want)
    padded = np.zeros((h, w, 4), np.uint8)
    padded[..., :3] = image
    np.testing.assert_array_equal(run(unary, padded[..., :3]), want)  # non-contiguous image
    ref = pcrf.DenseCRF2D(w, h, 3)
    ref.setUnaryEnergy(unary)
    ref.addPairwiseBilateral(sxy=20, srgb=10, rgbim=image, compat=4)
    assert_agrees(want, np.array(ref.inference(5)))


def test_utils_match_pydensecrf(chelsea):
    probs = smooth_probs(5, 30, 40, seed=3)
    for scale, clip in [(None, 1e-5), (0.8, 1e-3), (None, None)]:
        np.testing.assert_array_equal(futils.unary_from_softmax(probs, scale, clip),
                                      putils.unary_from_softmax(probs, scale, clip))
    labels = np.random.default_rng(0).integers(0, 6, size=(30, 40))
    for zero_unsure in (True, False):
        n = 5 if zero_unsure else 6
        np.testing.assert_array_equal(futils.unary_from_labels(labels, n, 0.7, zero_unsure),
                                      putils.unary_from_labels(labels, n, 0.7, zero_unsure))
    np.testing.assert_array_equal(futils.create_pairwise_gaussian((3, 4), (30, 40)),
                                  putils.create_pairwise_gaussian((3, 4), (30, 40)))
    img = chelsea[:30, :40]
    np.testing.assert_array_equal(futils.create_pairwise_bilateral((3, 4), (5, 6, 7), img, 2),
                                  putils.create_pairwise_bilateral((3, 4), (5, 6, 7), img, 2))
    np.testing.assert_array_equal(futils.create_pairwise_bilateral((3, 4), 5, img[..., 0]),
                                  putils.create_pairwise_bilateral((3, 4), 5, img[..., 0]))



def test_schan_shorter_than_the_channels_scales_those_it_has(chelsea):
    # pydensecrf divides only the channels schan lists (Keras' pp_denseCRF passes (0.005,)
    # with RGB images): the same features here, with a warning.
    img = chelsea[:30, :40]
    with pytest.warns(UserWarning, match="channels 1 and up are not scaled"):
        got = futils.create_pairwise_bilateral((20, 20), (0.005,), img, chdim=2)
    np.testing.assert_array_equal(
        got, putils.create_pairwise_bilateral((20, 20), (0.005,), img, chdim=2))
    with pytest.raises(ValueError, match="schan has 4 values but img has 3 channels"):
        futils.create_pairwise_bilateral((20, 20), (1, 2, 3, 4), img, chdim=2)


def test_keys_beyond_int16_follow_the_float64_reference_not_pydensecrf(coffee):
    # A real client pattern (Keras' pp_denseCRF on a grey image): schan=(0.005,) puts the
    # intensity at up to 51000 standard deviations, lattice coordinates past pydensecrf's int16
    # keys, which wrap and merge distant vertices. fastseg (32-bit keys, float64 embedding
    # there) must match the float64 reference lattice; pydensecrf visibly does not.
    from fastseg.crf.terms import NormalizationType
    from fastseg.reference.densecrf import make_term_reference, mean_field_reference

    image = np.ascontiguousarray(coffee[:160, :240])
    gray = np.ascontiguousarray(image.mean(-1, keepdims=True).astype(np.uint8))
    h, w, _ = gray.shape
    probs = image_probs(image, 5)

    def pp_dense_crf(module, utils):
        d = module.DenseCRF2D(w, h, 5)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        d.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(10, 10), shape=(h, w)), compat=3)
        d.addPairwiseEnergy(utils.create_pairwise_bilateral(sdims=(20, 20), schan=(0.005,),
                                                            img=gray, chdim=2), compat=10)
        return np.array(d.inference(5))

    def features(f):
        return torch.from_numpy(np.ascontiguousarray(f.T)).float()

    terms = [
        make_term_reference(features(putils.create_pairwise_gaussian((10, 10), (h, w))),
                            torch.full((5,), 3.0), NormalizationType.NORMALIZE_SYMMETRIC),
        make_term_reference(features(putils.create_pairwise_bilateral((20, 20), (0.005,), gray, 2)),
                            torch.full((5,), 10.0), NormalizationType.NORMALIZE_SYMMETRIC)]
    unary = torch.from_numpy(putils.unary_from_softmax(probs)).T.contiguous()
    q_ref = mean_field_reference(unary, terms, 5).T.numpy()
    q = pp_dense_crf(fcrf, futils)
    assert_agrees(q, q_ref, max_diff=1e-5, min_agreement=1.0)
    assert np.abs(pp_dense_crf(pcrf, putils) - q_ref).max() > 1e-3  # pydensecrf's wrapped keys


def test_phantom_points_give_pydensecrfs_answers_when_n_is_not_a_multiple_of_4(chelsea):
    # pydensecrf's x86 lattice build pads the points to a multiple of 4 with all-zero features
    # and keeps those phantom points' vertices (fastseg/crf/phantom_points.py). With H*W = 875
    # and a small-range colour feature (srgb=50) they move its Q by more than 1e-3 against the
    # lattice of the real points only; fastseg's terms include them and agree.
    from fastseg.crf.features import bilateral_features
    from fastseg.crf.mean_field import mean_field_loop
    from fastseg.crf.terms import NormalizationType, term_from_lattice
    from fastseg.ops import build_lattice

    img = np.ascontiguousarray(chelsea[100:135, 200:225])  # 35 x 25 = 875 points, 3 mod 4
    probs = image_probs(img, 4, seed=3)

    def crf(module, utils):
        d = module.DenseCRF2D(25, 35, 4)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        d.addPairwiseBilateral(sxy=5, srgb=50, rgbim=img, compat=5)
        return np.array(d.inference(1))

    q_ref = crf(pcrf, putils)
    assert_agrees(crf(fcrf, futils), q_ref, max_diff=1e-5, min_agreement=1.0)

    # The same iteration on the lattice of the 875 real points alone is visibly different.
    lattice = build_lattice(bilateral_features(torch.from_numpy(img), 5.0, 5.0, (50.0,) * 3))
    term = term_from_lattice(lattice, torch.full((4,), 5.0), NormalizationType.NORMALIZE_SYMMETRIC)
    unary = torch.from_numpy(putils.unary_from_softmax(probs)).T.contiguous()
    q_real_points_only = mean_field_loop(unary, [term], 1).T.numpy()
    assert np.abs(q_real_points_only - q_ref).max() > 1e-3


def test_phantom_points_leave_every_vertex_and_drop_only_their_entries():
    from fastseg.crf.phantom_points import build_with_phantom_points
    from fastseg.ops import build_lattice

    feats = torch.rand(10, 3, generator=torch.Generator().manual_seed(0)) * 4 + 1
    lat = build_with_phantom_points(feats, build_lattice)
    full = build_lattice(torch.cat([feats, torch.zeros(2, 3)]))
    assert full.n_vertices > build_lattice(feats).n_vertices  # the phantoms add vertices
    assert lat.n_points == 10 and lat.n_vertices == full.n_vertices
    assert torch.equal(lat.vertices, full.vertices[:10])
    assert torch.equal(lat.neighbors, full.neighbors)
    assert lat.splat_points.numel() == 10 * 4 and int(lat.splat_points.max()) < 10
    for v in range(lat.n_vertices):  # each vertex keeps its real entries, in order
        got = lat.splat_points[lat.splat_offsets[v]:lat.splat_offsets[v + 1]]
        want = full.splat_points[full.splat_offsets[v]:full.splat_offsets[v + 1]]
        assert torch.equal(got, want[want < 10])
    assert build_with_phantom_points(feats[:8], build_lattice).n_vertices == \
        build_lattice(feats[:8]).n_vertices  # 8 points: no phantom


def test_zero_dimensional_compat_is_a_potts_weight(chelsea):
    image = np.ascontiguousarray(chelsea[:30, :40])
    probs = image_probs(image, 4, seed=2)

    def run(compat):
        d = fcrf.DenseCRF2D(40, 30, 4)
        d.setUnaryEnergy(futils.unary_from_softmax(probs))
        d.addPairwiseBilateral(sxy=20, srgb=10, rgbim=image, compat=compat)
        return np.array(d.inference(3))

    want = run(5.0)
    assert np.array_equal(run(np.array(5.0, np.float32)), want)
    assert np.array_equal(run(np.float64(5.0)), want)
    assert np.array_equal(run(torch.tensor(5.0)), want)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_device_matches_pydensecrf(chelsea, norm):
    # DenseCRF(..., device="cuda"): every term and normalization filtered on the GPU, custom
    # features through addPairwiseEnergy, a matrix compatibility; numpy results as on the CPU.
    image = np.ascontiguousarray(chelsea[50:200, 100:325])
    h, w = image.shape[:2]
    probs = image_probs(image, 5, seed=20 + norm)
    scale = 1.0 if norm != 0 else 0.02
    results = []
    for module, utils, kw in ((fcrf, futils, {"device": "cuda"}), (fcrf, futils, {}), (pcrf, putils, {})):
        d = module.DenseCRF2D(w, h, 5, **kw)
        d.setUnaryEnergy(utils.unary_from_softmax(probs))
        norm_t = module.NormalizationType(norm)
        d.addPairwiseGaussian(sxy=(3, 2), compat=3 * scale, normalization=norm_t)
        d.addPairwiseBilateral(sxy=40, srgb=(10, 12, 14), rgbim=image,
                               compat=compat_for("matrix", 5, 5 * scale, 2), normalization=norm_t)
        d.addPairwiseEnergy(utils.create_pairwise_gaussian(sdims=(20, 20), shape=(h, w)),
                            compat=2 * scale, normalization=norm_t)
        results.append(np.array(d.inference(8)))
    gpu, cpu, ref = results
    assert_agrees(gpu, ref)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)


@cuda
def test_cuda_device_step_inference(chelsea):
    image = np.ascontiguousarray(chelsea[::2, ::2])
    probs = image_probs(image, 4, seed=4)
    q_gpu, kls_gpu, _ = stepped(fcrf, futils, image, probs, 3, device="cuda")
    q_cpu, kls_cpu, _ = stepped(fcrf, futils, image, probs, 3)
    np.testing.assert_allclose(q_gpu, q_cpu, rtol=0, atol=1e-4)
    np.testing.assert_allclose(kls_gpu, kls_cpu, rtol=1e-4)
