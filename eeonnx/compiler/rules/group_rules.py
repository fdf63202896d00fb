"""Per-op group statements: which exponent relations make an op commute, and under which group.

Each entry states, for the secret classes on a node's operands, relations
between their exponents (see ``eeonnx.compiler.groups``) and the largest
group under which the op commutes given them. Anything a statement does not
cover gets exponent 0 (permuted only): an op that is not listed here
commutes with permutations only, which is always exact.

Why each group:
- LINEAR: the op is linear in the operand along that class's axis (MatMul,
  Gemm, Conv, Einsum contractions; Add/Sub of equally transformed tensors;
  moves such as Reshape/Transpose/Concat/Split/Slice/Gather's other axes;
  sums and means over other axes), so any invertible map commutes with it.
- DIAGONAL: the op is positively homogeneous elementwise along the class
  (ReLU, LeakyReLU, PReLU with its slope unscaled, Max/Min, MaxPool,
  ReduceMax), or multiplies by a per-element vector of the same class
  (a constant operand carrying the class is then only permuted), or divides
  by a transformed tensor; a normalisation's output (BatchNormalization,
  LayerNormalization, RMSNorm, decomposed or fused) takes the scale on its
  gain/bias (its input and statistics stay unscaled: eps cannot follow a
  per-channel scale) where the norm cannot take the orthogonal statement.
- ORTHO_ONES: a sum or mean over the class (x Q 1 = x 1), adding a tensor
  broadcast along the class ((x + c 1^T) Q = x Q + c 1^T), LayerNorm with its
  gain uniform or moved into the consumers (rules/norm_groups.py).
- ORTHOGONAL: a sum of squares over the class (x^2 read only by sums,
  ReduceL2, ReduceSumSquare), RMSNorm likewise (rules/norm_groups.py).
- Everything else (GELU, sigmoid, tanh, softmax, other Pow, Where, other
  Cast, quantization ops, fused contrib ops...) is not listed: permutation.
"""
from __future__ import annotations

from typing import Callable

import onnx_ir as ir

from eeonnx.compiler.groups import DIAGONAL, LINEAR, ORTHO_ONES, Group, meet

GROUP_RULES: dict[str, Callable] = {}


def group_rule(*op_types: str, domain: str = ""):
    """Register a statement for ops of the default domain (keyed by op type) or of
    ``domain`` (keyed by (domain, op type))."""

    def deco(fn):
        for op in op_types:
            GROUP_RULES[op if domain in ("", "ai.onnx") else (domain, op)] = fn
        return fn

    return deco


def lookup(node) -> Callable | None:
    if node.domain not in ("", "ai.onnx"):
        return GROUP_RULES.get((node.domain, node.op_type))
    return GROUP_RULES.get(node.op_type)


def _bad(v, uid, operands) -> bool:
    """The class occurs more than once in some operand (a diagonal, a square
    weight on one class): its exponent there is not one number."""
    return any(o is not None and uid in o.all and uid not in o.vars for o in operands)


def move(v, group: Group | None, inputs=(0,), outputs=None, drops=False, reduced: Group | None = None) -> None:
    """Outputs' elements are the inputs' elements (or a positively homogeneous
    / linear function of those at the same class index): equal exponents
    (``group`` None: kept classes get 0). A class of an input that reaches no
    output is reduced over: exponent 0, or, with ``reduced``, any exponent under
    that group (the reduction is invariant under it: a sum over a class is
    invariant under orthogonal maps fixing the ones vector); unless ``drops``:
    its elements are left out, not combined (Slice)."""
    ins = [o for o in (v.inp(i) for i in inputs) if o is not None]
    outs = [o for o in (v.out(k) for k in (outputs if outputs is not None else range(v.n_out))) if o is not None]
    for y in outs:
        for uid, yk in y.vars.items():
            carriers = [x.vars[uid] for x in ins if uid in x.vars]
            if not carriers or group is None or _bad(v, uid, ins + outs):
                v.zero(yk, *carriers)
                continue
            for xk in carriers:
                v.relate(yk, xk, 1, group)
    for x in ins:
        for uid, xk in x.vars.items():
            if not any(uid in y.all for y in outs):
                if drops:
                    v.covered.add(xk)
                elif reduced is not None and not _bad(v, uid, ins + outs):
                    v.limit(xk, reduced)
                else:
                    v.zero(xk)


