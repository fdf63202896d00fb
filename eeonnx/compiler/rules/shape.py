"""Ops that move axes around: Reshape/Flatten (Kron merges and splits), Transpose,
Squeeze/Unsqueeze, Concat/Split/Slice (Cat blocks), Gather, Shape.

Reshape works on symbolic shapes: input and output dims are aligned into
groups of equal product (symbolic factors match by name, ``a*b`` strings are
products), each group's layouts are merged with Kron and unified; a group
with a symbolic factor is public as a whole.
"""
from __future__ import annotations

from collections import Counter

from eeonnx.compiler import layout as L
from eeonnx.compiler.rules import NodeView, rule


def _factor(d) -> tuple[int, Counter] | None:
    """A dim as (static part, multiset of symbols); None when unknown."""
    if isinstance(d, int):
        return d, Counter()
    if d is None:
        return None
    static, syms = 1, Counter()
    for tok in str(d).replace(" ", "").split("*"):
        if tok.isdigit():
            static *= int(tok)
        else:
            syms[tok] += 1
    return static, syms


def _greedy(fi: list, fo: list) -> tuple[list[tuple[list[int], list[int]]], int, int]:
    """Consecutive groups of equal product from the start of both sides.

    Stops (returning how far it got) where the two sides hold different
    symbols that no amount of growing can reconcile (e.g. 'past+seq' against
    'total'), or where one side runs out.
    """
    ones = lambda f: f[0] == 1 and not f[1]  # noqa: E731
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(fi) or j < len(fo):
        if i < len(fi) and ones(fi[i]):
            groups.append(([i], []))
            i += 1
            continue
        if j < len(fo) and ones(fo[j]):
            groups.append(([], [j]))
            j += 1
            continue
        if i >= len(fi) or j >= len(fo):
            break
        gi, gj, pi, pj = [i], [j], fi[i], fo[j]
        ni, nj = i + 1, j + 1
        while pi != pj:
            if pi[1] and pj[1] and not (pi[1] <= pj[1] or pj[1] <= pi[1]):
                return groups, i, j  # different symbols: cannot be matched from here
            grow_left = (sum(pi[1].values()), pi[0]) < (sum(pj[1].values()), pj[0])
            if grow_left and ni < len(fi):
                pi = (pi[0] * fi[ni][0], pi[1] + fi[ni][1])
                gi.append(ni)
                ni += 1
            elif not grow_left and nj < len(fo):
                pj = (pj[0] * fo[nj][0], pj[1] + fo[nj][1])
                gj.append(nj)
                nj += 1
            else:
                return groups, i, j
        groups.append((gi, gj))
        i, j = ni, nj
    return groups, i, j


def align_groups(in_dims: list, out_dims: list) -> list[tuple[list[int], list[int]]] | None:
    """Partition axes of both sides into consecutive groups of equal product.

    Groups are matched from the front, then from the back; whatever is left in
    the middle is one group (the element count is conserved, so its products
    agree even when its symbols are named differently). Size-1 axes form groups
    of their own (they carry no layout). None when a dim is unknown.
    """
    fi = [_factor(d) for d in in_dims]
    fo = [_factor(d) for d in out_dims]
    if None in fi or None in fo:
        return None
    front, i, j = _greedy(fi, fo)
    back_r, bi, bj = _greedy(fi[i:][::-1], fo[j:][::-1])
    ni, no = len(fi) - i, len(fo) - j
    back = [([len(fi) - 1 - k for k in gi][::-1], [len(fo) - 1 - k for k in gj][::-1]) for gi, gj in back_r][::-1]
    middle_in = list(range(i, i + ni - bi))
    middle_out = list(range(j, j + no - bj))
    middle = [(middle_in, middle_out)] if middle_in or middle_out else []
    return front + middle + back


def merge(n: NodeView, xs: list[L.Term], ys: list[L.Term], in_dims: list, out_dims: list) -> None:
    """Unify Kron(xs) with Kron(ys) for groups of axes of equal product."""
    groups = align_groups(in_dims, out_dims)
    if groups is None:
        for t in xs + ys:
            n.pin(t, "cannot align input and output dims (unknown sizes; try --dim)")
        return
    for gi, gj in groups:
        a = [xs[k] for k in gi]
        b = [ys[k] for k in gj]
        if not a or not b:
            continue  # a size-1 axis
        sizes = [in_dims[k] for k in gi] + [out_dims[k] for k in gj]
        if not all(isinstance(s, int) for s in sizes):
            for t in a + b:
                n.pin(t, "axis merged with a symbolic dim")
            continue
        n.unify(L.kron(*a), L.kron(*b), f"{n.node.op_type}: merged axes cannot be refined")


