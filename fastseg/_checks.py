"""Argument checks for the public atrous / ASPP functions: every message names the argument.

Kernels below the public layer assume valid input; everything a user can get wrong is caught
here with a ValueError (bad value or shape) or TypeError (wrong kind of object).
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch


def tensor(name: str, value, ndim: Optional[int] = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def same_device_dtype(ref_name: str, ref: torch.Tensor, **others: Optional[torch.Tensor]) -> None:
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}: all tensors "
                             f"must be on one device")
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}: all tensors "
                            f"must have one dtype")


def channel_vector(name: str, t: Optional[torch.Tensor], channels: int) -> None:
    if t is None:
        return
    tensor(name, t)
    if t.dim() != 1 or t.shape[0] != channels:
        raise ValueError(f"{name} must have shape ({channels},) (one value per output channel), "
                         f"got {tuple(t.shape)}")


def _is_int(v) -> bool:
    """Python and numpy integers (as nn.Conv2d takes them), not bools."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_pair(name: str, value, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a pair."""
    items = (value, value) if _is_int(value) else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or not all(_is_int(v) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    items = tuple(int(v) for v in items)
    if any(v < minimum for v in items):
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return items


def positive_int(name: str, value) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value)


def positive_int_list(name: str, values) -> list[int]:
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}") from None
    for v in items:
        if not _is_int(v):
            raise TypeError(f"{name} must contain ints, got {v!r}")
        if v < 1:
            raise ValueError(f"{name} must be positive, got {v!r} in {items}")
    return [int(v) for v in items]


# Whether torch.autocast exists for a device type (meta tensors have none), asked once per type:
# torch.compile in torch 2.11 cannot trace torch.amp.is_autocast_available (fullgraph=True failed
# on it; 2.14 traces it), but it traces a lookup in this dict, filled here for the usual devices
# before any trace starts.
_AUTOCAST_AVAILABLE: dict = {}


def _autocast_available(device_type: str) -> bool:
    known = _AUTOCAST_AVAILABLE.get(device_type)
    if known is None:
        known = _AUTOCAST_AVAILABLE[device_type] = bool(torch.amp.is_autocast_available(device_type))
    return known


for _device_type in ("cpu", "cuda", "meta"):
    _autocast_available(_device_type)


def autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast has convolutions compute in on ``t``'s device, or None outside
    autocast (or for float64, which autocast leaves alone)."""
    device_type = t.device.type
    if (t.dtype == torch.float64 or not _autocast_available(device_type)
            or not torch.is_autocast_enabled(device_type)):
        return None
    return torch.get_autocast_dtype(device_type)


def tensor_list(name: str, values, ndim: int) -> list[torch.Tensor]:
    if isinstance(values, torch.Tensor) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(values).__name__}")
    return [tensor(f"{name}[{i}]", v, ndim) for i, v in enumerate(values)]
