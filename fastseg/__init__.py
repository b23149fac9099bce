"""fastseg: fast kernels for DeepLab-style semantic segmentation.

* ``fastseg.dense_crf``: DeepLab's dense-CRF post-processing, torch-native, CPU and CUDA;
* ``fastseg.densecrf``: a drop-in replacement for ``pydensecrf.densecrf``
  (and ``fastseg.densecrf.utils`` for ``pydensecrf.utils``);
* ``fastseg.ASPP`` / ``fastseg.aspp``: DeepLab-v2's atrous spatial pyramid pooling head, all
  branches fused (Triton on the GPU, one GEMM on the CPU), checkpoint-compatible;
* ``fastseg.atrous_conv2d`` / ``fastseg.AtrousConv2d``: dilated convolution with fused
  batch-norm, residual and ReLU epilogues;
* ``fastseg.ops``: the underlying ``torch.ops.fastseg`` operators;
* ``fastseg.empty_cache``: releases the buffers and gaussian lattices kept for reuse between
  calls.
"""
from fastseg import _native  # noqa: F401  (registers the torch.ops.fastseg operators)
from fastseg.caches import empty_cache
from fastseg.atrous import AtrousConv2d, atrous_conv2d, batchnorm_scale_shift
from fastseg.atrous_pyramid import ASPP, aspp
from fastseg.crf.dense_crf import dense_crf

__version__ = "0.1.0"

__all__ = ["dense_crf", "ASPP", "aspp", "AtrousConv2d", "atrous_conv2d",
           "batchnorm_scale_shift", "empty_cache"]
