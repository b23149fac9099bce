"""Plain-PyTorch reference versions of fastseg's operators and modules: small, obviously
correct, and what the tests and benchmarks compare fastseg against."""
from fastseg.reference.aspp import ReferenceASPP, aspp_reference  # noqa: F401
from fastseg.reference.atrous import atrous_conv2d_reference  # noqa: F401