def additive(v, group: Group, broadcast: Group | None = None) -> None:
    """Y = f(A, B, ...) with f commuting with one transform applied to all
    operands (sums, max/min). An operand broadcast along the class (constant
    along it: c 1^T) forbids it, unless ``broadcast``: a sum commutes with any
    T with 1^T T = 1^T (orthogonal fixing ones: (x + c 1^T) T = x T + c 1^T)."""
    ins = [o for o in (v.inp(i) for i in range(v.n_in)) if o is not None]
    y = v.out(0)
    if y is None:
        return
    for uid, yk in y.vars.items():
        carriers = [x.vars[uid] for x in ins if uid in x.vars]
        if not carriers or (len(carriers) < len(ins) and broadcast is None) or _bad(v, uid, ins + [y]):
            v.zero(yk, *carriers)
            continue
        g = group if len(carriers) == len(ins) else meet(group, broadcast)
        for xk in carriers:
            v.relate(yk, xk, 1, g)


def multilinear(v, mult=(0, 1), add=(), inv=(), movable=()) -> None:
    """Y = prod(mult operands) / prod(inv operands) (+ add operands), contracting
    classes that are absent from Y.

    Per class: carried by one factor -> Y follows it (LINEAR for a factor,
    DIAGONAL for a divisor); by two factors and kept in Y (a per-element
    product) -> one of them must be a constant, which stays unscaled
    (DIAGONAL; LINEAR if its elements are all equal (a scalar) or equal along
    the class (an Expand of a size-1 axis: ``Solver.uniform_along``), or if it is in
    ``movable``: input indices of gains the caller moves into the consumers,
    leaving ones); contracted between two factors -> opposite exponents
    (LINEAR); anything else -> 0. Added operands carry Y's transform (LINEAR)."""
    y = v.out(0)
    if y is None:
        return
    moved = [v.inp(i) for i in movable]
    factors = [(o, 1) for o in (v.inp(i) for i in mult) if o is not None]
    factors += [(o, -1) for o in (v.inp(i) for i in inv) if o is not None]
    adds = [o for o in (v.inp(i) for i in add) if o is not None]
    everyone = [o for o, _ in factors] + adds + [y]
    uids = set(y.all).union(*(o.all for o in everyone))
    for uid in uids:
        carriers = [(o, o.vars[uid], s) for o, s in factors if uid in o.vars]
        keys = [k for _, k, _ in carriers] + [a.vars[uid] for a in adds if uid in a.vars]
        if uid in y.vars:
            keys.append(y.vars[uid])
        if _bad(v, uid, everyone):
            v.zero(*keys)
            continue
        if uid in y.vars:
            yk = y.vars[uid]
            if len(carriers) == 1:
                _, k, s = carriers[0]
                v.relate(yk, k, s, LINEAR if s == 1 else DIAGONAL)
            elif len(carriers) == 2 and any(o.free or v.is_zero(k) for o, k, _ in carriers):
                # one factor stays unscaled: a constant, or a tensor already known to be
                # permuted only (a gate behind a sigmoid: SwiGLU scales `up`, never the gate)
                const = next(c for c in carriers if c[0].free or v.is_zero(c[1]))
                other = next(c for c in carriers if c is not const)
                scalar = (const[0].uniform or any(const[0] is m for m in moved)
                          or v.solver.uniform_along(const[0].value, uid))
                v.zero(const[1])
                v.relate(yk, other[1], other[2], LINEAR if scalar else DIAGONAL)
            else:
                v.zero(*keys)
                continue
            for a in adds:
                if uid in a.vars:
                    v.relate(a.vars[uid], yk, 1, LINEAR)
                else:
                    v.zero(yk)
        else:
            if len(carriers) == 2 and all(s == 1 for _, _, s in carriers):
                v.relate(carriers[0][1], carriers[1][1], -1, LINEAR)
            else:
                v.zero(*keys)


@group_rule("MatMul")
def _matmul(v) -> None:
    multilinear(v, mult=(0, 1))


@group_rule("Einsum")
def _einsum(v) -> None:
    multilinear(v, mult=tuple(range(v.n_in)))


@group_rule("Gemm", "Conv")
def _gemm(v) -> None:
    """Gemm: alpha A'B' + beta C; Conv: X * W + B (channels only; spatial axes are public)."""
    multilinear(v, mult=(0, 1), add=(2,))


