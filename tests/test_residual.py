"""Residual streams beyond permutations (--transforms max): the hidden axis shared by the
embedding, every skip connection and every norm's input takes an orthogonal map, fixing
the all-ones vector where a LayerNorm reads it, any orthogonal map where only RMSNorms do.
The norm gains are moved into the consumers. Checked on a small pre-norm transformer block
built with onnx.helper (embedding Gather, positional add, norm, Q/K/V, softmax attention,
output projection, residual Add, norm, MLP, Add, final norm, head), with every norm fused
or decomposed: decode(server(encode(x))) == original(x) on ONNX Runtime, same server ops,
and the statements are shown to matter (a wrong one breaks exactness)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

import eeonnx
from eeonnx.compiler import groups as G
from eeonnx.compiler.keys import Key
from eeonnx.compiler.rules import norm_groups
from tests.helpers import G as Builder
from tests.helpers import server_weights
from tests.test_groups import _check_artifact, _encrypted_run, _same_ops

KEY = Key(bytes(range(32)))
D, V, S = 16, 40, 5
EPS = 1e-5


# --------------------------------------------------------------------------- algebra (float64)
def _ln(x, eps=EPS):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps)


def _rms(x, eps=EPS):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)


def test_layernorm_commutes_with_orthogonal_maps_fixing_ones_only():
    x = np.random.default_rng(0).standard_normal((6, D))
    q1 = G.draw(KEY, "a", D, G.ORTHO_ONES).factor(1)
    q = G.draw(KEY, "b", D, G.ORTHOGONAL).factor(1)
    assert np.allclose(q1 @ np.ones(D), np.ones(D), atol=1e-12)
    assert np.allclose(_ln(x @ q1), _ln(x) @ q1, atol=1e-12)
    assert not np.allclose(_ln(x @ q), _ln(x) @ q, atol=1e-3)  # Q 1 != 1: the mean moves
    assert np.allclose(_rms(x @ q), _rms(x) @ q, atol=1e-12)


def test_moved_gain_is_exact_and_needed():
    """LN(x; g, b) W = (LN(x Q; 1, (b/g) Q)) (Q^T diag(g) W); keeping g in place is not."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((6, D)), rng.standard_normal((D, 3))
    g, b = 1 + 0.5 * rng.standard_normal(D), rng.standard_normal(D)
    q = G.draw(KEY, "a", D, G.ORTHO_ONES).factor(1)
    want = (_ln(x) * g + b) @ w
    got = (_ln(x @ q) + (b / g) @ q) @ (q.T @ (g[:, None] * w))
    assert np.allclose(got, want, atol=1e-12)
    assert not np.allclose((_ln(x @ q) * g + b @ q) @ (q.T @ w), want, atol=1e-3)


# --------------------------------------------------------------------------- the fixture
def _norm(g: Builder, kind: str, x: str, tag: str, rng) -> str:
    kind = {"skip": "fused", "skip_rms": "rms"}.get(kind, kind)
    gamma = g.const(f"{tag}.gamma", (1 + 0.4 * rng.standard_normal(D)).astype(np.float32))
    beta = None
    if kind in ("fused", "decomposed"):
        beta = g.const(f"{tag}.beta", (0.3 * rng.standard_normal(D)).astype(np.float32))
    if kind == "fused":
        return g.node("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=EPS)
    if kind == "rms_fused":
        return g.node("RMSNormalization", [x, gamma], axis=-1, epsilon=EPS)
    eps = g.const(f"{tag}.eps", np.array(EPS, np.float32))
    if kind == "decomposed":
        mean = g.node("ReduceMean", [x, g.ints(f"{tag}.ax0", [-1])], keepdims=1)
        d = g.node("Sub", [x, mean])
        var = g.node("ReduceMean", [g.node("Mul", [d, d]), g.ints(f"{tag}.ax1", [-1])], keepdims=1)
        z = g.node("Div", [d, g.node("Sqrt", [g.node("Add", [var, eps])])])
        return g.node("Add", [g.node("Mul", [z, gamma]), beta])
    two = g.const(f"{tag}.two", np.array(2.0, np.float32))
    ms = g.node("ReduceMean", [g.node("Pow", [x, two]), g.ints(f"{tag}.ax", [-1])], keepdims=1)
    r = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [ms, eps])])])
    return g.node("Mul", [gamma, g.node("Mul", [x, r])])


