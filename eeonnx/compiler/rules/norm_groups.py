"""Group statements for normalisations, squares and per-element gains: orthogonal streams.

A residual stream read by LayerNorm or RMSNorm admits an orthogonal map Q on
its hidden axis (x -> x Q), not just a permutation, once the norm's gain is
out of the way:

- LayerNorm without gain and bias: with Q 1 = 1 (so 1^T Q = 1^T), the mean
  x 1/d and the centred x - m 1^T = (x - m 1^T) Q... are equivariant, the
  variance (and eps) invariant: LN(x Q) = LN(x) Q (group ORTHO_ONES).
- RMSNorm without gain: mean(x^2) is invariant under any orthogonal Q:
  RMS(x Q) = RMS(x) Q (ORTHOGONAL; eps untouched, no scale c: c^2 eps would
  show in the graph or its constants).
- The gain gamma does not commute with Q. Where it is uniform (all elements
  equal: a scalar) it stays; otherwise it is *moved* into the consumers of
  the norm's output: LN(x; gamma, beta) W = (LN(x; 1, beta/gamma)) (diag(gamma) W),
  so the server's norm gets ones for gamma, beta/gamma for beta, and every
  consumer weight its rows scaled by gamma (``GainFold``; fold.py applies it
  in float64, before the class maps). The consumers must all be contractions
  against weights read by nothing else (MatMul/Gemm, through shape-only moves
  and bias Adds, which take beta/gamma too); otherwise the norm keeps its
  permutation-safe statement (input permuted only, output diagonal).

Decomposed norms need no pattern: their ops' general statements compose.
``x^2`` (Pow 2 or Mul(x, x)) read only by sums/means over a class: the sum
of squares is invariant under any orthogonal map (ORTHOGONAL); a sum/mean
over a class is invariant under ORTHO_ONES (group_rules ``_sum``); adding a
tensor broadcast along the class commutes with ORTHO_ONES (``additive``);
a per-element product with a constant gain is LINEAR once the gain is moved
(``_mul`` below) or uniform, else DIAGONAL.

Soundness: each statement holds for every element of the group it names;
the fused norm statement is only made when the gain is uniform or movable,
and the transforms pass falls back to the permutation-safe statement
(``Solver.fallback``) for a norm whose stream ends up untransformed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler.rules.group_rules import group_rule, move, multilinear, norm_affine

#: shape-only ops a moved gain passes through, its class axis kept whole
_PASS = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
_SUMS = ("ReduceMean", "ReduceSum")


@dataclass
class GainFold:
    """gamma (a per-element gain on class ``uid``) moved into the consumers: gamma
    becomes ones, each bias in ``divide`` is divided by it, each weight in
    ``weights`` multiplied by it, along the axis given (plain indices). Applied
    when ``trigger`` (the relation node of the product) has a non-zero exponent."""

    gamma: ir.Value
    gain: np.ndarray
    trigger: tuple
    divide: list = field(default_factory=list)
    weights: list = field(default_factory=list)

    def record(self, prefold: dict) -> None:
        prefold.setdefault(self.gamma, []).append(("ones", None, 0))
        for value, axis in self.divide:
            prefold.setdefault(value, []).append(("div", self.gain, axis))
        for value, axis in self.weights:
            prefold.setdefault(value, []).append(("mul", self.gain, axis))


def apply_prefold(array: np.ndarray, ops: list) -> np.ndarray:
    """``array`` (float64, plain indices) rewritten by a GainFold's ops."""
    for op, vec, axis in ops:
        if op == "ones":
            array = np.ones_like(array)
            continue
        shape = [1] * array.ndim
        shape[axis] = -1
        array = array / vec.reshape(shape) if op == "div" else array * vec.reshape(shape)
    return array


def _class_axis(solver, value: ir.Value, uid: int) -> int | None:
    """The one axis of ``value`` whose layout is exactly the class ``uid`` (the class
    occurring nowhere else in it), else None."""
    terms = solver.an.known(value)
    if terms is None:
        return None
    hits = [a for a, t in enumerate(terms) if uid in G.occurrences(t)]
    if len(hits) != 1:
        return None
    t = L.resolve(terms[hits[0]])
    if not isinstance(t, L.Var) or t.uid != uid or G.occurrences(t)[uid] != 1:
        return None
    return hits[0]


def _exclusive(solver, value: ir.Value | None) -> bool:
    """An initializer read by one node only, that a gain fold may rewrite exactly."""
    return (value is not None and value.is_initializer() and value.const_value is not None
            and value not in solver.an.uniform_shared and value.name not in solver.tied
            and value not in solver.claimed and value not in solver.graph_outputs
            and len(solver.consumers.get(value, [])) == 1 and solver._exact(value))


