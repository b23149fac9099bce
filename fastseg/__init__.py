"""fastseg: fast kernels for DeepLab-style semantic segmentation."""
from fastseg import _native  # noqa: F401  (registers the torch.ops.fastseg operators)
from fastseg.atrous import AtrousConv2d, atrous_conv2d, batchnorm_scale_shift  # noqa: F401
from fastseg.atrous_pyramid import ASPP, aspp  # noqa: F401

__version__ = "0.1.0"