@rule("Reshape")
def reshape(n: NodeView) -> None:
    """Merges and splits axes: Kron layouts, refined where a secret axis splits."""
    merge(n, n.x(0), n.y(0), n.dims(0), n.out_dims(0))
    n.flow(0, 0)


@rule("Flatten")
def flatten(n: NodeView) -> None:
    """[d0..dk-1, dk..] -> [prod(d0..dk-1), prod(dk..)]."""
    x, y, d = n.x(0), n.y(0), n.dims(0)
    axis = int(n.attr("axis", 1))
    axis = axis + len(x) if axis < 0 else axis
    for part, out_axis in ((slice(0, axis), 0), (slice(axis, None), 1)):
        xs, dims = x[part], d[part]
        if not all(isinstance(s, int) for s in dims):
            for t in xs + [y[out_axis]]:
                n.pin(t, "axis merged with a symbolic dim")
        else:
            n.unify(L.kron(*xs) if xs else L.Public(1), y[out_axis])
    n.flow(0, 0)


@rule("Transpose")
def transpose(n: NodeView) -> None:
    """Y axis i is X axis perm[i]."""
    x, y = n.x(0), n.y(0)
    perm = n.ints("perm") or list(reversed(range(len(x))))
    for i, p in enumerate(perm):
        n.unify(y[i], x[p])
    n.flow(0, 0)


@rule("Squeeze")
def squeeze(n: NodeView) -> None:
    """Drops size-1 axes."""
    x, y, d = n.x(0), n.y(0), n.dims(0)
    axes = n.ints("axes", 1)
    drop = {a % len(x) for a in axes} if axes else {k for k, s in enumerate(d) if s == 1}
    n.tie([t for k, t in enumerate(x) if k not in drop], y)
    n.flow(0, 0)


@rule("Unsqueeze")
def unsqueeze(n: NodeView) -> None:
    """Inserts size-1 axes."""
    x, y = n.x(0), n.y(0)
    axes = {a % len(y) for a in n.ints("axes", 1)}
    n.tie(x, [t for k, t in enumerate(y) if k not in axes])
    n.flow(0, 0)


@rule("Concat")
def concat(n: NodeView) -> None:
    """Blocks side by side on the concat axis: Y.axis = Cat(X1.axis, X2.axis, ...)."""
    y = n.y(0)
    axis = int(n.attr("axis")) % len(y)
    parts = []
    for i in range(n.n_in):
        if not n.has(i):
            continue
        x = n.x(i)
        for k in range(len(y)):
            if k != axis:
                n.unify(x[k], y[k])
        parts.append(x[axis])
        n.flow(i, 0)
    n.unify(y[axis], L.cat(*parts), "Concat: block of unknown size")


@rule("Split")
def split(n: NodeView) -> None:
    """X.axis = Cat(Y1.axis, Y2.axis, ...); other axes follow."""
    x = n.x(0)
    axis = int(n.attr("axis", 0)) % len(x)
    parts = []
    for i in range(n.n_out):
        y = n.y(i)
        for k in range(len(x)):
            if k != axis:
                n.unify(x[k], y[k])
        parts.append(y[axis])
        n.flow(0, i)
    n.unify(x[axis], L.cat(*parts), "Split: block of unknown size")


@rule("Slice")
def slice_(n: NodeView) -> None:
    """A unit-step slice keeps a block: X.axis = Cat(before, Y.axis, after).

    A bound computed at run time (``x[..., d // 2:]`` exported through Shape)
    is recovered from the static output size when the other bound is known.
    Only the sliced axes are pinned when the block cannot be located.
    """
    x, y, d, yd = n.x(0), n.y(0), n.dims(0), n.out_dims(0)
    n.flow(0, 0)
    starts, ends = n.ints("starts", 1), n.ints("ends", 2)
    axes = n.ints("axes", 3) if (n.has(3) or n.attr("axes") is not None) else None
    steps = n.ints("steps", 4) if n.has(4) else None
    if (n.has(3) and axes is None) or (n.has(4) and steps is None):
        for a, b in zip(x, y):
            n.pin(a, "slice axes or steps are not constant")
            n.pin(b, "slice axes or steps are not constant")
        return
    count = len(axes) if axes is not None else len(starts if starts is not None else ends or [])
    if axes is None and starts is None and ends is None:
        for a, b in zip(x, y):
            n.pin(a, "slice bounds are not constant")
            n.pin(b, "slice bounds are not constant")
        return
    axes = [a % len(x) for a in (axes if axes is not None else range(count))]
    steps = steps or [1] * len(axes)
    for k in range(len(x)):
        if k not in axes:
            n.unify(x[k], y[k])
            continue
        pos = axes.index(k)
        block = _slice_block(d[k], yd[k], starts[pos] if starts else None,
                             ends[pos] if ends else None, steps[pos])
        if block is None:
            n.pin(x[k], "slice of this axis cannot be located (strided, reversed or unknown bounds)")
            n.pin(y[k], "slice of this axis cannot be located (strided, reversed or unknown bounds)")
            continue
        lo, hi = block
        n.unify(x[k], L.cat(L.fresh(lo), y[k], L.fresh(d[k] - hi)), "Slice: block cannot be cut out")


