"""Per-head groups (compiler/structured.py, rules/head_groups.py) with --transforms max:
attention's V/O and Q/K head_dim classes take one invertible block per (KV) head, shared
by the query heads of a GQA group. Checked end to end on ONNX Runtime
(decode(server(encode(x))) == original(x)), on the folded weights themselves (an attacker
who knows the original weights needs a different map per head: one shared map leaves a
large residual), and against a deliberately wrong head statement (exactness breaks)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import eeonnx
from eeonnx.compiler import layout as L
from eeonnx.compiler import structured as S
from eeonnx.compiler.keys import Key
from eeonnx.compiler.rules import head_groups
from tests.helpers import G as Builder
from tests.helpers import assert_close, random_feeds, run_original

ROOT = Path(__file__).resolve().parents[1]
CPU = ["CPUExecutionProvider"]
SECRET = bytes(range(1, 33))
KEY = Key(SECRET)
N, DH, SEQ = 16, 4, 5


def attention(kv_heads: int, rep: int, mix_heads: bool = False, rotary: str = "") -> onnx.ModelProto:
    """One attention block: x [2, SEQ, N] -> q/k/v projections, heads split by Reshape,
    K/V repeated to the query heads (Unsqueeze, Expand, Reshape: the llama repeat_kv)
    when rep > 1, softmax(q k^T) v, heads merged, output projection.
    ``mix_heads``: the attention output gets the sum over all heads added to every head
    (a ReduceSum over the head axis broadcast back: linear in head_dim, but it mixes heads).
    ``rotary``: "half" applies half-split rotary embeddings to q and k (cos/sin computed from
    inv_freq as the exporters write them: Concat(freqs, freqs), Cos, Sin; rotate_half as
    Slice/Neg/Concat); "table" multiplies q and k by a constant table whose halves differ
    (not a rotary table: pairs must stay permuted only)."""
    g = Builder(opset=13, seed=kv_heads * 10 + rep)
    heads = kv_heads * rep
    x = g.node("Sigmoid", [g.input("x", [2, SEQ, N])])  # x's class: permuted only (see _rows_plain)
    wq, wk, wv = g.w("wq", [N, heads * DH]), g.w("wk", [N, kv_heads * DH]), g.w("wv", [N, kv_heads * DH])
    wo = g.w("wo", [heads * DH, N])

    def split(t, h):
        t = g.node("Reshape", [t, g.ints(f"s{next(_n)}", [2, SEQ, h, DH])])
        return g.node("Transpose", [t], perm=[0, 2, 1, 3])

    def repeat(t):
        if rep == 1:
            return t
        t = g.node("Unsqueeze", [t, g.ints(f"u{next(_n)}", [2])])
        t = g.node("Expand", [t, g.ints(f"e{next(_n)}", [2, kv_heads, rep, SEQ, DH])])
        return g.node("Reshape", [t, g.ints(f"r{next(_n)}", [2, heads, SEQ, DH])])

    _n = itertools.count()
    q = split(g.node("MatMul", [x, wq]), heads)
    k = split(g.node("MatMul", [x, wk]), kv_heads)
    if rotary:
        half = DH // 2
        inv = g.floats("inv_freq", 10000.0 ** (-np.arange(half) / half))
        pos = g.floats("positions", np.arange(SEQ, dtype=np.float32).reshape(SEQ, 1) + 3)
        emb = g.node("Concat", [g.node("Mul", [pos, inv])] * 2, axis=-1)
        cos, sin = g.node("Cos", [emb]), g.node("Sin", [emb])
        if rotary == "table":
            cos = g.floats("table", g.rng.uniform(0.5, 1.5, (SEQ, DH)))

        def rotate_half(t):
            a = g.node("Slice", [t, g.ints(f"b{next(_n)}", [0]), g.ints(f"b{next(_n)}", [half]),
                                 g.ints(f"b{next(_n)}", [3])])
            b = g.node("Slice", [t, g.ints(f"b{next(_n)}", [half]), g.ints(f"b{next(_n)}", [DH]),
                                 g.ints(f"b{next(_n)}", [3])])
            return g.node("Concat", [g.node("Neg", [b]), a], axis=3)

        def rope(t):
            return g.node("Add", [g.node("Mul", [t, cos]), g.node("Mul", [rotate_half(t), sin])])

        q, k = rope(q), rope(k)
    k = repeat(k)
    v = repeat(split(g.node("MatMul", [x, wv]), kv_heads))
    s = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    p = g.node("Softmax", [g.node("Mul", [s, g.floats("scale", 1 / np.sqrt(DH))])], axis=-1)
    o = g.node("MatMul", [p, v])
    if mix_heads:
        o = g.node("Add", [o, g.node("ReduceSum", [o, g.ints("heads_axis", [1])], keepdims=1)])
    o = g.node("Reshape", [g.node("Transpose", [o], perm=[0, 2, 1, 3]), g.ints("m", [2, SEQ, heads * DH])])
    g.node("MatMul", [o, wo], "y")
    g.output("y")
    return g.build()


def _compile(model, tmp_path, **kw):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "out"
    comp = eeonnx.compile(path, out, key=Key(SECRET), split="none", min_key_bits=0, transforms="max", force=True, **kw)
    return comp, out


def _decoded(out: Path, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    enc, srv, dec = (ort.InferenceSession(str(out / p), so, providers=CPU)
                     for p in ("client/encode.onnx", "server/model.onnx", "client/decode.onnx"))
    sent = enc.run(None, {i.name: feeds[i.name] for i in enc.get_inputs()})
    got = srv.run(None, dict(zip([i.name for i in srv.get_inputs()], sent)))
    return dec.run(None, dict(zip([i.name for i in dec.get_inputs()], got)))


def _server_weight(out: Path, comp, name: str) -> np.ndarray:
    try:
        from tests.helpers import server_tensor  # opaque server names (when they exist)

        return np.asarray(server_tensor(out, name))
    except ImportError:
        srv = onnx.load(out / "server" / "model.onnx")
        return numpy_helper.to_array(next(t for t in srv.graph.initializer if t.name == name))


def _class_of(comp, weight: str, axis: int, position: int) -> int:
    """uid of the class at Kron factor ``position`` of ``weight``'s axis."""
    value = comp.model.graph.initializers[weight]
    t = L.resolve(comp.analysis.known(value)[axis])
    return L.resolve(t.factors[position]).uid