def _sinks(solver, value: ir.Value, uid: int, fold: GainFold, depth: int = 0) -> bool:
    """Every reader of ``value`` can absorb a gain on its class axis ``uid``."""
    if value in solver.graph_outputs or depth > 16:
        return False
    for node, i in solver.consumers.get(value, []):
        if node.domain not in ("", "ai.onnx"):
            return False
        op = node.op_type
        if op in ("MatMul", "Gemm") and i == 0:
            if op == "Gemm" and node.attributes.get("transA") is not None and node.attributes["transA"].value:
                return False
            w = node.inputs[1]
            if not _exclusive(solver, w):
                return False
            axis = _class_axis(solver, w, uid)
            rank = len(w.shape) if w.shape is not None else 0
            trans_b = op == "Gemm" and node.attributes.get("transB") is not None and node.attributes["transB"].value
            want = (1 if trans_b else 0) if op == "Gemm" else rank - 2
            if axis is None or rank < 2 or axis != want:
                return False
            fold.weights.append((w, axis))
        elif op in _PASS and i == 0:
            if _class_axis(solver, node.outputs[0], uid) is None or not _sinks(solver, node.outputs[0], uid, fold, depth + 1):
                return False
        elif op == "Add" and i in (0, 1) and len(node.inputs) == 2:
            bias = node.inputs[1 - i]
            axis = _class_axis(solver, bias, uid) if bias is not None else None
            if axis is None or not _exclusive(solver, bias):
                return False
            fold.divide.append((bias, axis))
            if not _sinks(solver, node.outputs[0], uid, fold, depth + 1):
                return False
        else:
            return False
    return True


def gain_fold(v, gamma: ir.Value, uid: int, product: ir.Value, trigger, biases=()) -> GainFold | None:
    """A GainFold moving ``gamma`` (multiplied into ``product`` on class ``uid``) into
    the consumers of ``product``, or None where some consumer cannot take it."""
    s = v.solver
    axis = _class_axis(s, gamma, uid)
    if axis is None or not _exclusive(s, gamma) or any(d != 1 for k, d in enumerate(gamma.shape) if k != axis):
        return None
    gain = gamma.const_value.numpy().astype(np.float64).reshape(-1)
    if not np.all(np.isfinite(gain)) or np.any(gain == 0):
        return None
    fold = GainFold(gamma, gain, trigger)
    for b in biases:
        if b is None:
            continue
        baxis = _class_axis(s, b, uid)
        if baxis is None or not _exclusive(s, b):
            return None
        fold.divide.append((b, baxis))
    if not _sinks(s, product, uid, fold):
        return None
    s.claimed.update([gamma] + [b for b, _ in fold.divide] + [w for w, _ in fold.weights])
    s.gain_folds.append(fold)
    return fold


def norm_stream(v, group: G.Group, bias: int | None, gain: int = 1, summands=(), sums=()) -> bool:
    """Fused norm over the last axis, X's class there carried to Y under ``group``
    (gain uniform, or moved into the consumers). ``summands``: further inputs added
    to X before the norm (SkipLayerNormalization's skip and bias), ``sums``: outputs
    holding that sum (equal exponents, LINEAR). False where it does not apply."""
    node = v.node
    if id(node) in v.solver.fallback:
        return False
    x, g, y = v.inp(0), v.inp(gain), v.out(0)
    b = v.inp(bias) if bias is not None else None
    if x is None or g is None or y is None or not x.terms:
        return False
    rank = len(x.terms)
    if int(v.attr("axis", -1)) % rank != rank - 1:
        return False
    t = L.resolve(x.terms[-1])
    if not isinstance(t, L.Var) or t.uid not in x.vars or t.uid not in y.vars:
        return False
    uid = t.uid
    if any(uid in G.occurrences(u) for u in x.terms[:-1]):
        return False
    extra = [v.inp(i) for i in summands if v.inp(i) is not None] + [v.out(k) for k in sums if v.out(k) is not None]
    if any(uid not in o.vars for o in extra):
        return False
    if not g.uniform:
        biases = [node.inputs[bias]] if b is not None else []
        if gain_fold(v, node.inputs[gain], uid, node.outputs[0], y.vars[uid], biases) is None:
            return False
    for o in extra:
        v.relate(o.vars[uid], x.vars[uid], 1, G.LINEAR)
    v.relate(x.vars[uid], y.vars[uid], 1, group)
    if uid in g.vars:
        v.zero(g.vars[uid])  # uniform, or ones after the fold: permuted only
    if b is not None:
        if uid in b.vars:
            v.relate(b.vars[uid], y.vars[uid], 1, G.LINEAR)
        else:
            v.zero(y.vars[uid])
    v.solver.ortho_norms.append((id(node), y.vars[uid]))
    return True


@group_rule("LayerNormalization")
def _layernorm(v) -> None:
    """Y = (X - mean) / sqrt(var + eps) * scale + B over the last axis: X and Y one
    orthogonal map fixing ones (scale uniform or moved). Otherwise (and on the
    solver's fallback) X permuted only, Y a diagonal on scale and B. Statistics
    outputs are left uncovered (permuted only)."""
    bias = 2 if v.inp(2) is not None else None
    if not norm_stream(v, G.ORTHO_ONES, bias):
        norm_affine(v, 1, bias)


