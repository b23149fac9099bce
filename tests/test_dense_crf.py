"""fastseg.dense_crf (torch-native) against DeepLab's pydensecrf post-processing."""
import warnings

import numpy as np
import pytest
import torch

import fastseg
from fastseg.crf import checks
from fastseg.crf.features import (bilateral_feature_bounds, bilateral_features,
                                   gaussian_features)
from fastseg.crf.mean_field import mean_field_loop
from fastseg.crf.terms import NormalizationType, make_term
from fastseg.reference.densecrf import (make_term_reference, mean_field_reference,
                                        pydensecrf_dense_crf)
from fastseg.testing import image_probs, smooth_probs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_agrees(q, q_ref, max_diff=1e-3, min_agreement=0.999):
    q = q.detach().float().cpu().numpy() if isinstance(q, torch.Tensor) else q
    assert q.shape == q_ref.shape
    assert float(np.abs(q - q_ref).max()) <= max_diff
    assert float((q.argmax(0) == q_ref.argmax(0)).mean()) >= min_agreement


def test_matches_deeplab_pydensecrf_pipeline(astronaut):
    probs = image_probs(astronaut, 21, seed=7)
    q = fastseg.dense_crf(torch.from_numpy(probs), torch.from_numpy(astronaut))
    assert q.shape == probs.shape and q.dtype == torch.float32
    assert_agrees(q, pydensecrf_dense_crf(probs, astronaut))


def test_custom_parameters(chelsea):
    probs = image_probs(chelsea, 5, seed=1)
    kw = dict(iterations=5, pos_w=2.0, pos_xy_std=2.0, bi_w=6.0, bi_xy_std=40.0, bi_rgb_std=7.0)
    q = fastseg.dense_crf(torch.from_numpy(probs), chelsea, **kw)
    assert_agrees(q, pydensecrf_dense_crf(probs, chelsea, **kw))


def test_batch_equals_one_by_one(chelsea, coffee):
    images = np.stack([chelsea[:200, :300], coffee[:200, :300]])
    probs = np.stack([image_probs(im, 4, seed=i) for i, im in enumerate(images)])
    q = fastseg.dense_crf(torch.from_numpy(probs), torch.from_numpy(images))
    assert q.shape == probs.shape
    for b in range(2):
        single = fastseg.dense_crf(torch.from_numpy(probs[b]), torch.from_numpy(images[b]))
        assert torch.equal(q[b], single)
        assert_agrees(q[b], pydensecrf_dense_crf(probs[b], np.ascontiguousarray(images[b])))


@pytest.mark.parametrize("height,width", [(1, 1), (1, 17), (13, 1), (37, 53)])
def test_odd_and_tiny_images(height, width):
    probs = smooth_probs(3, height, width, seed=height * width, cell=2)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    q = fastseg.dense_crf(torch.from_numpy(probs), image)
    assert_agrees(q, pydensecrf_dense_crf(probs, image))


@pytest.mark.parametrize("height,width,sxy,srgb", [
    (1, 1, 67.0, 3.0), (37, 53, 0.3, (2.0, 3.0, 0.7)), (512, 3, 1e-3, 1e-2)])
def test_bilateral_feature_bounds_hold_every_feature(height, width, sxy, srgb):
    # The bounds let the features' range check skip its pass over them: they must be at least
    # every feature of any image of the size, and exact for one that uses the full range.
    srgb = srgb if isinstance(srgb, tuple) else (srgb,) * 3
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[0, 0] = 255
    feats = bilateral_features(torch.from_numpy(image), sxy, sxy, srgb)
    bounds = bilateral_feature_bounds(height, width, sxy, sxy, srgb)
    assert feats.abs().amax(0).tolist() == bounds


