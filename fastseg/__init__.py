"""fastseg: fast kernels for DeepLab-style semantic segmentation."""
from fastseg import _native  # noqa: F401  (registers the torch.ops.fastseg operators)

__version__ = "0.1.0"
