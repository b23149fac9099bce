"""fastseg's PyTorch operators (``torch.ops.fastseg.*``): every native or Triton kernel as one
operator with CPU, CUDA and fake kernels, and autograd where training needs it.

* ``lattice``: permutohedral lattice build, filter and mean-field (native, ``csrc/lattice``);
* ``aspp``, ``atrous_conv2d``: atrous convolution and fused ASPP (Triton on CUDA; importing
  them registers the operators).
"""
from fastseg.ops import aspp, atrous_conv2d  # noqa: F401
from fastseg.ops.lattice import Lattice, build_lattice, mean_field, permutohedral_filter

__all__ = ["Lattice", "build_lattice", "mean_field", "permutohedral_filter"]
