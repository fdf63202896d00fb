"""com.microsoft contrib ops emitted by onnxruntime's transformers optimizer.

Fused attention is multi-head attention on merged axes, so its layouts are
the ones the unfused graph would get from Reshape/Transpose/MatMul:

- a hidden axis of Q or K is ``Kron(heads, head_dim)``; Q and K share *both*
  classes (the scores sum over head_dim, and head h of Q meets head h of K),
- V and the output are ``Kron(heads, v_head_dim)`` with the same heads class
  (head h's probabilities weigh head h's values),
- grouped-query heads are ``Kron(kv_heads, group)``: query head i reads
  kv head i // group, so permuting kv heads and, within a kv head, its group
  of query heads is exact,
- rotary embeddings rotate pairs of head_dim entries: the rotated part of
  head_dim is ``Cat(A, A)`` (first half / second half, rotate_half) or
  ``Kron(A, P[2])`` (interleaved), A being the cos/sin caches' last axis,
- batch and sequence axes are positional (masks, causality, positions).

Skip/Embed layer norms are LayerNormalization plus residual adds and
embedding gathers. Inputs a rule does not model (masks, lengths, quantised
caches) fall to ``NodeView.finish`` and stay public.
"""
from __future__ import annotations

from eeonnx.compiler import layout as L
from eeonnx.compiler.rules import NodeView, rule
from eeonnx.compiler.rules.elementwise import broadcast

MS = "com.microsoft"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _per_head(n: NodeView, hidden, heads: int) -> int | None:
    """head size of a merged hidden axis of static size ``hidden``, else None."""
    if not isinstance(hidden, int) or heads <= 0 or hidden % heads:
        return None
    return hidden // heads


def _pin_all(n: NodeView, terms, why: str) -> None:
    for t in terms:
        n.pin(t, why)


def _rotary(n: NodeView, head_dim: L.Term, size: int, cos: int, sin: int, interleaved: bool) -> None:
    """Pair structure of a rotated head_dim: the caches' last axis A pairs entries
    (k, k + rot/2) (rotate_half) or (2k, 2k + 1) (interleaved); past rot, free."""
    c, s = n.x(cos), n.x(sin)
    half = n.dims(cos)[-1]
    n.public(*c[:-1], *s[:-1])  # positions
    n.unify(c[-1], s[-1])
    if not isinstance(half, int) or 2 * half > size:
        n.pin(head_dim, "rotary dimension does not fit the head size")
        n.pin(c[-1], "rotary dimension does not fit the head size")
        return
    a = c[-1]
    rot = L.kron(a, L.Public(2)) if interleaved else L.cat(a, a)
    if 2 * half < size:
        rot = L.cat(rot, L.fresh(size - 2 * half))
    n.unify(head_dim, rot, f"{n.node.op_type}: head_dim is not pair-preserving")


def _heads_axis(n: NodeView, i: int, axis: int, heads_term: L.Term, heads: int, out: bool = False) -> None:
    """An axis that is one entry per head (or 1, broadcast); others positional."""
    t = n.y(i) if out else n.x(i)
    d = n.out_dims(i) if out else n.dims(i)
    for k, (term, size) in enumerate(zip(t, d)):
        if k == axis and size == heads:
            n.unify(term, heads_term)
        elif k == axis and size != 1:
            n.pin(term, "per-head axis of unexpected size")
        else:
            n.public(term)


def _cache(n: NodeView, i: int, heads: L.Term, head_dim: L.Term, out: bool = False) -> None:
    """A BNSH cache [batch, heads, seq, head_dim]."""
    if out and not n.has_out(i):
        return
    if not out and not n.has(i):
        return
    t = n.y(i) if out else n.x(i)
    if len(t) != 4:
        _pin_all(n, t, "cache of unexpected rank")
        n.pin(heads, "cache of unexpected rank")
        n.pin(head_dim, "cache of unexpected rank")
        return
    n.public(t[0], t[2])
    n.unify(t[1], heads)
    n.unify(t[3], head_dim)


def _positional(n: NodeView, x: list[L.Term], y: list[L.Term], keep: int) -> None:
    """Leading batch/sequence axes: tied between x and y and positional."""
    n.tie(x[:keep], y[:keep])
    n.public(*x[:keep])


