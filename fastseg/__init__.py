"""fastseg: fast kernels for DeepLab-style semantic segmentation.

* ``fastseg.dense_crf``: DeepLab's dense-CRF post-processing, torch-native, CPU and CUDA;
* ``fastseg.densecrf``: a drop-in replacement for ``pydensecrf.densecrf``
  (and ``fastseg.densecrf.utils`` for ``pydensecrf.utils``);
* ``fastseg.ops``: the underlying ``torch.ops.fastseg`` operators (permutohedral lattice).
"""
from fastseg import _native  # noqa: F401  (registers the torch.ops.fastseg operators)
from fastseg.crf.dense_crf import dense_crf

__version__ = "0.1.0"

__all__ = ["dense_crf"]
