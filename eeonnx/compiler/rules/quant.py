"""Quantized ops: the float op's equations, with per-axis parameters permuted alongside.

Affine quantization ``q = saturate(round(x / s) + z)`` and ``x = (q - z) * s``
is elementwise once the scale s and zero point z are broadcast to x: per-tensor
parameters are invariant under any permutation, per-axis parameters (1-D, one
per entry of ``axis``) permute with that axis, and blocked parameters (opset 21
``block_size``: one per block of ``block_size`` consecutive entries of ``axis``)
permute with the *blocks*. A blocked axis therefore has the layout
``Kron(blocks, within)``: whole blocks move together (the scales' block axis
carries ``blocks``) and every block is permuted inside by the same ``within``;
a trailing partial block stays in place. Integer arithmetic (MatMulInteger,
ConvInteger, QLinear*) sums the same products in another order: exact, since
integer addition is associative.

A parameter whose shape the rule cannot relate to the quantized tensor pins
the axis it might act on (never left unpermuted next to a permuted axis).

MatMulNBits (com.microsoft) stores B as ``[N, k_blocks, blob]`` bytes holding
``block_size`` values of ``bits`` bits per block, scales ``[N, k_blocks]`` (or
flat) and zero points packed the same way (or in the scales' type). Its K
axis is ``Kron(blocks, within)``; the permutation inside a block acts inside
the packed bytes, so B (and packed zero points) get a storage view
(compiler/storage.py) that fold repacks. ``g_idx`` (an arbitrary block per
row of K) pins K.
"""
from __future__ import annotations

import math

from eeonnx.compiler import layout as L
from eeonnx.compiler import storage as S
from eeonnx.compiler.rules import NodeView, rule
from eeonnx.compiler.rules.elementwise import broadcast
from eeonnx.compiler.rules.linear import matmul_axes
from eeonnx.compiler.rules.spatial import conv_channels

MS = "com.microsoft"
QDQ_DOMAINS = ("", MS)  # ORT's contrib QuantizeLinear/DequantizeLinear (int16, int4, older opsets)


def _numel(dims) -> int | None:
    return math.prod(dims) if all(isinstance(d, int) for d in dims) else None


def param(n: NodeView, i: int, target: list[L.Term], tdims: list, axis: int | None) -> None:
    """Scale or zero point ``i`` of a tensor (terms ``target``, dims ``tdims``)
    quantized per tensor, or per entry of ``axis`` (a 1-D parameter), or by a
    same-rank parameter broadcast to it. Anything else pins every axis of the
    tensor it could act on."""
    if not n.has(i):
        return
    p, pd = n.x(i), n.dims(i)
    if _numel(pd) == 1:
        return  # per tensor: invariant
    if axis is not None and len(pd) == 1 and -len(tdims) <= axis < len(tdims) and pd[0] == tdims[axis] \
            and isinstance(pd[0], int):
        n.unify(p[0], target[axis])
        return
    if len(pd) == len(tdims):
        for k, (a, b) in enumerate(zip(pd, tdims)):
            if a == 1 and b != 1:
                continue
            if isinstance(a, int) and a == b:
                n.unify(p[k], target[k])
            else:
                n.pin(target[k], "quantization parameter does not match the axis")
                n.pin(p[k], "quantization parameter does not match the axis")
        return
    for t in list(target) + list(p):
        n.pin(t, "quantization parameter of unexpected shape")


