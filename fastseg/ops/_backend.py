"""Which implementation an operator's CPU kernel runs, and the output layout contract.

The dispatcher picks the device kernel; the CPU kernels of the atrous operators then run the
CPU-native path (MKL / oneDNN), unless FASTSEG_FORCE_TRITON=1, in which case they run the Triton
kernels on the CPU tensors. That only works under the Triton interpreter (TRITON_INTERPRET=1 set
before fastseg is imported), and exists so that the Triton kernels can be tested without a GPU.
"""
import os

import torch


def triton_forced() -> bool:
    """FASTSEG_FORCE_TRITON=1: CPU kernels run the Triton kernels (needs TRITON_INTERPRET=1)."""
    value = os.environ.get("FASTSEG_FORCE_TRITON", "0").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"FASTSEG_FORCE_TRITON must be 0 or 1, not {value!r}")
    if value != "1":
        return False
    from fastseg.kernels.tap_conv_launch import interpreting
    if not interpreting():
        raise RuntimeError(
            "FASTSEG_FORCE_TRITON=1 runs the Triton kernels on CPU tensors, which needs the Triton "
            "interpreter: set TRITON_INTERPRET=1 before importing fastseg")
    return True


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Outputs are channels_last when the input is (and is not also NCHW-contiguous), else NCHW.

    One rule shared by the real kernels and the fake (meta) kernels, so torch.compile sees the
    strides the kernels produce.
    """
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
