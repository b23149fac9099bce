"""Argument validation shared by the CRF entry points: errors name the offending argument."""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

# The native lattice supports feature dimensions 1..16 (csrc/lattice/permutohedral_math.h).
MAX_FEATURE_DIM = 16
# Largest elevated lattice coordinate the native build accepts (2^30, as in the C++ code).
MAX_ELEVATED = float(2**30)


class DtypeError(TypeError, ValueError):
    """A wrong dtype where pydensecrf raised ValueError: a TypeError that code written against
    pydensecrf, catching ValueError, still catches."""


def _int_value(value, name: str, integral_float: bool) -> int:
    if not isinstance(value, (bool, np.bool_)):
        try:  # ints, numpy integers and 0-d integer arrays (anything with __index__)
            return operator.index(value)
        except TypeError:
            pass
    if integral_float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        # pydensecrf truncated any float (a size computed as w / 1 is 512.0): whole ones mean
        # what they say, others are refused rather than silently truncated.
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    raise TypeError(f"{name} must be an int, got {type(value).__name__}")


def positive_int(value, name: str, integral_float: bool = False) -> int:
    """``value`` as an int > 0; ``integral_float`` also accepts whole floats (512.0)."""
    value = _int_value(value, name, integral_float)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def non_negative_int(value, name: str, integral_float: bool = False) -> int:
    """``value`` as an int >= 0; ``integral_float`` also accepts whole floats."""
    value = _int_value(value, name, integral_float)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def finite_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def std_tuple(value, length: int, name: str) -> tuple:
    """A standard deviation given as one number or as `length` numbers, all positive."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (positive_float(value, name),) * length
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a number or a sequence of {length} numbers") from None
    if len(items) != length:
        raise ValueError(f"{name} must have {length} values, got {len(items)}")
    return tuple(positive_float(v, f"{name}[{i}]") for i, v in enumerate(items))


def writable_array(value) -> np.ndarray:
    """``value`` as a C-contiguous, native-byte-order array that torch.from_numpy takes without
    complaint: read-only arrays (np.asarray of a PIL image, np.load with mmap_mode="r") are
    copied, byte-swapped ones (">f4" files) converted."""
    arr = np.asarray(value)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    out = np.ascontiguousarray(arr).reshape(arr.shape)  # (a 0-d array stays 0-d)
    return out if out.flags.writeable else out.copy()


def as_float32_tensor(value, name: str, device=None) -> torch.Tensor:
    """numpy arrays, tensors and nested sequences, of any real dtype, as a float32 tensor."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        arr = np.asarray(value)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(writable_array(arr))
    if t.is_complex():
        raise TypeError(f"{name} must be real, got {t.dtype}")
    t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
    return t


def all_finite(t: torch.Tensor, name: str, plus_inf_hint: str = "") -> None:
    """ValueError naming ``name`` if ``t`` holds NaN or an infinity, saying how many of each;
    ``plus_inf_hint`` is appended when the only non-finite values are +inf."""
    # The largest and smallest values are both finite exactly when every value is (NaN
    # propagates through amax/amin): two reductions without a temporary cost a tenth of
    # isfinite(t).all() on a large unary.
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        if t.is_complex():
            t = torch.view_as_real(t)
        if not bool(torch.isfinite(t.amax()) & torch.isfinite(t.amin())):
            counts = {"NaN": int(torch.isnan(t).sum()), "+inf": int((t == math.inf).sum()),
                      "-inf": int((t == -math.inf).sum())}
            found = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
            hint = plus_inf_hint if counts["+inf"] and not counts["NaN"] + counts["-inf"] else ""
            raise ValueError(f"{name} contains NaN or Inf ({found} of {t.numel()} values){hint}")


def elevated_bound(features: torch.Tensor, max_abs=None) -> float:
    """Largest |elevated coordinate| of (N, d) features; mirrors the C++ elevated_bound().
    ``max_abs``, the per-dimension largest |feature|, is computed when not given."""
    d = features.shape[1]
    if max_abs is None:
        max_abs = features.abs().amax(0).double().cpu().tolist()
    inv_std = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    scale = [float(np.float32(1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std)) for i in range(d)]
    bound = tail = 0.0
    for j in range(d, 0, -1):
        cf = max_abs[j - 1] * scale[j - 1]
        bound = max(bound, tail + j * cf)
        tail += cf
    return max(bound, tail)


def lattice_features(features: torch.Tensor, name: str, bounds=None) -> None:
    """Checks (N, d) features before a lattice is built from them.

    ``bounds``, per-dimension upper bounds of |feature| known without reading the features
    (an image's size and value range bound its bilateral features), skip the pass over the
    features when they already keep the lattice in range; they do not replace the finiteness
    check, so give them only for features that cannot hold NaN or Inf.
    """
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(features.shape)}")
    d = features.shape[1]
    if not 1 <= d <= MAX_FEATURE_DIM:
        raise ValueError(
            f"{name} must have between 1 and {MAX_FEATURE_DIM} feature dimensions, got {d}")
    if features.shape[0] == 0:
        return
    if bounds is not None and all(math.isfinite(v) for v in bounds) \
            and elevated_bound(features, list(bounds)) < MAX_ELEVATED:
        return  # the exact bound below can only be smaller
    # One pass: NaN propagates through amax, so non-finite features show in max |feature|.
    max_abs = features.abs().amax(0).double().cpu().tolist()
    if not all(math.isfinite(v) for v in max_abs):
        raise ValueError(f"{name} contains NaN or Inf")
    bound = elevated_bound(features, max_abs)
    if bound >= MAX_ELEVATED:
        raise ValueError(
            f"{name} are too large for the permutohedral lattice (lattice coordinates up to "
            f"{bound:.3g}, limit {MAX_ELEVATED:.3g}): the standard deviations that scale them "
            "are too small")