def _rows_plain(comp, weight: str, server: np.ndarray) -> np.ndarray:
    """The server weight with its row permutation undone from the key (rows: the input
    stream's class, permuted only behind the Sigmoid), so only the column maps remain."""
    value = comp.model.graph.initializers[weight]
    t = L.resolve(comp.analysis.known(value)[0])
    assert comp.exponents.get((value, t.uid), 0) == 0
    plain = np.empty_like(server)
    plain[comp.perms[t.uid]] = server
    return plain


def _per_head_residuals(server: np.ndarray, original: np.ndarray, kv_heads: int) -> tuple[float, float]:
    """Known-weights fit of W_v (columns = kron(head, head_dim)): the best relative residual
    of one shared map for all heads (over every matching of server to original head
    blocks) and of one map per head. Plain least squares, independent of the compiler."""
    so = np.split(original.astype(np.float64), kv_heads, axis=1)
    ss = np.split(server.astype(np.float64), kv_heads, axis=1)

    def res(a, b):
        m, *_ = np.linalg.lstsq(a, b, rcond=None)
        return np.linalg.norm(a @ m - b) / np.linalg.norm(b)

    shared = min(res(np.vstack([so[i] for i in perm]), np.vstack(ss)) for perm in itertools.permutations(range(kv_heads)))
    each = max(min(res(so[i], ss[j]) for i in range(kv_heads)) for j in range(kv_heads))
    return shared, each


@pytest.mark.parametrize("kv_heads,rep", [(2, 1), (2, 2)], ids=["mha", "gqa"])
def test_attention_head_dims_take_one_block_per_kv_head(tmp_path, kv_heads, rep):
    model = attention(kv_heads, rep)
    comp, out = _compile(model, tmp_path)
    kv = _class_of(comp, "wv", 1, 0)  # the KV head class
    for weight in ("wv", "wk"):
        d = comp.classes[_class_of(comp, weight, 1, 1)]
        assert d.group == "per-head linear", (weight, d.group, d.why)
        assert comp.transforms[_class_of(comp, weight, 1, 1)].head == kv
    if rep > 1:  # the query heads of a group: their own class, never the head of a block
        rep_class = _class_of(comp, "wq", 1, 1)
        assert all(getattr(t, "head", None) != rep_class for t in comp.transforms.values())
    feeds = random_feeds(model)
    for got, want in zip(_decoded(out, feeds), run_original(model, feeds)):
        assert_close(got, want, 1e-5, "y")
    srv = onnx.load(out / "server" / "model.onnx")
    assert [n.op_type for n in srv.graph.node] == [n.op_type for n in model.graph.node]
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shared, each = _per_head_residuals(_rows_plain(comp, "wv", _server_weight(out, comp, "wv")),
                                       orig["wv"], kv_heads)
    assert each < 1e-5 and shared > 0.05, (shared, each)


