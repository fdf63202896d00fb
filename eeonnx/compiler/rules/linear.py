"""Linear layers: Gemm and MatMul absorb permutations on both sides.

MatMul is ``...mk,...kn->...mn``: k is summed (both operands carry the same
permutation there), m and n follow the output, batch axes broadcast. With
one operand a weight, this is ``W' = P_out W P_in^T`` folded into the weight.
"""
from __future__ import annotations

from eeonnx.compiler.rules import NodeView, rule
from eeonnx.compiler.rules.elementwise import broadcast


@rule("Gemm", mixes=True)
def gemm(n: NodeView) -> None:
    """Y = alpha * A' B' + beta * C, A' = A or A^T, B' = B or B^T; C broadcast to Y."""
    a, b, y = n.x(0), n.x(1), n.y(0)
    am, ak = (a[1], a[0]) if n.attr("transA", 0) else (a[0], a[1])
    bk, bn = (b[1], b[0]) if n.attr("transB", 0) else (b[0], b[1])
    n.unify(ak, bk)
    n.unify(am, y[0])
    n.unify(bn, y[1])
    if n.has(2):
        broadcast(n, [2])


@rule("MatMul", mixes=True)
def matmul(n: NodeView) -> None:
    """numpy matmul semantics, 1-D operands included."""
    matmul_axes(n, n.x(0), n.x(1), n.y(0), n.dims(0), n.dims(1), n.out_dims(0))


def matmul_axes(n: NodeView, a, b, y, ad, bd, yd) -> None:
    """The equations of MatMul on its data (terms and dims of A, B, Y): shared by
    MatMul and the quantized matmuls."""
    a_m = a[-2] if len(a) >= 2 else None
    b_n = b[-1] if len(b) >= 2 else None
    a_k = a[-1]
    b_k = b[-2] if len(b) >= 2 else b[0]
    n.unify(a_k, b_k)
    tail = (a_m is not None) + (b_n is not None)
    y_batch, yb_dims = y[: len(y) - tail], yd[: len(y) - tail]
    if a_m is not None:
        n.unify(a_m, y[len(y) - tail])
    if b_n is not None:
        n.unify(b_n, y[-1])
    for terms, dims in ((a[:-2], ad[:-2]), (b[:-2], bd[:-2])):
        off = len(y_batch) - len(terms)
        for k, t in enumerate(terms):
            if dims[k] == 1 and yb_dims[off + k] != 1:
                continue
            n.unify(t, y_batch[off + k])


def _einsum_terms(spec: str, rank: int) -> list[str]:
    """Axis letters of one operand, with '...' expanded to numbered batch letters."""
    if "..." not in spec:
        return list(spec)
    head, tail = spec.split("...")
    n_ell = rank - len(head) - len(tail)
    return list(head) + [f"...{k}" for k in range(n_ell)] + list(tail)


@rule("Einsum", mixes=True)
def einsum(n: NodeView) -> None:
    """Every letter is one axis class: all axes with the same letter are tied.

    Summed letters carry the same permutation in every operand (a contraction
    is invariant to it); a letter repeated inside one operand (a diagonal)
    ties those axes together too. Ellipsis axes align from the right.
    """
    eq = n.attr("equation")
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    specs = lhs.split(",")
    letters: dict[str, object] = {}
    max_ell = 0
    operands = []
    for i, spec in enumerate(specs):
        x, d = n.x(i), n.dims(i)
        names = _einsum_terms(spec, len(x))
        n_ell = sum(1 for s in names if s.startswith("..."))
        max_ell = max(max_ell, n_ell)
        operands.append((x, d, names, n_ell))
    for x, d, names, n_ell in operands:
        for t, size, name in zip(x, d, names):
            if name.startswith("..."):
                # right-align ellipsis axes across operands
                name = f"...{int(name[3:]) + max_ell - n_ell}"
                if size == 1 and max_ell > 0:
                    continue  # broadcast
            if name in letters:
                n.unify(letters[name], t)
            else:
                letters[name] = t
    if not rhs and "->" not in eq:
        rhs = "".join(sorted(c for c in set(lhs.replace(",", "").replace(".", "")) if lhs.count(c) == 1))
        if "..." in lhs:
            rhs = "..." + rhs
    y = n.y(0)
    for t, name in zip(y, _einsum_terms(rhs, len(y))):
        if name.startswith("..."):
            name = f"...{int(name[3:]) + max_ell - (len(y) - len(rhs.replace('...', '')))}"
        if name in letters:
            n.unify(letters[name], t)
        else:
            n.public(t)