def test_feature_bounds_out_of_range_still_check_the_features_themselves():
    # A black image's colour features are 0 whatever srgb: the bound 255 / 1e-9 alone would
    # reject it, the exact check accepts it (as before the bounds were used).
    probs = torch.from_numpy(smooth_probs(3, 6, 7, seed=1, cell=2))
    q = fastseg.dense_crf(probs, np.zeros((6, 7, 3), np.uint8), bi_rgb_std=1e-9)
    assert torch.isfinite(q).all()
    with pytest.raises(ValueError, match="bi_rgb_std"):
        fastseg.dense_crf(probs, np.full((6, 7, 3), 1, np.uint8), bi_rgb_std=1e-9)


def test_one_label_gives_certainty():
    q = fastseg.dense_crf(torch.rand(1, 9, 11), np.zeros((9, 11, 3), np.uint8))
    assert torch.equal(q, torch.ones(1, 9, 11))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(chelsea, dtype):
    image = np.ascontiguousarray(chelsea[::2, ::2])
    probs = torch.from_numpy(image_probs(image, 4, seed=2))
    q = fastseg.dense_crf(probs.to(dtype), image)
    assert q.dtype == dtype
    # The network output itself is rounded to `dtype`, so compare with pydensecrf on that.
    rounded = probs.to(dtype).float().numpy()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-3}[dtype]
    assert_agrees(q.float(), pydensecrf_dense_crf(rounded, image), max_diff=tol)


def test_non_contiguous_inputs(coffee):
    image = np.ascontiguousarray(coffee[::2, ::2])
    probs = torch.from_numpy(image_probs(image, 5, seed=3))
    want = fastseg.dense_crf(probs, image)
    probs_nc = probs.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # same values, strided
    image_nc = torch.from_numpy(image).permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not probs_nc.is_contiguous() and not image_nc.is_contiguous()
    assert torch.equal(fastseg.dense_crf(probs_nc, image_nc), want)


