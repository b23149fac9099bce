"""What fastseg keeps between calls, and how to release it."""
from fastseg import _native
from fastseg.crf import grid_terms


def empty_cache() -> int:
    """Releases everything fastseg keeps for reuse between calls; returns the bytes released.

    That is the large CPU buffers of earlier calls (``FASTSEG_BUFFER_CACHE_MB``, see
    ``fastseg._native.empty_cache``) and the gaussian terms kept for images of the same size
    (``FASTSEG_LATTICE_CACHE_MB``, see ``fastseg.crf.grid_terms``).
    """
    return grid_terms.clear() + _native.empty_cache()