@group_rule("SimplifiedLayerNormalization", "RMSNormalization")
def _rmsnorm(v) -> None:
    """Y = X / sqrt(mean(X^2) + eps) * scale (RMSNorm; ONNX RMSNormalization, opset 23):
    X and Y one orthogonal map (scale uniform or moved), else as LayerNorm."""
    if not norm_stream(v, G.ORTHOGONAL, None):
        norm_affine(v, 1, None)


MS = "com.microsoft"


@group_rule("SkipLayerNormalization", domain=MS)
def _skip_layernorm(v) -> None:
    """Y = LayerNorm(input + skip + bias) * gamma + beta (inputs 0, 1, 4; gamma 2, beta 3),
    output 3 the sum: the sum's terms and output 3 equal, Y as LayerNormalization.
    Otherwise Y a diagonal on gamma/beta, everything else permuted only."""
    beta = 3 if v.inp(3) is not None else None
    if not norm_stream(v, G.ORTHO_ONES, beta, gain=2, summands=(1, 4), sums=(3,)):
        norm_affine(v, 2, beta)


@group_rule("SkipSimplifiedLayerNormalization", domain=MS)
def _skip_rmsnorm(v) -> None:
    """Y = RMSNorm(input + skip + bias) * gamma (inputs 0, 1, 3; gamma 2), output 3 the sum."""
    if not norm_stream(v, G.ORTHOGONAL, None, gain=2, summands=(1, 3), sums=(3,)):
        norm_affine(v, 2, None)


def square(v, x, y) -> None:
    """y = x * x elementwise. A class of x that every reader of y sums over (ReduceSum/
    ReduceMean removing it) may take any orthogonal map: sum_c (x Q)_c^2 = sum_c x_c^2.
    Every other class of x, and y itself (read only by those sums), are permuted only."""
    s = v.solver
    value = v.node.outputs[0]
    readers = s.consumers.get(value, [])
    ok = bool(readers) and value not in s.graph_outputs and all(
        n.op_type in _SUMS and n.domain in ("", "ai.onnx") and i == 0 for n, i in readers)
    for uid, xk in x.vars.items():
        summed = ok and all(uid not in _uids(s.an.known(n.outputs[0])) for n, _ in readers)
        if summed and uid in y.vars:
            v.limit(xk, G.ORTHOGONAL)
        else:
            v.zero(xk)
    v.zero(*y.vars.values())


def _uids(terms) -> set:
    """Every class uid in ``terms``; None (unknown layout) counts as every class."""
    if terms is None:
        return _EVERY
    out: dict = {}
    for t in terms:
        G.occurrences(t, out)
    return set(out)


class _Every(set):
    def __contains__(self, item) -> bool:
        return True


_EVERY = _Every()


def _const_scalar(value: ir.Value | None):
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    return float(value.const_value.numpy().reshape(-1)[0])


@group_rule("Pow")
def _pow(v) -> None:
    """x^2 read only by sums over its class: see ``square``; any other power: permutations."""
    x, y = v.inp(0), v.out(0)
    if x is not None and y is not None and _const_scalar(v.node.inputs[1]) == 2.0:
        square(v, x, y)


@group_rule("Mul")
def _mul(v) -> None:
    """Mul(x, x): a square (``square``). Mul by a constant gain carrying one class on
    its only non-unit axis, whose product is read only by contractions: the gain is
    moved into them (GainFold) and the product is LINEAR in the other factor.
    Otherwise the general product statement (group_rules ``multilinear``)."""
    a, b = v.node.inputs[0], v.node.inputs[1]
    if a is not None and a is b:
        x, y = v.inp(0), v.out(0)
        if x is not None and y is not None:
            square(v, x, y)
        return
    movable = ()
    y = v.out(0)
    for k in (0, 1):
        g, z = v.inp(k), v.inp(1 - k)
        if g is None or z is None or y is None or not g.free or z.free or g.uniform or len(g.vars) != 1:
            continue
        uid = next(iter(g.vars))
        if uid not in z.vars or uid not in y.vars or v.is_zero(z.vars[uid]):
            continue
        if gain_fold(v, v.node.inputs[k], uid, v.node.outputs[0], y.vars[uid]) is not None:
            movable = (k,)
            break
    multilinear(v, mult=(0, 1), movable=movable)


@group_rule("ReduceL2")
def _l2(v) -> None:
    """sqrt(sum of squares): invariant under any orthogonal map of a reduced class;
    positively homogeneous in a kept class (DIAGONAL)."""
    move(v, G.DIAGONAL, reduced=G.ORTHOGONAL)


@group_rule("ReduceSumSquare")
def _sumsquare(v) -> None:
    """sum of squares: invariant under any orthogonal map of a reduced class; kept
    classes are squared (permutations only)."""
    move(v, None, reduced=G.ORTHOGONAL)
