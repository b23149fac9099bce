"""Loads the compiled extension, whose import registers the ``torch.ops.fastseg`` operators."""
import torch

try:
    from fastseg import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "fastseg's native extension fastseg._C is missing or does not match the installed torch "
        f"({torch.__version__}). Reinstall fastseg with `pip install --no-build-isolation .` "
        f"after installing torch. Original error: {exc}"
    ) from exc

from fastseg import _fork_safety  # noqa: E402

_fork_safety.install()


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``torch.ops.fastseg.<op>`` has a kernel for ``device_type`` ("cpu", "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastseg::{op}", key)


def empty_cache() -> int:
    """Returns the large CPU buffers fastseg keeps for reuse to the system; returns the number
    of bytes released.

    Buffers of 4 to 64 MB (lattice tables, mean-field vertex buffers) are kept after a call, up
    to ``FASTSEG_BUFFER_CACHE_MB`` in all (default 512; 0 disables the cache), so that the next
    call of the same size does not pay page faults on hundreds of MB again. A request that no
    cached buffer fits releases the whole cache first, so caching does not add to the peak
    memory of a call of a new size; between calls of one size the memory stays resident.
    """
    return int(_C.empty_cache())
