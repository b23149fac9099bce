"""fastseg in worker processes forked after the parent ran it (multiprocessing's default start
method on Linux, the usual way to run the CRF over a dataset in parallel): GNU OpenMP's
threads do not survive fork, and without fastseg/_fork_safety.py such a worker hangs."""
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

import fastseg
import fastseg.densecrf as dcrf
import fastseg.densecrf.utils as dutils
from fastseg import _fork_safety
from fastseg.testing import image_probs

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or not _fork_safety.uses_openmp(),
    reason="needs fork and a torch whose parallel loops run on OpenMP")


def compat_crf(image):
    probs = image_probs(image, 5, seed=3)
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, 5)
    d.setUnaryEnergy(dutils.unary_from_softmax(probs))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=60, srgb=10, rgbim=image, compat=5)
    return np.array(d.inference(5)), torch.get_num_threads()


def torch_crf(image):
    probs = torch.as_tensor(image_probs(image, 21, seed=4))
    return fastseg.dense_crf(probs, torch.from_numpy(image)).numpy(), torch.get_num_threads()


# (Python 3.12+ warns about forking a multi-threaded process: that is the point here.)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("crf,size", [(compat_crf, 8), (compat_crf, 96), (torch_crf, 160)])
def test_forked_pool_worker_runs_the_crf_after_the_parent(astronaut, restore_threads, crf, size):
    torch.set_num_threads(2)
    image = np.ascontiguousarray(astronaut[:size, :size])
    want, _ = crf(image)  # the parent runs its parallel regions first
    pool = mp.get_context("fork").Pool(1)
    try:
        got, worker_threads = pool.apply_async(crf, (image,)).get(timeout=60)
    except mp.TimeoutError:
        pytest.fail("the forked worker hung in a parallel region")
    finally:
        pool.terminate()
        pool.join()
    # The worker runs on one thread, and the result does not depend on the thread count.
    assert worker_threads == 1
    assert np.array_equal(got, want)