def transformer_block(kind: str, seed: int = 0) -> onnx.ModelProto:
    """A pre-norm transformer block with norms of ``kind``: fused (LayerNormalization),
    decomposed (ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div/Mul/Add), rms (Pow/ReduceMean/
    Add/Sqrt/Reciprocal/Mul/Mul), rms_fused (RMSNormalization, opset 23); gains and
    biases random (no gain is uniform, so every one must be moved)."""
    g = Builder(opset=23 if kind == "rms_fused" else 18, seed=seed, check=kind not in ("skip", "skip_rms"))
    rng = np.random.default_rng(seed + 7)
    ids = g.input("ids", [1, S], TensorProto.INT64)
    x = g.node("Gather", [g.w("emb", [V, D], scale=1.0), ids], axis=0)
    x = g.node("Add", [x, g.w("pos", [S, D], scale=0.5)])
    h = _norm(g, kind, x, "ln1", rng)
    q = g.node("Add", [g.node("MatMul", [h, g.w("wq", [D, D])]), g.w("bq", [D], scale=0.1)])
    k = g.node("MatMul", [h, g.w("wk", [D, D])])
    v = g.node("MatMul", [h, g.w("wv", [D, D])])
    att = g.node("Softmax", [g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 2, 1])]),
                                            g.floats("scale", [1 / np.sqrt(D)])])], axis=-1)
    o = g.node("Add", [g.node("MatMul", [g.node("MatMul", [att, v]), g.w("wo", [D, D])]), g.w("bo", [D], scale=0.1)])
    if kind in ("skip", "skip_rms"):  # com.microsoft SkipLayerNormalization: h = LN(x + o), x + o as output 3
        gamma = g.const("ln2.gamma", (1 + 0.4 * rng.standard_normal(D)).astype(np.float32))
        ins = [x, o, gamma] + ([g.const("ln2.beta", (0.3 * rng.standard_normal(D)).astype(np.float32))]
                               if kind == "skip" else [])
        op = "SkipLayerNormalization" if kind == "skip" else "SkipSimplifiedLayerNormalization"
        h, _, _, x = g.node(op, ins, ["ln2_out", "", "", "ln2_sum"], domain="com.microsoft", epsilon=EPS)
    else:
        x = g.node("Add", [x, o])
        h = _norm(g, kind, x, "ln2", rng)
    m = g.node("Relu", [g.node("Add", [g.node("MatMul", [h, g.w("w1", [D, 2 * D])]), g.w("c1", [2 * D], scale=0.1)])])
    x = g.node("Add", [x, g.node("MatMul", [m, g.w("w2", [2 * D, D])])])
    h = _norm(g, kind, x, "lnf", rng)
    g.node("MatMul", [h, g.w("head", [D, V])], "logits")
    g.output("logits")
    return g.build(extra_opsets=[("com.microsoft", 1)] if kind in ("skip", "skip_rms") else ())


def _compile(model, tmp_path, name="m", **kw):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    out = tmp_path / f"{name}_out"
    comp = eeonnx.compile(path, out, transforms="max", **kw)
    return path, out, comp


def _feeds():
    return {"ids": np.array([[3, 1, 4, 1, 5]], np.int64) % V}


def _stream_group(comp) -> str:
    return next(c.group for c in comp.classes.values() if c.size == D and c.group != "permutation")


STREAM_GROUP = {"fused": "orthogonal-ones", "decomposed": "orthogonal-ones", "rms": "orthogonal",
                "rms_fused": "orthogonal", "skip": "orthogonal-ones", "skip_rms": "orthogonal"}


