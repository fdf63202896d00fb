"""Storage views: initializers whose stored axes are not the axes the op computes on.

A packed 4-bit weight (``MatMulNBits``'s B: ``[N, k_blocks, blob]`` uint8, two
values per byte) is, logically, ``[N, k_blocks, block_size]``: the permutation
of K acts on ``(k_blocks, block_size)``, and inside a byte. A
:class:`StorageView` says how to read the stored tensor as its logical array:

    stored --reshape--> [rows, bytes] --unpack `bits`--> [rows, per_row] --reshape--> logical

(``bits=None``: no packing, a plain reshape). The rule gives one layout term per
*logical* axis; fold permutes the logical array by them and packs it back into
the stored form, keeping the padding bits of each row as they were. Each
element moves whole (an integer is never split or re-rounded), so the repacked
tensor holds the same multiset of sub-byte values as the original.

Invariant: ``pack(unpack(x)) == x`` bit for bit; ``apply`` with identity
permutations returns the stored array unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eeonnx.compiler import layout as L


@dataclass
class StorageView:
    logical_shape: tuple[int, ...]
    terms: list  # one layout term per logical axis
    rows: int = 1  # packed: the stored bytes are [rows, -1], each row padded on its own
    per_row: int = 0  # packed: logical elements per row
    bits: int | None = None  # packed element width (2, 4; 8 = one per byte), None = not packed

    def describe(self, show) -> list[str]:
        """Per logical axis: the layout, with the packing noted on the packed one."""
        out = [show(t) for t in self.terms]
        if self.bits is not None and self.bits < 8 and out:
            out[-1] += f" ({self.bits}-bit packed)"
        return out


def unpack(stored: np.ndarray, view: StorageView) -> np.ndarray:
    """[rows, bytes] uint8 -> [rows, bytes * 8 // bits] values, low bits first."""
    b = view.bits
    raw = np.ascontiguousarray(stored).reshape(view.rows, -1).view(np.uint8)
    if b is None or b == 8:
        return raw.copy()
    per_byte = 8 // b
    mask = (1 << b) - 1
    shifts = (np.arange(per_byte, dtype=np.uint8) * b)[None, None, :]
    return ((raw[:, :, None] >> shifts) & mask).reshape(view.rows, -1)


def pack(values: np.ndarray, view: StorageView) -> np.ndarray:
    """Inverse of :func:`unpack`: [rows, bytes * per_byte] values -> [rows, bytes] uint8."""
    b = view.bits
    if b is None or b == 8:
        return values.astype(np.uint8)
    per_byte = 8 // b
    v = values.reshape(view.rows, -1, per_byte).astype(np.uint8)
    shifts = (np.arange(per_byte, dtype=np.uint8) * b)[None, None, :]
    return np.bitwise_or.reduce(v << shifts, axis=2).astype(np.uint8)


def logical(stored: np.ndarray, view: StorageView) -> np.ndarray:
    """The logical array (unpacked, padding dropped)."""
    if view.bits is None:
        return np.asarray(stored).reshape(view.logical_shape)
    return unpack(stored, view)[:, : view.per_row].reshape(view.logical_shape)


def apply(stored: np.ndarray, view: StorageView, index: list[np.ndarray | None]) -> np.ndarray:
    """Permute the logical array by ``index`` (per logical axis) and store it back."""
    arr = logical(stored, view)
    for axis, p in enumerate(index):
        if p is not None:
            arr = np.take(arr, p, axis=axis)
    if view.bits is None:
        return np.ascontiguousarray(arr.reshape(stored.shape)).astype(stored.dtype)
    full = unpack(stored, view)
    full[:, : view.per_row] = arr.reshape(view.rows, view.per_row)
    return pack(full, view).reshape(stored.shape)


def packed_view(stored_shape, logical_shape, terms, bits: int, rows: int) -> StorageView | None:
    """A packed view, or None when the stored bytes cannot hold the logical array
    (sizes that do not add up: the rule then pins what it cannot describe)."""
    total = math.prod(stored_shape)
    n = math.prod(logical_shape)
    if rows <= 0 or total % rows or n % rows or 8 % bits:
        return None
    per_row = n // rows
    if (total // rows) * (8 // bits) < per_row:
        return None
    return StorageView(tuple(logical_shape), list(terms), rows, per_row, bits)


def free_terms(view: StorageView) -> list[L.Term]:
    return list(view.terms)
