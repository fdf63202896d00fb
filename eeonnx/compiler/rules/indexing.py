"""Ops whose integer tensors are positions: ArgMax/ArgMin, TopK (results),
GatherElements, ScatterElements, ScatterND (operands).

**Results that are positions (ArgMax, ArgMin, TopK indices) pin their axis.**
On a permuted axis ``x' = x.take(p)`` the server's ``argmax(x')`` maps back
(``p[j']``) to *an* index of the maximum, but when several elements tie for
it (ReLU zeros, saturated or quantised activations, equal logits) it is the
first one in the *permuted* order, not the first in the original order:
a different, equally maximal, index. ``select_last_index`` has the same
problem. Ties cannot be ruled out statically, so the reduced axis is pinned
(correct before clever). The output's values are still bound to that axis
(``index_out``), so a consumer that indexes a table with them (greedy
decoding) sees the pinned class and stays in the clear too. Kept axes are
independent rows and follow the input.

TopK's *values* are invariant: the k largest values in sorted order are the
same numbers whatever the input order (equal values are equal), so with
``sorted=1`` and the indices unused the axis stays secret; the k axis of the
result is positional (rank order). With ``sorted=0`` the order of the result
is implementation-defined (it may follow the input order): pinned. (NaN
breaks this: onnxruntime's TopK, like its ReduceMax, gives order-dependent
results when NaN is among the values; the project makes no NaN promise.)

**Operands that are positions (GatherElements, ScatterElements)** bind the
indices' values to the indexed axis, exactly like Gather: constant or
arithmetically computed indices pin that axis (the value solver does), ids
that come from a client input are mapped by encode. That is exact:
``data' = data.take(p)``, ``idx' = argsort(p)[idx]`` gives
``data'[idx'] = data[idx]`` and ``scatter(data', idx', u)`` writes
``u`` at ``p^-1(idx)``, i.e. the permuted result. The other axes of the
indices are positions on data's axes (same index ``j``): tied when the sizes
are equal, pinned when the indices cover only a prefix. With
``reduction='none'`` duplicate indices make the last write win *in iteration
order*, so the indices' own positions along the scattered axis are pinned,
unless the indices are constant and write every target once.
ScatterND's index tuples address several axes at once: like GatherND, those
axes are pinned.
"""
from __future__ import annotations

import numpy as np

from eeonnx.compiler import layout as L
from eeonnx.compiler.rules import NodeView, rule

TIES = "ties between equal values resolve by position (first/last index), which a permutation changes"


def _attr_str(n: NodeView, name: str, default: str) -> str:
    v = n.attr(name, default)
    return v.decode() if isinstance(v, bytes) else v


@rule("ArgMax", "ArgMin")
def arg_reduce(n: NodeView) -> None:
    """Index of the max/min along ``axis``: that axis is pinned (ties), kept axes follow."""
    x, y = n.x(0), n.y(0)
    axis = int(n.attr("axis", 0)) % len(x)
    rest = x[:axis] + x[axis + 1:]
    if int(n.attr("keepdims", 1)):
        n.tie(rest, y[:axis] + y[axis + 1:])
    else:
        n.tie(rest, y)
    n.pin(x[axis], TIES)
    n.index_out(0, x[axis])


@rule("TopK")
def topk(n: NodeView) -> None:
    """Values[.., k, ..] (sorted) and Indices along ``axis``; other axes follow the input."""
    x = n.x(0)
    axis = int(n.attr("axis", -1)) % len(x)
    for o in (0, 1):
        if n.has_out(o):
            y = n.y(o)
            n.tie(x[:axis] + x[axis + 1:], y[:axis] + y[axis + 1:])
            n.public(y[axis])  # rank order: positional
    if n.has_out(1):
        n.pin(x[axis], TIES)
        n.index_out(1, x[axis])
    elif not int(n.attr("sorted", 1)):
        n.pin(x[axis], "sorted=0: the order of the result may follow the input order")


