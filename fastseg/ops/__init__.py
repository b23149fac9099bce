"""fastseg operators (torch.ops.fastseg.*). Importing this package registers the Python-defined
ones: the atrous convolution and ASPP operators with their CPU, CUDA and fake kernels and
autograd formulas."""
from fastseg.ops import aspp, atrous_conv2d  # noqa: F401