# --------------------------------------------------------------------------
# activations and bias adds
# --------------------------------------------------------------------------
@rule("Gelu", "QuickGelu", domain=MS)
def ms_unary(n: NodeView) -> None:
    """Elementwise activation (Gelu, x * sigmoid(alpha * x)): Y follows X."""
    n.tie(n.x(0), n.y(0))


@rule("FastGelu", "BiasGelu", "BiasAdd", domain=MS)
def ms_bias_act(n: NodeView) -> None:
    """gelu(X + bias) / X + bias + skip: broadcasting elementwise, bias on the last axis."""
    broadcast(n, list(range(n.n_in)))


@rule("BiasSplitGelu", domain=MS)
def bias_split_gelu(n: NodeView) -> None:
    """Y = left * gelu(right), (left, right) the halves of X + bias: X.last = Cat(A, A),
    Y.last = A (entry j of both halves must move together)."""
    x, y = n.x(0), n.y(0)
    b = n.x(1)
    n.tie(x[:-1], y[:-1])
    halves = L.cat(y[-1], y[-1])
    n.unify(x[-1], halves, "BiasSplitGelu: halves cannot be paired")
    n.unify(b[-1], halves, "BiasSplitGelu: halves cannot be paired")


# --------------------------------------------------------------------------
# normalisations
# --------------------------------------------------------------------------
def _stats(n: NodeView, x: list[L.Term], outputs) -> None:
    """Saved statistics keep the leading axes (the normalised last axis is 1)."""
    for i in outputs:
        if i < n.n_out and n.has_out(i):
            s = n.y(i)
            lead = min(len(s), len(x)) - (1 if len(s) == len(x) else 0)
            n.tie(x[:lead], s[:lead])


@rule("SimplifiedLayerNormalization")
@rule("RMSNormalization", since=23)
def simplified_layer_norm(n: NodeView) -> None:
    """RMS norm over axes [axis:] (a symmetric statistic): Y follows X, scale broadcasts
    onto the normalised axes, inv_std_var keeps the leading axes (ONNX RMSNormalization,
    opset 23, is the same op with one output)."""
    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    broadcast(n, [1])
    axis = int(n.attr("axis", -1)) % len(x)
    if n.has_out(1):
        n.tie(x[:axis], n.y(1)[:axis])


def _skip_norm(n: NodeView, params: list[int]) -> None:
    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    broadcast(n, [1] + params)  # skip (maybe without batch), gamma, beta, bias
    _stats(n, x, (1, 2))
    if n.has_out(3):  # input + skip + bias
        n.tie(x, n.y(3))


@rule("SkipLayerNormalization", domain=MS)
def skip_layer_norm(n: NodeView) -> None:
    """LayerNorm(input + skip + bias) * gamma + beta over the last axis: everything
    follows the input's axes; input_skip_bias_sum too, mean/inv_std its leading axes."""
    _skip_norm(n, [2, 3, 4])