def _tie_positions(n: NodeView, xs: list[L.Term], xd: list, ys: list[L.Term], yd: list,
                   skip: int | None, why: str) -> None:
    """Axes of the indices (or updates) are positions on the same axes of data: tied when
    the sizes match, pinned when they cover only a part (a prefix) of data's axis."""
    for k, (a, b) in enumerate(zip(xs, ys, strict=True)):
        if k == skip:
            continue
        if isinstance(xd[k], int) and xd[k] == yd[k]:
            n.unify(a, b)
        else:
            n.pin(a, why)
            n.pin(b, why)


@rule("GatherElements", since=11)
def gather_elements(n: NodeView) -> None:
    """out[.., j, ..] = data[.., idx[.., j, ..], ..]: idx's values index data.axis (value layout),
    idx's positions are out's and data's other axes."""
    x, idx, y = n.x(0), n.x(1), n.y(0)
    axis = int(n.attr("axis", 0)) % len(x)
    n.index(1, x[axis])
    n.flow(0, 0)
    n.tie(idx, y)
    _tie_positions(n, x, n.dims(0), idx, n.dims(1), axis, "indices cover only a part of this axis")


def _distinct_targets(n: NodeView, axis: int) -> bool:
    """Constant indices that write every target element at most once (then the order of
    the writes does not matter)."""
    idx, dims = n.const(1), n.dims(0)
    if idx is None or not all(isinstance(d, int) for d in dims) or idx.ndim != len(dims):
        return False
    coords = list(np.indices(idx.shape))
    coords[axis] = np.where(idx < 0, idx + dims[axis], idx)
    if any((c < 0).any() or (c >= d).any() for c, d in zip(coords, dims)):
        return False
    flat = np.ravel_multi_index(tuple(c.reshape(-1) for c in coords), dims)
    return len(np.unique(flat)) == flat.size


def _distinct_tuples(n: NodeView, k: int) -> bool:
    """Constant index tuples that are pairwise different (after wrapping negative ones)."""
    idx, dims = n.const(1), n.dims(0)
    if idx is None or not all(isinstance(d, int) for d in dims[:k]):
        return False
    rows = idx.reshape(-1, k)
    rows = np.where(rows < 0, rows + np.array(dims[:k]), rows)
    return len(np.unique(rows, axis=0)) == len(rows)


@rule("ScatterElements", since=11)
@rule("Scatter", since=9, until=10)
def scatter_elements(n: NodeView) -> None:
    """out = data with updates written at idx along ``axis``: out follows data, updates follow
    idx, idx's values index data.axis (value layout)."""
    x, idx, upd, y = n.x(0), n.x(1), n.x(2), n.y(0)
    axis = int(n.attr("axis", 0)) % len(x)
    n.tie(x, y)
    n.tie(idx, upd)
    n.index(1, x[axis])
    n.flow(0, 0)
    n.flow(2, 0)
    _tie_positions(n, x, n.dims(0), upd, n.dims(2), axis, "updates cover only a part of this axis")
    if _attr_str(n, "reduction", "none") == "none" and not _distinct_targets(n, axis):
        n.pin(upd[axis], "duplicate indices: the last write wins, in index order")


@rule("ScatterND", since=11)
def scatter_nd(n: NodeView) -> None:
    """idx[..., k] tuples address data's first k axes (pinned); updates[idx.shape[:-1] +
    data.shape[k:]]: leading axes follow idx, trailing axes follow data."""
    x, idx, upd, y = n.x(0), n.x(1), n.x(2), n.y(0)
    n.tie(x, y)
    n.flow(0, 0)
    n.flow(2, 0)
    k = n.dims(1)[-1]
    if not isinstance(k, int):
        for t in x + upd:
            n.pin(t, "index tuple length is unknown")
        return
    q = len(idx)
    for t in x[:k]:
        n.pin(t, "axis addressed by index tuples")
    n.tie(idx[:-1], upd[: q - 1])
    n.tie(x[k:], upd[q - 1:])
    n.public(idx[-1])
    if _attr_str(n, "reduction", "none") == "none" and not _distinct_tuples(n, k):
        for t in idx[:-1]:
            n.pin(t, "duplicate index tuples: the last write wins, in index order")
