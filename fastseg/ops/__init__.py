"""fastseg's PyTorch operators: every native or Triton kernel as one ``torch.ops.fastseg`` op."""
from fastseg.ops.lattice import Lattice, build_lattice, mean_field, permutohedral_filter

__all__ = ["Lattice", "build_lattice", "mean_field", "permutohedral_filter"]
