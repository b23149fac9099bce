"""The gaussian terms kept between calls (fastseg.crf.grid_terms)."""
import numpy as np
import pytest
import torch

import fastseg
import fastseg.densecrf as dcrf
from fastseg.crf import grid_terms
from fastseg.crf.features import gaussian_features
from fastseg.crf.terms import NormalizationType, make_term
from fastseg.densecrf.utils import unary_from_softmax
from fastseg.testing import image_probs


@pytest.fixture(autouse=True)
def empty_grid_cache(monkeypatch):
    monkeypatch.delenv("FASTSEG_LATTICE_CACHE_MB", raising=False)
    grid_terms.clear()
    yield
    grid_terms.clear()


def cached_keys():
    return list(grid_terms._terms)


def term_of(height, width, std, norm=NormalizationType.NORMALIZE_SYMMETRIC):
    return grid_terms.gaussian_grid_term(height, width, std, std, norm,
                                         torch.full((3,), 3.0))


def test_kept_term_equals_a_fresh_one_and_is_reused():
    first = term_of(37, 53, 1.5)
    again = term_of(37, 53, 1.5)
    assert again.lattice.vertices is first.lattice.vertices  # reused, not rebuilt
    fresh = make_term(gaussian_features(37, 53, 1.5, 1.5), torch.full((3,), 3.0),
                      NormalizationType.NORMALIZE_SYMMETRIC)
    for kept, built in zip(list(again.lattice) + [again.in_scale, again.out_scale],
                           list(fresh.lattice) + [fresh.in_scale, fresh.out_scale]):
        assert torch.equal(kept, built)
    # Any change of size, standard deviation or normalisation is another term.
    term_of(53, 37, 1.5)
    term_of(37, 53, 2.0)
    term_of(37, 53, 1.5, NormalizationType.NORMALIZE_AFTER)
    assert len(cached_keys()) == 4
    assert term_of(37, 53, 1.5, NormalizationType.NORMALIZE_AFTER).in_scale is None


def test_compat_is_per_call():
    a = grid_terms.gaussian_grid_term(20, 30, 1.0, 1.0, NormalizationType.NORMALIZE_SYMMETRIC,
                                      torch.full((2,), 3.0))
    b = grid_terms.gaussian_grid_term(20, 30, 1.0, 1.0, NormalizationType.NORMALIZE_SYMMETRIC,
                                      torch.full((5,), 7.0))
    assert a.compat.tolist() == [3.0] * 2 and b.compat.tolist() == [7.0] * 5


def test_cache_limit_evicts_least_recently_used(monkeypatch):
    widths = (64, 66, 68)
    size = {w: grid_terms._term_bytes(term_of(64, w, 1.0)) for w in widths}
    grid_terms.clear()
    # Room for the first and the last together, not for all three.
    monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", str((size[64] + size[68]) / (1 << 20)))
    term_of(64, 64, 1.0)
    term_of(64, 66, 1.0)
    term_of(64, 64, 1.0)  # the most recently used again
    term_of(64, 68, 1.0)  # no room for three: the least recently used (width 66) goes
    assert sorted(key[1] for key in cached_keys()) == [64, 68]


def test_cache_disabled_or_too_small_keeps_nothing(monkeypatch):
    monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", "0")
    term_of(40, 40, 1.0)
    assert cached_keys() == []
    monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", "0.001")  # 1 KB: smaller than any term
    term_of(40, 40, 1.0)
    assert cached_keys() == []


def test_bad_cache_limit_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTSEG_LATTICE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FASTSEG_LATTICE_CACHE_MB"):
        term_of(10, 10, 1.0)


def test_dense_crf_keeps_one_term_per_size_and_empty_cache_drops_it(chelsea):
    image = np.ascontiguousarray(chelsea[:96, :128])
    probs = torch.from_numpy(image_probs(image, 5, seed=2))
    cold = fastseg.dense_crf(probs, image)
    assert len(cached_keys()) == 1
    warm = fastseg.dense_crf(probs, image)
    assert torch.equal(cold, warm)
    batch = fastseg.dense_crf(torch.stack([probs, probs.flip(0)]), np.stack([image, image]))
    assert len(cached_keys()) == 1  # one term for the batch and both earlier calls
    assert torch.equal(batch[0], cold)
    assert torch.equal(batch[1], fastseg.dense_crf(probs.flip(0), image))
    assert fastseg.empty_cache() > 0 and cached_keys() == []
    assert torch.equal(fastseg.dense_crf(probs, image), cold)


def test_densecrf_objects_of_one_size_share_the_gaussian_term(chelsea):
    image = np.ascontiguousarray(chelsea[:50, :70])
    probs = image_probs(image, 4, seed=1)

    def run():
        d = dcrf.DenseCRF2D(70, 50, 4)
        d.setUnaryEnergy(unary_from_softmax(probs))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        return d, np.array(d.inference(5))

    d1, q1 = run()
    d2, q2 = run()
    assert d2._terms[0].lattice.vertices is d1._terms[0].lattice.vertices
    assert np.array_equal(q1, q2)
    grid_terms.clear()
    _, q3 = run()
    assert np.array_equal(q1, q3)
