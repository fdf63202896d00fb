"""inputs: make a user's tensors fit the model's declared inputs, or refuse in one line.

Invariant: ``conform`` returns an array of exactly the declared dtype whose
values equal the given ones (integers) or are their nearest representable
value in the declared float type (floats, the rounding the model's own
arithmetic applies; an EEWarning says so when it may have rounded); any other mismatch (wrong rank, a static dim of another
size, a float where integers are expected, a value out of the target's range)
raises InputError naming the input and what the model takes.
"""
from __future__ import annotations

import warnings

import numpy as np

from eeonnx.errors import EEWarning, InputError


def _show(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_shape(name: str, shape: tuple, declared: list) -> None:
    """Static dims must match; symbolic (str/None) dims take any size."""
    if len(shape) != len(declared):
        raise InputError(f"input '{name}' has shape {_show(shape)} (rank {len(shape)}); "
                         f"the model takes {_show(declared)} (rank {len(declared)})")
    for k, (got, want) in enumerate(zip(shape, declared)):
        if isinstance(want, int) and want >= 0 and got != want:
            raise InputError(f"input '{name}' has shape {_show(shape)}; the model takes {_show(declared)} "
                             f"(dim {k} must be {want})")


def conform(name: str, value, dtype, declared: list | None) -> np.ndarray:
    """``value`` as an array of ``dtype`` (see the module invariant)."""
    a = np.asarray(value)
    want = np.dtype(dtype)
    if declared is not None:
        check_shape(name, a.shape, declared)
    if a.dtype == want:
        return a
    kind, target = a.dtype.kind, want.kind
    if kind == "b" or target == "b":
        raise InputError(f"input '{name}' is {a.dtype}; the model takes {want}")
    if target in "iu" and kind not in "iu":
        raise InputError(f"input '{name}' is {a.dtype}; the model takes {want} (integer values, e.g. token ids): "
                         f"save it with .astype('{want}')")
    if target in "iu":
        info = np.iinfo(want)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise InputError(f"input '{name}' ({a.dtype}) has values outside {want}'s range "
                             f"[{info.min}, {info.max}]")
        out = a.astype(want)
    elif target == "f":
        finite = np.isfinite(a) if kind == "f" else np.ones(a.shape, bool)
        big = float(np.max(np.abs(a[finite]))) if a.size and finite.any() else 0.0
        if big > float(np.finfo(want).max):
            raise InputError(f"input '{name}' ({a.dtype}) has values up to {big:.3g}, beyond {want}'s range")
        if kind in "iu" and big > 2 ** np.finfo(want).nmant:
            raise InputError(f"input '{name}' is {a.dtype} with values up to {big:.0f}, not exact in {want}")
        out = a.astype(want)
    else:
        raise InputError(f"input '{name}' is {a.dtype}; the model takes {want}")
    if target == "f" and (kind != "f" or a.dtype.itemsize > want.itemsize):  # may round: say so
        warnings.warn(f"input '{name}': {a.dtype} rounded to {want}, the model's input type", EEWarning,
                      stacklevel=3)
    return out
