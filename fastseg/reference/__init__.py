"""Plain-PyTorch (and pydensecrf) reference versions of fastseg's operators and modules: small,
obviously correct, and what the tests and benchmarks compare fastseg against.

* ``aspp``, ``atrous``: four ``nn.Conv2d`` summed, ``F.conv2d`` with unfused epilogues;
* ``permutohedral``: the lattice and its filter in plain PyTorch;
* ``densecrf``: mean-field with that lattice, and pydensecrf itself.
"""
from fastseg.reference.aspp import ReferenceASPP, aspp_reference  # noqa: F401
from fastseg.reference.atrous import atrous_conv2d_reference  # noqa: F401
