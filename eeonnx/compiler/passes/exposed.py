"""exposed: classes that a public-looking constant gives away without the key.

A permutation applied to a tensor whose plaintext order can be reconstructed
from its values alone protects nothing: RoPE's ``inv_freq`` is a geometric
progression, an ``arange`` an arithmetic one, a sorted table is sorted; the
server sorts (or fits the progression) and reads the permutation. The rule is
on values, not on names or ops. Along the class's own index (the class's
factor of a merged axis, its block of a concatenated one), a tensor exposes
the class when every fiber

- is an exact arithmetic or geometric progression with a nonzero step
  (n >= 3; relative tolerance ``TOL``), or
- is strictly monotone, all in the same direction, and a random tensor of that
  shape would be so with probability below 2**-``MONOTONE_BITS``
  (fibers * log2(n!) >= MONOTONE_BITS; a learned weight is not sorted by chance).

Such a class stays the identity (keygen draws no permutation for it) and is
reported (compile summary, manifest "exposed", ``eeonnx check``). Only the
first fiber is read before a tensor is ruled out, so weights are not copied.
"""
from __future__ import annotations

import math

import numpy as np

from eeonnx.compiler import layout as L

TOL = 1e-4
MONOTONE_BITS = 30.0


def class_view(array: np.ndarray, axis: int, term: L.Term, var: L.Var) -> list[np.ndarray]:
    """Views of ``array`` with the index of ``var`` inside ``term`` (the layout of ``axis``)
    as the last axis: one per occurrence of the class in the term."""
    t = L.resolve(term)
    if isinstance(t, L.Var):
        return [np.moveaxis(array, axis, -1)] if t.uid == var.uid and t.size == array.shape[axis] else []
    if isinstance(t, L.Cat):
        out, off = [], 0
        for part in t.parts:
            if part.size is None:
                return []
            piece = array[(slice(None),) * axis + (slice(off, off + part.size),)]
            out += class_view(piece, axis, part, var)
            off += part.size
        return out
    if isinstance(t, L.Kron):
        sizes = [f.size for f in t.factors]
        if None in sizes or math.prod(sizes) != array.shape[axis]:
            return []
        shaped = array.reshape(array.shape[:axis] + tuple(sizes) + array.shape[axis + 1:])
        out = []
        for k, f in enumerate(t.factors):
            out += class_view(shaped, axis + k, f, var)
        return out
    return []


def _fiber_reason(f: np.ndarray, fibers: int) -> str | None:
    """Why a set of fibers [m, n] (float64) is recoverable without the key, or None."""
    n = f.shape[-1]
    if n < 3 or not np.isfinite(f).all():
        return None
    scale = float(np.max(np.abs(f))) or 1.0
    d = np.diff(f, axis=-1)
    if (np.abs(d - d[..., :1]) <= TOL * scale).all() and (np.abs(d[..., 0]) > TOL * scale).all():
        return "an arithmetic progression along the axis (sorting it reveals the permutation)"
    if (f != 0).all():
        r = f[..., 1:] / f[..., :-1]
        if (r > 0).all() and (np.abs(r - r[..., :1]) <= TOL * np.abs(r[..., :1])).all() \
                and (np.abs(r[..., 0] - 1) > TOL).all():
            return "a geometric progression along the axis (sorting it reveals the permutation)"
    if fibers * L.log2_factorial(n) >= MONOTONE_BITS and ((d > 0).all() or (d < 0).all()):
        return "strictly sorted along the axis (sorting it reveals the permutation)"
    return None


def exposure(array: np.ndarray, axis: int, term: L.Term, var: L.Var) -> str | None:
    """The reason the class ``var`` is recoverable from this tensor's values, or None."""
    for view in class_view(array, axis, term, var):
        if view.size == 0 or view.dtype.kind not in "fiu":
            continue
        first = np.asarray(view[(0,) * (view.ndim - 1)], dtype=np.float64)[None, :]
        fibers = int(view.size // view.shape[-1])
        if _fiber_reason(first, fibers) is None:
            continue  # every fiber must qualify: the first does not
        why = _fiber_reason(np.asarray(view, dtype=np.float64).reshape(-1, view.shape[-1]), fibers)
        if why is not None:
            return why
    return None