def test_a_head_mixing_op_keeps_one_shared_map(tmp_path):
    """ReduceSum over the head axis, broadcast back by Add: linear in head_dim but mixing
    heads, so the V/O class stays one shared LINEAR map, and the artifact is exact."""
    model = attention(2, 1, mix_heads=True)
    comp, out = _compile(model, tmp_path)
    d = comp.classes[_class_of(comp, "wv", 1, 1)]
    assert d.group == "linear", d.group
    feeds = random_feeds(model)
    for got, want in zip(_decoded(out, feeds), run_original(model, feeds)):
        assert_close(got, want, 1e-5, "y")


def test_a_wrong_head_statement_breaks_exactness(tmp_path, monkeypatch):
    """The same model with ReduceSum's and Add's head statements replaced by ones that
    claim to commute with per-head maps whatever their operands hold: the V/O class turns
    per-head and the decoded output is wrong. (The exactness check catches a wrong statement.)"""
    model = attention(2, 1, mix_heads=True)
    yes = lambda node, live, d, h: True  # noqa: E731
    monkeypatch.setitem(head_groups.HEAD_RULES, "ReduceSum", yes)
    monkeypatch.setitem(head_groups.HEAD_RULES, "Add", yes)
    comp, out = _compile(model, tmp_path)
    assert comp.classes[_class_of(comp, "wv", 1, 1)].group == "per-head linear"
    feeds = random_feeds(model)
    got, want = _decoded(out, feeds)[0], run_original(model, feeds)[0]
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def test_blocks_apply_where_head_and_head_dim_sit_on_separate_axes():
    """structured.apply on [h, a, d] equals the per-head matrix products, and on the
    merged axis Kron(h, d) the dense block-diagonal matrix."""
    h, d = L.Var(3), L.Var(4)
    tr = S.draw(KEY, "t", 4, h.uid, 3)
    f = tr.factor(1)

    def factor(v):
        return f if v.uid == d.uid else None

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4))
    got = S.apply(x, [h, L.Public(5), d], factor)
    want = np.stack([x[k] @ (tr.scale[k][:, None] * tr.ortho[k]) for k in range(3)])
    assert np.allclose(got, want)
    m = S.dense(L.Kron((h, d)), factor)
    block = np.zeros((12, 12))
    for k in range(3):
        block[4 * k:4 * k + 4, 4 * k:4 * k + 4] = tr.scale[k][:, None] * tr.ortho[k]
    assert np.allclose(m, block)
    inv = S.dense(L.Kron((h, d)), lambda v: tr.factor(1, inverse=True) if v.uid == d.uid else None)
    assert np.allclose(m @ inv, np.eye(12))
    # the contragredient: a +1 axis contracted against a -1 axis is unchanged
    mt = S.dense(L.Kron((h, d)), lambda v: tr.factor(-1) if v.uid == d.uid else None)
    assert np.allclose(m @ mt.T, np.eye(12))
    assert S.dense(d, factor) is None  # its head on another axis: no one matrix for this axis


def test_llama_kv_generates_the_same_tokens_with_per_head_maps(tmp_path):
    """GQA through the TorchScript llama's repeat_kv, with the KV cache the server holds
    transformed per KV head: greedy tokens equal the plain model's."""
    path = ROOT / "models" / "fixtures" / "llama_kv.ts.onnx"
    out = tmp_path / "out"
    comp = eeonnx.compile(path, out, key=Key(SECRET), transforms="max")
    assert "per-head linear" in {c.group for c in comp.classes.values()}
    client, server = eeonnx.Client(out), eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    plain = ort.InferenceSession(str(path), so, providers=CPU)
    ids, want = [5, 17, 42, 99], []
    for _ in range(6):
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                 "position_ids": np.arange(n, dtype=np.int64)[None]}
        for i in plain.get_inputs():
            if i.name.startswith("past"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        tok = int(np.argmax(plain.run(["logits"], feeds)[0][0, -1]))
        want.append(tok)
        ids.append(tok)
    assert list(client.generate(server, [5, 17, 42, 99], max_new_tokens=6)) == want