@pytest.mark.parametrize("kind", sorted(STREAM_GROUP))
def test_residual_stream_is_orthogonal_and_exact(tmp_path, kind):
    path, out, comp = _compile(transformer_block(kind), tmp_path)
    assert _stream_group(comp) == STREAM_GROUP[kind]
    _check_artifact(path, out, comp, _feeds())
    _same_ops(path, out)
    srv = server_weights(out)  # by original name
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for tag in ("ln1", "ln2", "lnf"):  # every gain moved into its consumers
        assert np.array_equal(srv[f"{tag}.gamma"], np.ones(D, np.float32)), tag
    # the embedding and the head are dense maps of the original, not row/column permutations
    for name, axis in (("emb", 1), ("head", 0), ("wq", 0), ("wo", 1)):
        s, o = np.sort(srv[name], axis=axis), np.sort(orig[name], axis=axis)
        assert not np.allclose(s, o, atol=1e-3), name


def test_norm_output_read_by_a_nonlinear_op_keeps_the_stream_permuted(tmp_path):
    """The final norm's output goes through a Relu before the head: its gain cannot be moved,
    so the final norm is stated permutation-safe; the stream stays exact (whatever it gets)."""
    m = transformer_block("fused")
    head = next(n for n in m.graph.node if n.output[0] == "logits")
    relu = onnx.helper.make_node("Relu", [head.input[0]], ["lnf_relu"], name="lnf_relu")
    head.input[0] = "lnf_relu"
    m.graph.node.insert(list(m.graph.node).index(head), relu)
    path, out, comp = _compile(m, tmp_path)
    assert "orthogonal-ones" not in {c.group for c in comp.classes.values() if c.size == D}
    _check_artifact(path, out, comp, _feeds())


def _max_rel_err(path, out) -> float:
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, _feeds())[0]
    got = _encrypted_run(out, _feeds())[0]
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_claiming_orthogonal_without_moving_the_gain_breaks_exactness(tmp_path, monkeypatch):
    """A deliberately wrong statement: the LayerNorm claims its stream is orthogonal but the
    gain stays in place. The decoded output is then wrong: the gain fold is what makes it exact."""
    model = transformer_block("fused")
    path, out, _ = _compile(model, tmp_path, "ok")
    assert _max_rel_err(path, out) < 1e-5

    def no_fold(v, gamma, uid, product, trigger, biases=()):
        return norm_groups.GainFold(gamma, np.ones(1), trigger)  # "movable", but nothing recorded

    monkeypatch.setattr(norm_groups.GainFold, "record", lambda self, prefold: None)
    monkeypatch.setattr(norm_groups, "gain_fold", no_fold)
    path, out, comp = _compile(model, tmp_path, "wrong")
    assert _stream_group(comp) == "orthogonal-ones"
    assert _max_rel_err(path, out) > 1e-2


def test_layernorm_stream_needs_q_fixing_ones(tmp_path, monkeypatch):
    """A deliberately wrong draw: a Haar orthogonal map that does not fix the ones vector,
    on a LayerNorm stream. The decoded output is wrong; on an RMSNorm stream it is exact."""
    real = G.draw

    def draw(key, label, n, group):
        return real(key, label, n, G.ORTHOGONAL if group == G.ORTHO_ONES else group)

    monkeypatch.setattr(G, "draw", draw)
    path, out, comp = _compile(transformer_block("fused"), tmp_path, "ln")
    assert _max_rel_err(path, out) > 1e-2
    path, out, comp = _compile(transformer_block("rms"), tmp_path, "rms")
    assert _stream_group(comp) == "orthogonal"
    assert _max_rel_err(path, out) < 1e-5


def test_l2_normalised_output_is_orthogonal(tmp_path):
    """y = h / Expand(ReduceL2(h over the class), Shape(h)) (sentence-embedding normalisation):
    the norm is invariant under any orthogonal map, the Expand is constant along the class,
    so the division commutes: the class is orthogonal, not a permutation, and exact."""
    g = Builder(opset=17)
    x = g.input("x", [3, 8])
    h = g.node("MatMul", [x, g.w("w", [8, D])])
    n = g.node("ReduceL2", [h], axes=[1], keepdims=1)
    g.node("Div", [h, g.node("Expand", [n, g.node("Shape", [h])])], "y")
    g.output("y")
    m = g.build()
    path, out, comp = _compile(m, tmp_path, split="none", min_key_bits=0, allow_weak=("x", "y"))
    assert _stream_group(comp) == "orthogonal"
    _check_artifact(path, out, comp, {"x": np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)})


