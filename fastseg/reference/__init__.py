"""Reference implementations that fastseg is tested and benchmarked against.

* ``permutohedral``: the lattice and its filter in plain PyTorch;
* ``densecrf``: mean-field with that lattice (plain PyTorch), and pydensecrf itself.
"""
