"""Pair statements: which ops commute with a complex multiplication per pair of Cat(f, f).

See ``compiler/pairs.py`` for the algebra. A statement relates the exponents
of the pair nodes (tensor, f) on a node's operands (equal or opposite) or
zeroes them; an operand a statement does not cover is zeroed (``finish``), so
an op without a statement keeps its pairs permuted only.

- moves (Identity/Neg/Reshape/Flatten/Transpose/(Un)Squeeze/Expand/Dropout,
  Slice/Split/Gather/Concat off the pair axis, ReduceSum/Mean off it): pair i
  stays pair i; the site must be intact on both sides (a Slice that cuts the
  pair axis leaves halves: 0, unless it is part of rotate_half);
- Add/Sub/Sum/Mean: every operand carries the pairs (adding a broadcast
  vector would not commute);
- MatMul/Gemm: a factor carrying the pairs into Y: equal; contracted between
  two factors (q . k^T): opposite (x M . y M^-T = x . y);
- Mul: one carrier into Y: equal (the other operand is constant along the pair
  axis); two carriers: one must be ``symmetric`` (equal halves: a real scale
  per pair, as cos/sin) and stays 0, the other is equal to Y;
- Div: the dividend carries them, the divisor does not;
- rotate_half, Concat(Neg(Slice(x, n:2n)), Slice(x, 0:n)) on the pair axis, its
  slices and Neg used nowhere else: Y = x J with J = j per pair, which commutes
  with every complex multiplication: equal to x.
Anything else (Softmax, activations, norms, Cos/Sin...) is not listed: 0.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from eeonnx.compiler.pairs import PairView, carriers, site_axis

PAIR_RULES: dict[str, Callable] = {}


def pair_rule(*op_types: str):
    def deco(fn):
        for op in op_types:
            PAIR_RULES[op] = fn
        return fn

    return deco


def lookup(node) -> Callable | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return PAIR_RULES.get(node.op_type)


def touches(op, f: int) -> bool:
    """The operand holds f some other way than as its one pair site (halves, twice...)."""
    return op is not None and not op.has(f) and any(x.uid == f for t in op.terms for x in _free(t))


def move(v: PairView, inputs=(0,), outputs=None) -> None:
    ins = [o for o in (v.inp(i) for i in inputs) if o is not None]
    outs = [o for o in (v.out(k) for k in (outputs if outputs is not None else range(v.n_out))) if o is not None]
    for y in outs:
        for f, yn in y.nodes.items():
            src = [x.nodes[f] for x in ins if x.has(f)]
            if not src:
                v.zero(yn)
            for xn in src:
                v.relate(yn, xn, 1)
    for x in ins:
        for f, xn in x.nodes.items():
            if not any(y.has(f) for y in outs):
                v.zero(xn)


@pair_rule("Identity", "Neg", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand",
           "Slice", "Split", "ReduceSum", "ReduceMean")
def _move(v: PairView) -> None:
    move(v)


@pair_rule("Dropout")
def _dropout(v: PairView) -> None:
    move(v, outputs=(0,))


@pair_rule("Gather")
def _gather(v: PairView) -> None:
    data = v.inp(0)
    if data is not None and data.terms:
        axis = int(v.attr("axis", 0)) % len(data.terms)
        for f, n in data.nodes.items():
            if site_axis(data.terms, f) == axis:
                v.zero(n)
    move(v)


@pair_rule("Add", "Sub", "Sum", "Mean")
def _add(v: PairView) -> None:
    ins = [o for o in (v.inp(i) for i in range(v.n_in)) if o is not None]
    y = v.out(0)
    if y is None:
        return
    for f, yn in y.nodes.items():
        if all(x.has(f) for x in ins) and not touches(y, f):
            for x in ins:
                v.relate(yn, x.nodes[f], 1)
        else:
            v.zero(yn, *[x.nodes[f] for x in ins if x.has(f)])


@pair_rule("MatMul", "Gemm")
def _matmul(v: PairView) -> None:
    a, b, y = v.inp(0), v.inp(1), v.out(0)
    c = v.inp(2) if v.node.op_type == "Gemm" and v.n_in > 2 else None
    if a is None or b is None or y is None:
        return
    if v.node.op_type == "Gemm" and (v.attr("transA", 0) or v.attr("transB", 0)):
        return  # kept simple: the plain form only
    for f in set(a.nodes) | set(b.nodes) | set(y.nodes) | (set(c.nodes) if c else set()):
        fa, fb = a.nodes.get(f), b.nodes.get(f)
        yn = y.nodes.get(f)
        if any(touches(o, f) for o in (a, b, y, c)):
            v.zero(*[n for n in (fa, fb, yn, c.nodes.get(f) if c else None) if n is not None])
        elif yn is not None and (fa is None) != (fb is None):
            v.relate(yn, fa or fb, 1)
            if c is not None:
                if c.has(f):
                    v.relate(c.nodes[f], yn, 1)
                else:
                    v.zero(yn)
        elif yn is None and fa is not None and fb is not None and (c is None or not c.has(f)):
            v.relate(fa, fb, -1)
        else:
            v.zero(*[n for n in (fa, fb, yn, c.nodes.get(f) if c else None) if n is not None])


@pair_rule("Mul")
def _mul(v: PairView) -> None:
    a, b, y = v.inp(0), v.inp(1), v.out(0)
    if a is None or b is None or y is None:
        return
    for f in set(a.nodes) | set(b.nodes) | set(y.nodes):
        fa, fb, yn = a.nodes.get(f), b.nodes.get(f), y.nodes.get(f)
        if yn is None or any(touches(o, f) for o in (a, b, y)):
            v.zero(*[n for n in (fa, fb, yn) if n is not None])
        elif (fa is None) != (fb is None):
            v.relate(yn, fa or fb, 1)
        elif fa is not None and v.solver.symmetric(b.value, f):
            v.zero(fb)
            v.relate(yn, fa, 1)
        elif fa is not None and v.solver.symmetric(a.value, f):
            v.zero(fa)
            v.relate(yn, fb, 1)
        else:
            v.zero(*[n for n in (fa, fb, yn) if n is not None])


@pair_rule("Div")
def _div(v: PairView) -> None:
    a, b, y = v.inp(0), v.inp(1), v.out(0)
    if a is None or b is None or y is None:
        return
    for f in set(a.nodes) | set(b.nodes) | set(y.nodes):
        fa, fb, yn = a.nodes.get(f), b.nodes.get(f), y.nodes.get(f)
        if yn is not None and fa is not None and fb is None and not touches(b, f):
            v.relate(yn, fa, 1)
        else:
            v.zero(*[n for n in (fa, fb, yn) if n is not None])


@pair_rule("Concat")
def _concat(v: PairView) -> None:
    x = v.solver.rotate_half.get(id(v.node)) if hasattr(v.solver, "rotate_half") else None
    if x is not None:
        src, y = v.solver.operand(None, x), v.out(0)
        for f, yn in y.nodes.items():
            if src.has(f):
                v.relate(yn, src.nodes[f], 1)
            else:
                v.zero(yn)
        return
    y = v.out(0)
    axis = int(v.attr("axis", 0))
    ins = [o for o in (v.inp(i) for i in range(v.n_in)) if o is not None]
    if y is not None and y.terms:
        for f, yn in y.nodes.items():
            if site_axis(y.terms, f) == axis % len(y.terms) or not all(x.has(f) for x in ins):
                # pairs assembled from pieces (only rotate_half is known to commute), or
                # joined with a tensor that does not carry them
                v.zero(yn, *[x.nodes[f] for x in ins if x.has(f)])
    move(v, inputs=tuple(range(v.n_in)))


@pair_rule("Shape", "Size")
def _shape(v: PairView) -> None:
    v.passive.add(0)


# ---------------------------------------------------------------------------
# rotate_half
# ---------------------------------------------------------------------------
def _ints(value):
    if value is None or value.const_value is None:
        return None
    return [int(x) for x in np.asarray(value.const_value.numpy()).reshape(-1)]


def _slice_half(solver, node, axis: int, n: int):
    """(source value, 0 for the first half / 1 for the second) when ``node`` is a
    unit-step Slice of exactly one half of a 2n axis, else None."""
    from eeonnx.compiler.rules.shape import _slice_block

    if node is None or node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 4:
        return None
    x, y = node.inputs[0], node.outputs[0]
    axes = _ints(node.inputs[3])
    steps = _ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if x is None or x.shape is None or axes is None or len(axes) != 1 or steps != [1]:
        return None
    rank = len(x.shape)
    if axes[0] % rank != axis:
        return None
    starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
    out = y.shape[axis] if y.shape is not None else None
    block = _slice_block(2 * n, out if isinstance(out, int) else None,
                         starts[0] if starts else None, ends[0] if ends else None, 1)
    if block == (0, n):
        return x, 0
    if block == (n, 2 * n):
        return x, 1
    return None


def _only_use(value, node) -> bool:
    return not value.is_graph_output() and all(u.node is node for u in value.uses())


def composites(solver, model) -> set[int]:
    """Find every rotate_half (see the module docstring); sets ``solver.rotate_half``
    (Concat node id -> x) and returns the ids of its inner Slice/Neg nodes."""
    solver.rotate_half = {}
    inner: set[int] = set()
    an = solver.an
    for node in model.graph:
        if node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        y = node.outputs[0]
        terms = an.known(y)
        if terms is None:
            continue
        axis = int(node.attributes["axis"].value) % len(terms) if "axis" in node.attributes else None
        fs = [f for f in carriers(terms, solver.eligible) if site_axis(terms, f) == axis]
        if not fs:
            continue
        n = terms[axis].size // 2
        neg = node.inputs[0].producer() if node.inputs[0] is not None else None
        if neg is None or neg.op_type != "Neg" or not _only_use(node.inputs[0], node):
            continue
        second = _slice_half(solver, neg.inputs[0].producer(), axis, n)
        first = _slice_half(solver, node.inputs[1].producer() if node.inputs[1] is not None else None, axis, n)
        if second is None or first is None or second[1] != 1 or first[1] != 0 or second[0] is not first[0]:
            continue
        if not (_only_use(neg.inputs[0], neg) and _only_use(node.inputs[1], node)):
            continue
        solver.rotate_half[id(node)] = first[0]
        inner |= {id(neg), id(neg.inputs[0].producer()), id(node.inputs[1].producer())}
    return inner


# ---------------------------------------------------------------------------
# equal halves (cos/sin tables)
# ---------------------------------------------------------------------------
UNARY = {"Cos", "Sin", "Neg", "Identity", "Cast", "Exp", "Sqrt", "Reciprocal", "Abs", "Tanh", "Sigmoid",
         "Relu", "Erf", "Log"}
MOVES = {"Unsqueeze", "Squeeze", "Transpose", "Expand", "Reshape", "Gather", "Slice"}
ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Pow"}


def symmetric_output(solver, node, value, f: int) -> bool:
    """``value`` (an output of ``node``) has equal halves at the site of f."""
    an = solver.an
    if node.domain not in ("", "ai.onnx"):
        return False
    op = node.op_type
    if op == "Concat" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]:
        terms = an.known(value)
        axis = int(node.attributes["axis"].value) % len(terms) if "axis" in node.attributes else None
        return site_axis(terms, f) == axis
    if op in UNARY or op in MOVES:
        x = node.inputs[0]
        if op == "Gather":
            t = an.known(x)
            if t is None or site_axis(t, f) == int(node.attributes["axis"].value if "axis" in node.attributes
                                                   else 0) % len(t):
                return False
        if op == "Slice":
            t = an.known(x)
            if t is None or carriers(t, lambda _: True) & {f} == set():
                return False
            ax = _ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
            if ax is None or site_axis(t, f) in {a % len(t) for a in ax}:
                return False
        return x is not None and solver.symmetric(x, f)
    if op in ELEMENTWISE:
        ok = False
        for x in node.inputs:
            t = an.known(x) if x is not None else None
            if t is None:
                return False
            occ = {v.uid for term in t for v in _free(term)}
            if f not in occ:
                continue  # broadcast along the pair axis (size 1 there) or a scalar
            if not solver.symmetric(x, f):
                return False
            ok = True
        return ok
    return False


def _free(t):
    from eeonnx.compiler import layout as L

    return L.free_vars(t)