# --------------------------------------------------------------------------- exported fixtures, trained-like gains
def _with_random_gains(path, seed: int = 3) -> onnx.ModelProto:
    """The fixture with every norm gain its own random vector (exporters of untrained models
    write ones, which are uniform and never need moving; trained models do not)."""
    m = onnx.load(path)
    rng = np.random.default_rng(seed)
    arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    extra, k = [], 0
    for node in m.graph.node:
        slots = [1] if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization") else []
        if node.op_type == "Mul":
            slots = [i for i in (0, 1) if arrays.get(node.input[i]) is not None
                     and arrays[node.input[i]].ndim == 1 and np.all(arrays[node.input[i]] == 1)]
        for i in slots:
            a = arrays[node.input[i]]
            name = f"{node.input[i]}.trained{k}"
            k += 1
            extra.append(numpy_helper.from_array((1 + 0.3 * rng.standard_normal(a.shape)).astype(a.dtype), name))
            node.input[i] = name
    assert k, "no norm gain found"
    m.graph.initializer.extend(extra)
    return m


def _fixture_feeds(model: onnx.ModelProto) -> dict:
    from tests.helpers import random_feeds

    feeds = random_feeds(model, {"batch": 1, "seq": 6, "sequence": 6, "past_sequence": 0})
    for name, a in feeds.items():
        if a.dtype == np.int64 and "ids" in name:
            feeds[name] = (np.arange(a.size).reshape(a.shape) * 7 % 300).astype(np.int64)
        elif a.dtype == np.int64:
            feeds[name] = np.ones_like(a) if "mask" in name else np.broadcast_to(np.arange(a.shape[-1]), a.shape).copy()
    return feeds


def test_llama_export_with_trained_gains_moves_every_rmsnorm_gain(tmp_path):
    """LLaMA (dynamo export, decomposed RMSNorm, untied head): with non-uniform gains every
    gain is moved into the projections that read it; the stream stays orthogonal and exact."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    m = _with_random_gains(root / "models" / "fixtures" / "llama.dynamo.onnx")
    path, out, comp = _compile(m, tmp_path)
    assert max((c for c in comp.classes.values() if c.group == "orthogonal"), key=lambda c: c.size).size == 64
    assert len(comp.prefold) > 5  # gains -> ones, projection rows scaled
    feeds = _fixture_feeds(m)
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _encrypted_run(out, feeds)
    for w, g in zip(want, got):
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()
    _same_ops(path, out)


def test_gpt2_export_with_trained_gains_and_tied_head_stays_exact(tmp_path):
    """GPT-2 (dynamo export): the head reads the embedding table through a Transpose, so the
    final norm's gain cannot be moved into it (the table is read by the Gather too) and the
    stream stays a permutation (the per-layer norms' outputs take a diagonal); exact."""
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    m = _with_random_gains(root / "models" / "fixtures" / "gpt2.dynamo.onnx")
    path, out, comp = _compile(m, tmp_path)
    stream = next(c for c in comp.classes.values() if c.size == 64)
    assert stream.group == "diagonal" and not comp.prefold
    feeds = _fixture_feeds(m)
    import onnxruntime as ort

    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = _encrypted_run(out, feeds)
    for w, g in zip(want, got):
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max()


def test_check_spec_shows_the_stream_groups(tmp_path):
    from click.testing import CliRunner

    from eeonnx.cli import main as cli_main

    for kind, group in (("fused", "orthogonal-ones"), ("rms", "orthogonal")):
        path = tmp_path / f"{kind}.onnx"
        onnx.save(transformer_block(kind), path)
        r = CliRunner().invoke(cli_main, ["check", str(path), "--spec", "--transforms", "max"])
        assert r.exit_code == 0, r.output
        assert f"[{D}]: {group}" in r.output, r.output