def _slice_block(size, out_size, start, end, step) -> tuple[int, int] | None:
    """[lo, hi) kept by a unit-step slice of a static axis, or None if unknown."""
    if not isinstance(size, int) or step != 1:
        return None
    if start is not None and end is not None:
        lo, hi, _ = slice(start, end, 1).indices(size)
        return lo, max(lo, hi)
    if not isinstance(out_size, int):
        return None
    if start is not None:
        lo = slice(start, None, 1).indices(size)[0]
        return (lo, lo + out_size) if lo + out_size <= size else None
    if end is not None:
        hi = slice(None, end, 1).indices(size)[1]
        return (hi - out_size, hi) if hi - out_size >= 0 else None
    return None


@rule("Gather")
def gather(n: NodeView) -> None:
    """Picks positions on one axis; the other axes follow.

    The indices' values are positions on the gathered axis: they carry its
    layout (token ids into a permuted embedding table are mapped by encode).
    Constant indices, or indices computed arithmetically, pin that axis.
    """
    x, idx, y = n.x(0), n.x(1), n.y(0)
    axis = int(n.attr("axis", 0)) % len(x)
    n.index(1, x[axis])
    n.flow(0, 0)
    n.tie(x[:axis] + x[axis + 1 :], y[:axis] + y[axis + len(idx) :])
    for a, b in zip(idx, y[axis : axis + len(idx)]):
        n.unify(a, b)
    n.public(*idx)


@rule("Shape", "Size")
def shape_of(n: NodeView) -> None:
    """Reads only the dims: any layout of the input is fine; the result is public."""
    n.passive(0)
    n.public(*n.y(0))


@rule("Constant", "ConstantOfShape", "Range", "EyeLike", "RandomNormal", "RandomUniform")
def constant(n: NodeView) -> None:
    """Produces a tensor from controls only: public."""
    if n.node.op_type == "EyeLike":
        n.passive(0)
    n.public(*n.y(0))




@rule("Tile")
def tile(n: NodeView) -> None:
    """Repeating an axis r times lays r copies side by side: Y.axis = Cat(X.axis, ...)."""
    x, y = n.x(0), n.y(0)
    n.flow(0, 0)
    reps = n.const(1)
    if reps is None:
        for a, b in zip(x, y):
            n.pin(a, "repeats are not constant")
            n.pin(b, "repeats are not constant")
        return
    for k, r in enumerate(reps.reshape(-1).tolist()):
        n.unify(y[k], x[k] if r == 1 else L.cat(*([x[k]] * int(r))), "Tile: repeated axis")


@rule("Trilu")
def trilu(n: NodeView) -> None:
    """Keeps a triangle of the last two axes (positional); leading axes follow."""
    x, y = n.x(0), n.y(0)
    n.tie(x[:-2], y[:-2])
    for a, b in zip(x[-2:], y[-2:]):
        n.pin(a, "triangle of a matrix depends on positions")
        n.unify(a, b)


@rule("CumSum")
def cumsum(n: NodeView) -> None:
    """A running sum along one axis depends on its order: that axis is pinned."""
    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    axis = n.const(1)
    if axis is None:
        for t in x:
            n.pin(t, "axis is not constant")
        return
    n.pin(x[int(axis.reshape(-1)[0]) % len(x)], "running sum depends on order")


@rule("GatherND")
def gather_nd(n: NodeView) -> None:
    """Index tuples address the first k axes after the batch axes: those are pinned
    (the tuples are read as numbers); batch axes and the trailing slice axes follow."""
    x, idx, y = n.x(0), n.x(1), n.y(0)
    b = int(n.attr("batch_dims", 0))
    k = n.dims(1)[-1]
    n.flow(0, 0)
    if not isinstance(k, int):
        for t in x + y:
            n.pin(t, "index tuple length is unknown")
        return
    n.tie(x[:b], y[:b])
    n.tie(idx[:b], y[:b])
    for t in x[b : b + k]:
        n.pin(t, "axis addressed by index tuples")
    n.tie(idx[b:-1], y[b : len(idx) - 1])
    n.tie(x[b + k :], y[len(idx) - 1 :])
    n.public(idx[-1])