@group_rule("Div")
def _div(v) -> None:
    multilinear(v, mult=(0,), inv=(1,))


@group_rule("Add", "Sub", "Sum", "Mean")
def _add(v) -> None:
    additive(v, LINEAR, broadcast=ORTHO_ONES)


@group_rule("Max", "Min")
def _maxmin(v) -> None:
    additive(v, DIAGONAL)


@group_rule("Identity", "Neg", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand",
            "Split", "AveragePool", "GlobalAveragePool")
def _linear_move(v) -> None:
    """Data input 0 (its other inputs are shapes, axes, bounds: integers)."""
    move(v, LINEAR)


@group_rule("ReduceMean", "ReduceSum")
def _sum(v) -> None:
    """Linear on the kept classes; a reduced class: the sum x T 1 = x 1 is invariant
    when T fixes the ones vector (ORTHO_ONES)."""
    move(v, LINEAR, reduced=ORTHO_ONES)


@group_rule("Slice")
def _slice(v) -> None:
    """A block of input 0: the classes of the blocks cut away are not combined into anything."""
    move(v, LINEAR, drops=True)


@group_rule("Concat")
def _concat(v) -> None:
    move(v, LINEAR, inputs=tuple(range(v.n_in)))


@group_rule("Dropout")
def _dropout(v) -> None:
    move(v, LINEAR, outputs=(0,))


@group_rule("Relu", "LeakyRelu", "PRelu", "Abs", "GlobalMaxPool", "ReduceMax", "ReduceMin")
def _homogeneous(v) -> None:
    """Positively homogeneous; PRelu's slope (input 1) is left uncovered: permuted only."""
    move(v, DIAGONAL)


@group_rule("MaxPool")
def _maxpool(v) -> None:
    move(v, DIAGONAL, outputs=(0,))


def norm_affine(v, scale: int = 1, bias: int | None = 2) -> None:
    """Y = normalize(X) * scale + bias: X (and any statistics) stay unscaled, since
    a normalisation's eps cannot follow a per-element scale; Y takes a positive
    diagonal carried by scale and bias (DIAGONAL). Classes of Y that scale does
    not carry (the rows being normalised) get 0."""
    y, g = v.out(0), v.inp(scale)
    b = v.inp(bias) if bias is not None else None
    if y is None or g is None:
        return
    for uid, yk in y.vars.items():
        if uid in g.vars and (b is None or uid in b.vars):
            v.relate(g.vars[uid], yk, 1, DIAGONAL)
            if b is not None:
                v.relate(b.vars[uid], yk, 1, DIAGONAL)


@group_rule("Cast")
def _cast(v) -> None:
    """A float cast that keeps or widens the precision (float32 -> float32/float64)
    changes no value: a move; any other cast rounds or truncates: permutations only."""
    x, y = v.node.inputs[0], v.node.outputs[0]
    if x is None or x.dtype is None or y.dtype is None:
        return
    same = x.dtype == y.dtype and x.dtype.is_floating_point()
    if same or (x.dtype == ir.DataType.FLOAT and y.dtype == ir.DataType.DOUBLE):
        move(v, LINEAR)


@group_rule("BatchNormalization")
def _batchnorm(v) -> None:
    """Inference form only (one output): Y = gamma (X - mean) / sqrt(var + eps) + beta;
    mean and var (inputs 3, 4) stay unscaled."""
    if v.n_out == 1:
        norm_affine(v)


@group_rule("InstanceNormalization")
def _instancenorm(v) -> None:
    """Y = (X - mean) / sqrt(var + eps) * scale + B over the spatial axes: X permuted only."""
    norm_affine(v, 1, 2)


@group_rule("Gather")
def _gather(v) -> None:
    """The data's other axes pass through (LINEAR); the gathered axis and the indices do not."""
    data, y = v.inp(0), v.out(0)
    if data is None or y is None:
        return
    axis = int(v.attr("axis", 0)) % len(data.terms)
    at_axis = set(data.uids_at(axis))
    for uid, yk in y.vars.items():
        if uid in data.vars and uid not in at_axis:
            v.relate(yk, data.vars[uid], 1, LINEAR)


@group_rule("Shape", "Size", "EyeLike")
def _shape(v) -> None:
    """Reads only the dims of input 0."""
    v.passive(0)


# the norms, squares and per-element gains (orthogonal streams): their own module
from eeonnx.compiler.rules import norm_groups  # noqa: E402,F401