def test_empty_batch_and_read_only_image(chelsea):
    probs = torch.rand(0, 3, 4, 5)
    q = fastseg.dense_crf(probs, np.zeros((0, 4, 5, 3), np.uint8))
    assert q.shape == probs.shape and q.dtype == probs.dtype
    # np.asarray(PIL image) is read-only: copied before torch.from_numpy (which warns, once
    # per process, about non-writable arrays), the same result.
    image = np.ascontiguousarray(chelsea[:30, :40])
    frozen = image.copy()
    frozen.flags.writeable = False
    copied = checks.writable_array(frozen)
    assert copied.flags.writeable and np.array_equal(copied, image)
    assert np.shares_memory(checks.writable_array(image), image)  # writable: not copied
    probs = torch.as_tensor(image_probs(image, 4, seed=6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(fastseg.dense_crf(probs, frozen), fastseg.dense_crf(probs, image))


def test_gradients_match_reference_path(chelsea):
    image = torch.from_numpy(np.ascontiguousarray(chelsea[::6, ::6]))
    h, w = image.shape[:2]
    probs = torch.from_numpy(image_probs(image.numpy(), 3, seed=4))
    weights = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    grads = []
    for use_reference in (False, True):
        p = probs.clone().requires_grad_()
        unary = -torch.log(p.clamp(1e-5, 1.0)).reshape(3, -1).T
        pos = gaussian_features(h, w, 1.0, 1.0)
        bil = bilateral_features(image, 20.0, 20.0, (5.0,) * 3)
        make = make_term_reference if use_reference else make_term
        terms = [make(f, torch.full((3,), c), NormalizationType.NORMALIZE_SYMMETRIC)
                 for f, c in ((pos, 3.0), (bil, 4.0))]
        run = mean_field_reference if use_reference else mean_field_loop
        q = run(unary, terms, 5)
        (q.T.reshape(3, h, w) * weights).sum().backward()
        grads.append(p.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-4)


def test_requires_grad_path_equals_fused_path(chelsea):
    image = np.ascontiguousarray(chelsea[::4, ::4])
    probs = torch.from_numpy(image_probs(image, 4, seed=5))
    fused = fastseg.dense_crf(probs, image)
    p = probs.clone().requires_grad_()
    looped = fastseg.dense_crf(p, image)
    assert looped.requires_grad
    torch.testing.assert_close(looped.detach(), fused, rtol=0, atol=1e-5)
    looped.sum().backward()
    assert p.grad is not None


def test_fused_mean_field_matches_plain_pytorch_reference(chelsea):
    image = torch.from_numpy(np.ascontiguousarray(chelsea[::3, ::3]))
    h, w = image.shape[:2]
    probs = torch.from_numpy(image_probs(image.numpy(), 6, seed=6))
    unary = -torch.log(probs.clamp(1e-5, 1.0)).reshape(6, -1).T.contiguous()
    feats = (gaussian_features(h, w, 1.0, 1.0), bilateral_features(image, 67.0, 67.0, (3.0,) * 3))
    g = torch.Generator().manual_seed(0)
    compats = (torch.full((6,), 3.0), -torch.rand(6, 6, generator=g))
    for norm in NormalizationType:
        ref_terms = [make_term_reference(f, c, norm) for f, c in zip(feats, compats)]
        terms = [make_term(f, c, norm) for f, c in zip(feats, compats)]
        want = mean_field_reference(unary, ref_terms, 10)
        got = fastseg.ops.mean_field(unary, [t.lattice for t in terms],
                                     [t.in_scale for t in terms], [t.out_scale for t in terms],
                                     [t.compat for t in terms], 10)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@cuda
def test_cuda_matches_cpu(astronaut):
    probs = torch.from_numpy(image_probs(astronaut, 21, seed=8))
    image = torch.from_numpy(astronaut)
    q_cpu = fastseg.dense_crf(probs, image)
    q_gpu = fastseg.dense_crf(probs.cuda(), image.cuda())
    assert q_gpu.device.type == "cuda"
    assert_agrees(q_gpu, q_cpu.numpy())
    assert_agrees(q_gpu, pydensecrf_dense_crf(probs.numpy(), astronaut))


@cuda
def test_cuda_batch_and_half(chelsea):
    image = torch.from_numpy(np.ascontiguousarray(chelsea[:128, :160])).cuda()
    probs = torch.from_numpy(image_probs(image.cpu().numpy(), 5, seed=9)).cuda()
    q = fastseg.dense_crf(torch.stack([probs, probs]).half(), torch.stack([image, image]))
    assert q.dtype == torch.float16 and q.device.type == "cuda"
    torch.testing.assert_close(q[0], q[1])


def test_mean_field_is_bitwise_identical_across_thread_counts(chelsea):
    # One thread splats and blurs term by term; two run the terms' splats (and the gaussian
    # term's single-sweep blur) on separate threads; three have more threads than terms, and
    # every loop hands its chunks to whichever thread asks first: the bits must not change.
    probs = torch.from_numpy(image_probs(chelsea, 21, seed=11))
    before = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2, 3, 1):
            torch.set_num_threads(n_threads)
            results.append(fastseg.dense_crf(probs, chelsea))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_image_probs_is_the_same_for_every_thread_count(chelsea, restore_threads):
    # The benchmarks' and demo's inputs: torch's CPU softmax over the label dimension rounded
    # differently with 2 threads than with 1 here before image_probs pinned its torch ops to
    # one thread; it must also give the caller its thread count back.
    results = []
    for n_threads in (1, 2, 3):
        torch.set_num_threads(n_threads)
        results.append(image_probs(chelsea, 21))
    assert torch.get_num_threads() == 3
    assert all(np.array_equal(results[0], r) for r in results[1:])


def test_large_buffers_are_cached_between_calls_and_released_on_request(astronaut):
    probs = torch.from_numpy(image_probs(astronaut[:256, :256].copy(), 21))
    image = astronaut[:256, :256].copy()
    first = fastseg.dense_crf(probs, image)
    fastseg.empty_cache()
    fastseg.dense_crf(probs, image)
    assert fastseg.empty_cache() > 0  # the call left its large buffers for the next one
    assert fastseg.empty_cache() == 0
    fastseg.dense_crf(probs, image)
    again = fastseg.dense_crf(probs, image)  # reused (dirty) buffers give the same bits
    assert torch.equal(first, again)
