"""Dense CRF (Krähenbühl & Koltun 2011) on the permutohedral lattice.

``fastseg.crf`` holds the device-agnostic pieces: feature construction, pairwise terms with
their normalisation and compatibility, and mean-field inference. The public entry points are
``fastseg.dense_crf`` (torch-native) and ``fastseg.densecrf`` (a drop-in for pydensecrf).
"""