@rule("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_norm(n: NodeView) -> None:
    """RMSNorm(input + skip + bias) * gamma: as SkipLayerNormalization."""
    _skip_norm(n, [2, 3])


@rule("EmbedLayerNormalization", domain=MS, mixes=True)
def embed_layer_norm(n: NodeView) -> None:
    """LayerNorm(word[ids] + position[0..S) + segment[segment_ids]) * gamma + beta.

    input_ids' values index the word table's rows (mapped by encode like Gather
    indices), segment_ids' the segment table's; position rows are positional.
    The hidden axis of every table, gamma, beta and the outputs is one class;
    mask / position_ids are controls and mask_index is public.
    """
    y = n.y(0)
    hidden = y[-1]
    n.public(*y[:-1])
    ids = n.x(0)
    n.public(*ids)
    word, pos = n.x(2), n.x(3)
    n.unify(word[1], hidden)
    n.index(0, word[0])
    n.unify(pos[1], hidden)
    n.public(pos[0])
    if n.has(4):
        seg = n.x(4)
        n.unify(seg[1], hidden)
        if n.has(1):
            n.public(*n.x(1))
            n.index(1, seg[0])
        else:
            n.public(seg[0])
    for i in (5, 6):
        if n.has(i):
            n.unify(n.x(i)[0], hidden)
    if n.has_out(2):  # embedding_sum
        n.tie(y, n.y(2))


# --------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------
@rule("Attention", domain=MS, mixes=True, state=((4, 1, 3),))
def attention(n: NodeView) -> None:
    """Packed-QKV attention: Y = MHA(X W + b).

    W [in, q + k + v]: axis 0 ties X's hidden axis, axis 1 is
    ``Cat(Kron(H, D), Kron(H, D), Kron(H, Dv))`` (same bias); Y's hidden axis is
    ``Kron(H, Dv)``. past/present [2, B, H, T, D] hold K and V in one head_dim
    axis, so with a cache D = Dv. attention_bias [B|1, H|1, S, T] follows H.
    do_rotary pins head_dim (the kernel's pairing is not modelled).
    """
    x, w, y = n.x(0), n.x(1), n.y(0)
    heads = int(n.attr("num_heads", 0))
    n.unify(x[-1], w[0])
    _positional(n, x[:-1], y[:-1], len(x) - 1)
    total = n.dims(1)[1]
    sizes = n.ints("qkv_hidden_sizes")
    if sizes is None and isinstance(total, int) and total % 3 == 0:
        sizes = [total // 3] * 3
    ok = sizes is not None and len(sizes) == 3 and sizes[0] == sizes[1] and sum(sizes) == total
    hd = _per_head(n, sizes[0], heads) if ok else None
    vd = _per_head(n, sizes[2], heads) if ok else None
    b = n.x(2) if n.has(2) else None
    if hd is None or vd is None:
        why = "cannot split the packed QKV axis into heads"
        _pin_all(n, [w[1], y[-1]] + ([b[0]] if b else []), why)
        for i in (4, 5):
            if n.has(i):
                _pin_all(n, n.x(i), why)
        if n.has_out(1):
            _pin_all(n, n.y(1), why)
        return
    h, d, dv = L.fresh(heads), L.fresh(hd), L.fresh(vd)
    qk = L.kron(h, d)
    qkv = L.cat(qk, qk, L.kron(h, dv))
    n.unify(w[1], qkv, "Attention: packed QKV axis")
    if b is not None:
        n.unify(b[0], qkv, "Attention: packed QKV bias")
    n.unify(y[-1], L.kron(h, dv), "Attention: output heads")
    if int(n.attr("do_rotary", 0)):
        n.pin(d, "rotary embedding inside Attention is not modelled")
    for i, out in ((4, False), (1, True)):  # past, present: [2, B, H, T, D]
        if (n.has_out(i) if out else n.has(i)):
            t = n.y(i) if out else n.x(i)
            if len(t) != 5:
                _pin_all(n, t + [d, dv, h], "past/present of unexpected rank")
                continue
            n.unify(d, dv, "Attention: K and V share the cache's head_dim axis")
            n.public(t[0], t[1], t[3])
            n.unify(t[2], h)
            n.unify(t[4], d)
    if n.has(5):
        _heads_axis(n, 5, 1, h, heads)


@rule("MultiHeadAttention", domain=MS, state=((6, 1, 2), (7, 2, 2)))
def multi_head_attention(n: NodeView) -> None:
    """Attention on projected Q [B,S,H*D], K [B,L,H*D], V [B,L,H*Dv] -> Y [B,S,H*Dv].

    Also packed QKV [B,L,H,3,D], packed KV [B,L,H,2,D] (then D = Dv) and K/V
    given as BNSH caches [B,H,L,D]. bias [q + k + v] is Cat of the three hidden
    axes; past/present key and value are BNSH caches; attention_bias and qk
    follow H on their head axis.
    """
    heads = int(n.attr("num_heads", 0))
    q, y = n.x(0), n.y(0)
    qd = n.dims(0)
    n.tie(y[:1], q[:1])
    n.public(y[0], y[1], q[0], q[1])
    h = L.fresh(heads)
    why = "cannot split the hidden axis into heads"

    def give_up(reason: str, *terms: L.Term) -> None:
        _pin_all(n, [h, *terms, y[-1]], reason)
        for i in range(1, n.n_in):
            if n.has(i) and i not in (4, 8, 9):
                _pin_all(n, n.x(i), reason)
        for i in range(1, n.n_out):
            if n.has_out(i):
                _pin_all(n, n.y(i), reason)

    packed = len(q) == 5
    if n.has(3) and (packed or (n.has(1) and len(n.x(1)) == 5)):
        # the bias is [q | k | v], the packed input per head [.., H, 3|2, D]; no CPU
        # kernel to confirm how the kernel pairs them, so nothing is assumed
        give_up("bias with packed QKV / KV is not modelled", *q)
        return
    if packed:  # [B, L, H, 3, D]
        if qd[2] != heads or n.has(1) or n.has(2):
            give_up("unexpected packed QKV", *q)
            return
        n.public(q[3])
        n.unify(q[2], h)
        d = dv = q[4]
    elif len(q) == 3:
        hd = _per_head(n, qd[2], heads)
        if hd is None:
            give_up(why, q[2])
            return
        d = L.fresh(hd)
        n.unify(q[2], L.kron(h, d))
        dv = None
    else:
        give_up("query of unexpected rank", *q)
        return
    if n.has(1):
        k, kd = n.x(1), n.dims(1)
        if len(k) == 3:  # [B, L, H*D]
            n.public(k[0], k[1])
            n.unify(k[2], L.kron(h, d))
        elif len(k) == 5 and kd[2] == heads:  # packed KV [B, L, H, 2, D]
            n.public(k[0], k[1], k[3])
            n.unify(k[2], h)
            n.unify(k[4], d)
            dv = d
        elif len(k) == 4:  # BNSH
            n.public(k[0], k[2])
            n.unify(k[1], h)
            n.unify(k[3], d)
        else:
            give_up("key of unexpected shape", d)
            return
    if n.has(2):
        v, vdims = n.x(2), n.dims(2)
        if len(v) == 3:
            vd = _per_head(n, vdims[2], heads)
            if vd is None:
                give_up(why, d, v[2])
                return
            dv = L.fresh(vd) if dv is None else dv
            n.public(v[0], v[1])
            n.unify(v[2], L.kron(h, dv))
        elif len(v) == 4:
            n.public(v[0], v[2])
            n.unify(v[1], h)
            if dv is None:
                dv = v[3]
            n.unify(v[3], dv)
        else:
            give_up("value of unexpected shape", d)
            return
    if dv is None:
        give_up("value layout unknown", d)
        return
    n.unify(y[2], L.kron(h, dv), "MultiHeadAttention: output heads")
    if n.has(3):
        b = n.x(3)
        qk = L.kron(h, d)
        n.unify(b[0], L.cat(qk, qk, L.kron(h, dv)), "MultiHeadAttention: bias")
    if n.has(5):
        _heads_axis(n, 5, 1, h, heads)
    _cache(n, 6, h, d)
    _cache(n, 7, h, dv)
    _cache(n, 1, h, d, out=True)
    _cache(n, 2, h, dv, out=True)
    if n.has_out(3):
        _heads_axis(n, 3, 1, h, heads, out=True)


@rule("GroupQueryAttention", domain=MS, state=((3, 1, 2), (4, 2, 2)))
def group_query_attention(n: NodeView) -> None:
    """Grouped-query attention: query heads are ``Kron(Hkv, G)`` (query head i reads
    kv head i // G), K [.., Hkv*D], V [.., Hkv*Dv], Y [.., Kron(Hkv, G, Dv)].

    Packed QKV is ``Cat(Kron(Hkv, G, D), Kron(Hkv, D), Kron(Hkv, Dv))``. With
    do_rotary, D is pair-preserving (see RotaryEmbedding) and the cos/sin
    caches carry its pair class. head_sink / attention_bias / output_qk follow
    the query heads, q/k_norm_weight follow D. Quantised caches are not modelled:
    every class of the node is pinned.
    """
    nq, nkv = int(n.attr("num_heads", 0)), int(n.attr("kv_num_heads", 0))
    q, y = n.x(0), n.y(0)
    qd = n.dims(0)
    n.tie(y[:-1], q[:-1])
    n.public(*q[:-1])
    cache_types = {n.node.inputs[i].dtype for i in (3, 4) if n.has(i)}
    quantised = (int(n.attr("kv_cache_bit_width", 0) or 0) != 0 or n.has(12) or n.has(13)
                 or any(_s(n.attr(a, "NONE")) not in ("NONE", "") for a in ("k_quant_type", "v_quant_type"))
                 or any(t is not None and t != n.node.inputs[0].dtype for t in cache_types))
    packed = not n.has(1)
    width = qd[-1]
    per = (nq + 2 * nkv) if packed else nq
    hd = _per_head(n, width, per) if nq > 0 and nkv > 0 and nq % max(nkv, 1) == 0 else None
    if quantised or hd is None or len(q) != 3:
        why = "quantised KV cache is not modelled" if quantised else "cannot split the hidden axis into heads"
        terms = [q[-1], y[-1]]
        for i in (1, 2, 3, 4, 7, 8, 10, 11, 14, 15):
            if n.has(i):
                terms += n.x(i)
        for i in (1, 2, 3):
            if n.has_out(i):
                terms += n.y(i)
        _pin_all(n, terms, why)
        return
    hk, g = L.fresh(nkv), L.fresh(nq // nkv)
    qh = L.kron(hk, g)
    d, dv = L.fresh(hd), L.fresh(hd)
    if packed:
        n.unify(q[-1], L.cat(L.kron(qh, d), L.kron(hk, d), L.kron(hk, dv)), "GroupQueryAttention: packed QKV")
    else:
        k, v = n.x(1), n.x(2)
        n.unify(q[-1], L.kron(qh, d), "GroupQueryAttention: query heads")
        n.public(*k[:-1], *v[:-1])
        n.unify(k[-1], L.kron(hk, d), "GroupQueryAttention: key heads")
        n.unify(v[-1], L.kron(hk, dv), "GroupQueryAttention: value heads")
    n.unify(y[-1], L.kron(qh, dv), "GroupQueryAttention: output heads")
    _cache(n, 3, hk, d)
    _cache(n, 4, hk, dv)
    _cache(n, 1, hk, d, out=True)
    _cache(n, 2, hk, dv, out=True)
    if int(n.attr("do_rotary", 0)):
        if n.has(7) and n.has(8):
            _rotary(n, d, hd, 7, 8, bool(n.attr("rotary_interleaved", 0)))
        else:
            n.pin(d, "rotary caches missing")
    if n.has(10):
        _heads_axis(n, 10, 1, qh, nq)
    if n.has(11):
        n.unify(n.x(11)[0], qh)
    for i in (14, 15):
        if n.has(i):
            n.unify(n.x(i)[0], d)
    if n.has_out(3):
        _heads_axis(n, 3, 1, qh, nq, out=True)


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@rule("RotaryEmbedding", domain=MS)
def rotary_embedding(n: NodeView) -> None:
    """Rotates pairs of head_dim entries by position-dependent angles.

    X is [B, S, H*D] (or [T, H*D] packed) or [B, H, S, D]; Y follows X. The
    rotated part of D is ``Cat(A, A)`` (interleaved=0: entry k pairs with
    k + rot/2) or ``Kron(A, P[2])`` (interleaved=1), A the last axis of the
    cos/sin caches [max_pos, rot/2], whose rows are positions. Batch and
    sequence axes are positional.
    """
    x, y = n.x(0), n.y(0)
    xd = n.dims(0)
    n.tie(x, y)
    half = n.dims(2)[-1]
    heads = int(n.attr("num_heads", 0))
    if len(x) == 4:
        n.public(x[0], x[2])
        h, d, hd = x[1], x[3], xd[3]
    elif len(x) in (2, 3):
        n.public(*x[:-1])
        if heads:
            hd = _per_head(n, xd[-1], heads)
        else:
            hd = 2 * half if isinstance(half, int) else None
            heads = xd[-1] // hd if hd and isinstance(xd[-1], int) and xd[-1] % hd == 0 else 0
        if hd is None or not heads:
            n.pin(x[-1], "cannot split the hidden axis into heads")
            _pin_all(n, n.x(2) + n.x(3), "cannot split the hidden axis into heads")
            return
        h, d = L.fresh(heads), L.fresh(hd)
        n.unify(x[-1], L.kron(h, d), "RotaryEmbedding: heads")
    else:
        _pin_all(n, x, "input of unexpected rank")
        return
    if not isinstance(hd, int):
        n.pin(d, "head size unknown")
        _pin_all(n, n.x(2) + n.x(3), "head size unknown")
        return
    _rotary(n, d, hd, 2, 3, bool(n.attr("interleaved", 0)))