def blocked(n: NodeView, x: list[L.Term], xd: list, axis: int, size: int, params: list[int]) -> None:
    """Blocked parameters (same rank as x, ceil(D / size) entries on ``axis``):
    x's axis is Kron(blocks, within) (plus a trailing partial block in place)."""
    d = xd[axis]
    for i in params:
        if not n.has(i):
            continue
        p, pd = n.x(i), n.dims(i)
        if len(pd) != len(xd) or not isinstance(d, int) or pd[axis] != -(-d // size):
            for t in list(x) + list(p):
                n.pin(t, "blocked quantization parameter of unexpected shape")
            continue
        for k in range(len(xd)):
            if k != axis:
                if pd[k] == xd[k]:
                    n.unify(p[k], x[k])
                elif pd[k] != 1:
                    n.pin(x[k], "blocked quantization parameter does not match the axis")
        full, rest = divmod(d, size)
        blocks = L.fresh(full)
        if rest:
            n.unify(p[axis], L.cat(blocks, L.Public(1)))
            n.unify(x[axis], L.cat(L.kron(blocks, L.fresh(size)), L.fresh(rest)),
                    f"{n.node.op_type}: axis is not whole blocks of block_size")
        else:
            n.unify(p[axis], blocks)
            n.unify(x[axis], L.kron(blocks, L.fresh(size)),
                    f"{n.node.op_type}: axis is not whole blocks of block_size")


def _qdq(n: NodeView) -> None:
    """y = quantize(x) or dequantize(x) with scale (1) and zero point (2): elementwise
    after broadcasting per-tensor, per-axis (``axis``) or blocked (``block_size``) parameters."""
    x, y, xd = n.x(0), n.y(0), n.dims(0)
    n.tie(x, y)
    if not x:
        for i in (1, 2):
            if n.has(i):
                n.x(i)
        return
    axis = int(n.attr("axis", 1)) % len(x)
    size = int(n.attr("block_size", 0) or 0)
    if size > 0:
        blocked(n, x, xd, axis, size, [1, 2])
    else:
        param(n, 1, x, xd, axis)
        param(n, 2, x, xd, axis)


for _domain in QDQ_DOMAINS:
    rule("QuantizeLinear", domain=_domain, since=10)(_qdq)
    # the int8 input of a DequantizeLinear is a learned weight in a quantized model
    rule("DequantizeLinear", domain=_domain, since=10, mixes=True)(_qdq)


@rule("DynamicQuantizeLinear", since=11)
def dynamic_quantize(n: NodeView) -> None:
    """y = saturate(round(x / s) + z) with s, z from min/max over the whole tensor:
    permutation invariant. y follows x; the scalar scale and zero point are outputs."""
    n.tie(n.x(0), n.y(0))
    for o in (1, 2):
        if n.has_out(o):
            n.y(o)


def _rows(d: list) -> int | None:
    return -2 if len(d) >= 2 else None


@rule("MatMulInteger", since=10, mixes=True)
def matmul_integer(n: NodeView) -> None:
    """int32 (A - a_zp) @ (B - b_zp): MatMul's equations; a_zp per row of A, b_zp per column of B."""
    a, b, ad, bd = n.x(0), n.x(1), n.dims(0), n.dims(1)
    matmul_axes(n, a, b, n.y(0), ad, bd, n.out_dims(0))
    param(n, 2, a, ad, _rows(ad))
    param(n, 3, b, bd, -1)


@rule("ConvInteger", since=10, mixes=True)
def conv_integer(n: NodeView) -> None:
    """int32 Conv(x - x_zp, w - w_zp): Conv's equations; w_zp per output channel."""
    x, w, xd, wd = n.x(0), n.x(1), n.dims(0), n.dims(1)
    conv_channels(n, x, w, n.y(0), wd[0])
    param(n, 2, x, xd, None)
    param(n, 3, w, wd, 0)


@rule("QLinearConv", since=10, mixes=True)
def qlinear_conv(n: NodeView) -> None:
    """x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, B: Conv on dequantized operands, requantized;
    w's parameters per output channel, the int32 bias per output channel."""
    x, w, y = n.x(0), n.x(3), n.y(0)
    xd, wd, yd = n.dims(0), n.dims(3), n.out_dims(0)
    conv_channels(n, x, w, y, wd[0])
    for i in (1, 2):
        param(n, i, x, xd, 1)
    for i in (4, 5):
        param(n, i, w, wd, 0)
    for i in (6, 7):
        param(n, i, y, yd, 1)
    if n.has(8):
        n.unify(n.x(8)[0], y[1])


@rule("QLinearMatMul", since=10, mixes=True)
def qlinear_matmul(n: NodeView) -> None:
    """a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp: MatMul on dequantized operands, requantized;
    a's parameters per row, b's per column, y's per tensor (or per column)."""
    a, b, y = n.x(0), n.x(3), n.y(0)
    ad, bd, yd = n.dims(0), n.dims(3), n.out_dims(0)
    matmul_axes(n, a, b, y, ad, bd, yd)
    for i in (1, 2):
        param(n, i, a, ad, _rows(ad))
    for i in (4, 5):
        param(n, i, b, bd, -1)
    for i in (6, 7):
        param(n, i, y, yd, -1)


@rule("DynamicQuantizeMatMul", domain=MS, mixes=True)
def dynamic_quantize_matmul(n: NodeView) -> None:
    """A (float, quantized per tensor inside), B int8, b_scale, b_zp per column, bias [N]."""
    a, b, y = n.x(0), n.x(1), n.y(0)
    bd = n.dims(1)
    matmul_axes(n, a, b, y, n.dims(0), bd, n.out_dims(0))
    param(n, 2, b, bd, -1)
    param(n, 3, b, bd, -1)
    if n.has(4):
        n.unify(n.x(4)[0], y[-1])


@rule("MatMulIntegerToFloat", domain=MS, mixes=True)
def matmul_integer_to_float(n: NodeView) -> None:
    """A, B, a_scale, b_scale, a_zp, b_zp, bias: MatMulInteger then scaled to float (+ bias [N])."""
    a, b, y = n.x(0), n.x(1), n.y(0)
    ad, bd = n.dims(0), n.dims(1)
    matmul_axes(n, a, b, y, ad, bd, n.out_dims(0))
    for i in (2, 4):
        param(n, i, a, ad, _rows(ad))
    for i in (3, 5):
        param(n, i, b, bd, -1)
    if n.has(6):
        n.unify(n.x(6)[0], y[-1])


@rule("QGemm", domain=MS, mixes=True)
def qgemm(n: NodeView) -> None:
    """A, a_s, a_zp, B, b_s, b_zp, C, y_s, y_zp: Gemm on dequantized operands;
    b's parameters per column of op(B) (N), C broadcast to Y."""
    a, b, y = n.x(0), n.x(3), n.y(0)
    ad, bd = n.dims(0), n.dims(3)
    ta, tb = int(n.attr("transA", 0)), int(n.attr("transB", 0))
    am, ak = (a[1], a[0]) if ta else (a[0], a[1])
    bk, bn = (b[1], b[0]) if tb else (b[0], b[1])
    n.unify(ak, bk)
    n.unify(am, y[0])
    n.unify(bn, y[1])
    for i in (1, 2):
        param(n, i, a, ad, None)
    for i in (4, 5):
        param(n, i, b, bd, 0 if tb else 1)
    if n.has(6):
        broadcast(n, [6])
    for i in (7, 8):
        param(n, i, y, n.out_dims(0), None)


# --------------------------------------------------------------------------
# MatMulNBits
# --------------------------------------------------------------------------
def _nbits_params(n: NodeView, i: int, nt: L.Term, blocks: L.Term, nn: int, kb: int, bits: int, packed: bool) -> None:
    """Scales (packed=False) or zero points: [N, k_blocks] / [N * k_blocks] in the
    scales' type, or uint8 packed ``bits`` per value, per row ([N, ceil(kb*bits/8)])
    or over the flat array ([ceil(N*kb*bits/8)])."""
    if not n.has(i):
        return
    d = n.dims(i)
    if not packed:
        p = n.x(i)
        if d == [nn, kb]:
            n.unify(p[0], nt)
            if isinstance(L.resolve(blocks), L.Public):
                n.public(p[1])  # one whole block (and a partial one): nothing moves
            else:
                n.unify(p[1], blocks)
        elif d == [nn * kb]:
            n.unify(p[0], L.kron(nt, blocks))
        else:
            for t in [nt, blocks, *p]:
                n.pin(t, "MatMulNBits: scales of unexpected shape")
        return
    per_byte = 8 // bits
    logical = (nn, kb)
    if len(d) == 2 and d[0] == nn and d[1] == -(-kb // per_byte):
        view = S.packed_view(d, logical, [nt, blocks], bits, rows=nn)
    elif len(d) == 1 and d[0] == -(-(nn * kb) // per_byte):
        view = S.packed_view(d, logical, [nt, blocks], bits, rows=1)
    else:
        view = None
    if view is None:
        n.x(i)
        n.pin(nt, "MatMulNBits: zero points of unexpected shape")
        n.pin(blocks, "MatMulNBits: zero points of unexpected shape")
        return
    n.storage(i, view)


@rule("MatMulNBits", domain=MS, mixes=True)
def matmul_nbits(n: NodeView) -> None:
    """Y[..., N] = A[..., K] @ dequant(B)^T (+ bias[N]). N is free; K is
    Kron(blocks, within) (plus a trailing partial block, permuted inside and kept
    last): blocks move with the scales' and zero points' block axis, ``within``
    permutes inside every block (inside the packed bytes)."""
    a, y = n.x(0), n.y(0)
    ad, yd = n.dims(0), n.out_dims(0)
    nn, kk = int(n.attr("N")), int(n.attr("K"))
    bits, size = int(n.attr("bits", 4)), int(n.attr("block_size"))
    kb = -(-kk // size)
    full, rest = divmod(kk, size)
    n.tie(a[:-1], y[:-1])
    nt = L.fresh(nn)
    n.unify(y[-1], nt)
    fb, within, tail = L.fresh(full), L.fresh(size), L.fresh(rest)
    blocks = L.cat(fb, L.Public(1)) if rest else fb
    k_term = L.cat(L.kron(fb, within), tail) if full else tail
    padded = L.cat(k_term, L.Public(kb * size - kk)) if rest else k_term  # B's K with its padding
    reason = None
    g_idx = n.const(4) if n.has(4) else None
    if ad[-1] != kk or yd[-1] != nn:
        reason = "A or Y does not match the K and N attributes"
    elif n.has(4) and (g_idx is None or not (g_idx.reshape(-1) == [k // size for k in range(kk)]).all()):
        reason = "g_idx assigns rows of K to blocks out of order"
    elif 8 % bits:
        reason = f"{bits}-bit values do not pack whole into bytes"
    if n.has(4):
        n.x(4)  # g_idx: in block order (checked) or K pinned; its values are block numbers
    view = None
    if reason is None:
        view = S.packed_view(n.dims(1), (nn, kb * size), [nt, padded], bits, rows=nn * kb)
        if view is None:
            reason = "B of unexpected shape"
    if reason is None:
        n.unify(a[-1], k_term, "MatMulNBits: K is not whole blocks of block_size")
        n.storage(1, view)
    else:
        for t in (a[-1], fb, within, tail, nt):
            n.pin(t, reason)
        n.x(1)
    _nbits_params(n, 2, nt, blocks, nn, kb, bits, packed=False)
    if n.has(3):
        zp_packed = n.node.inputs[3].dtype is not None and n.node.inputs[3].dtype.is_integer()
        _nbits_params(n, 3, nt, blocks, nn, kb, bits, packed=zp_packed)
    if n.has(5):
        n.unify(n.x(5)[0], nt)
