"""Attack 1, known weights: the server model plus the public original model.

Attacker's knowledge: ``server/model.onnx`` and the original ONNX file (public
weights). A permutation keeps every value, so

- a server tensor is found among the original's by its sorted values (a
  fingerprint no permutation changes; shape and name are not used, so renamed
  or transposed tensors are found too), and
- along each axis, slice i of the server tensor is the original's slice p[i]:
  the sorted values of a slice do not change under permutations of the other
  axes, so slices are matched by the hash of their sorted values.

No search: one sort per tensor and per axis. Returns, per server tensor, the
original it came from and per axis the recovered index array (``server =
original.take(idx, axis)``), or None where no exact match exists (then the
fine-tune attack, which tolerates changed values, is the one to run).
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from eeonnx.audit.view import FLOAT_TYPES


def _bits(a: np.ndarray) -> np.ndarray:
    """The values as unsigned integers of the same width: sorting these is canonical
    (a float sort leaves -0.0 and 0.0, or NaNs, in input order)."""
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def _fingerprint(a: np.ndarray) -> str:
    return hashlib.sha1(np.sort(_bits(a).ravel()).tobytes()).hexdigest()


def slice_signatures(a: np.ndarray, axis: int) -> list[bytes]:
    """Sorted values of every slice along ``axis``: invariant to permutations of
    every other axis."""
    s = np.sort(np.moveaxis(_bits(a), axis, 0).reshape(a.shape[axis], -1), axis=1)
    return [row.tobytes() for row in s]


def match_axis(server: np.ndarray, k: int, original: np.ndarray, j: int):
    """idx with server slice i (axis k) == original slice idx[i] (axis j) by
    signature, or None when some server slice has no partner."""
    pool: dict[bytes, list[int]] = {}
    for i, sig in enumerate(slice_signatures(original, j)):
        pool.setdefault(sig, []).append(i)
    idx = np.empty(server.shape[k], dtype=np.int64)
    for i, sig in enumerate(slice_signatures(server, k)):
        free = pool.get(sig)
        if not free:
            return None
        idx[i] = free.pop(0)
    return idx


def attack(server_weights: dict[str, np.ndarray], original_weights: dict[str, np.ndarray],
           budget: float | None = None) -> dict:
    """Recover the transform of every server tensor from the public original.

    Returns ``{"tensors": {server name: {"source": original name, "axes": [idx or
    None per axis]}}, "unmatched": [server names], "seconds": float,
    "complete": bool}`` (``complete`` False when the budget ran out)."""
    t0 = time.monotonic()
    by_print: dict[tuple, list[str]] = {}
    for name, a in original_weights.items():
        if a.dtype.type in FLOAT_TYPES and a.size >= 2:
            by_print.setdefault((a.dtype.str, a.size, _fingerprint(a)), []).append(name)
    tensors, unmatched, complete = {}, [], True
    for name, s in server_weights.items():
        if s.dtype.type not in FLOAT_TYPES or s.size < 2:
            continue
        if budget is not None and time.monotonic() - t0 > budget:
            complete = False
            break
        cands = by_print.get((s.dtype.str, s.size, _fingerprint(s)), [])
        if not cands:
            unmatched.append(name)
            continue
        # prefer a candidate of the same shape (ties: identical tensors, any will do)
        cands = sorted(cands, key=lambda c: original_weights[c].shape != s.shape)
        best = None
        for c in cands:
            o = original_weights[c]
            axes = []
            for k in range(s.ndim):
                idx = None
                if s.shape[k] > 1:
                    order = [j for j in range(o.ndim) if o.shape[j] == s.shape[k]]
                    order.sort(key=lambda j: j != k)
                    for j in order:
                        idx = match_axis(s, k, o, j)
                        if idx is not None:
                            break
                else:
                    idx = np.zeros(1, dtype=np.int64)
                axes.append(idx)
            found = sum(x is not None for x in axes)
            if best is None or found > best[0]:
                best = (found, c, axes)
            if found == s.ndim:
                break
        tensors[name] = {"source": best[1], "axes": best[2]}
    return {"tensors": tensors, "unmatched": unmatched, "seconds": time.monotonic() - t0,
            "complete": complete}
