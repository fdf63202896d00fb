"""com.microsoft contrib ops (onnxruntime's transformers optimizer output): one roundtrip
per rule and form that onnxruntime's CPU provider runs, spec checks on the layouts the
rules state (heads x head_dim, Kron(kv_heads, group), pair-preserving rotary dims), and
check-only cases for forms without a CPU kernel.

Models are x [1, 5, 16] -> MatMul -> OP -> MatMul -> y, so the op sits between weights.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

import eeonnx
from helpers import INT64, G, is_secret, pinned_nodes, roundtrip

MS = "com.microsoft"
OPSETS = [(MS, 1)]
S = 5
INT32 = 6

_CLS = r"c\d+"
#: the tiny classes here (heads 4, head_dim 8) are far below the default 128 key bits per
#: wire tensor; these tests are about the rules, so the boundary stays at the model's I/O
#: tiny head classes are below the default key-bit threshold; caches with a non-empty
#: past are fed by the test, so they go through encode/decode (client-held state)
WEAK = {"min_key_bits": 0, "server_state": False}


def _g(seed: int = 0, check: bool = True) -> G:
    return G(opset=17, seed=seed, check=check)


def _mm(g: G, x: str, name: str, din: int, dout: int) -> str:
    return g.node("MatMul", [x, g.w(name, [din, dout])], name=name.replace(".w", ""))


def _front(g: G, width: int = 32) -> str:
    g.input("x", [1, S, 16])
    return _mm(g, "x", "w_in", 16, width)


def _back(g: G, a: str, width: int, out: str = "y") -> None:
    g.node("MatMul", [a, g.w(f"{out}.w", [width, 8])], outputs=out)
    g.output(out, shape=[1, S, 8])


def _match(pattern: str, text: str) -> re.Match:
    """``pattern`` with capitals standing for secret classes (equal letters, equal class;
    distinct letters, distinct classes); ``P`` is public as in the spec."""
    names: dict[str, str] = {}
    rx = ""
    for tok in re.split(r"([A-OQ-Z])", pattern):
        if len(tok) == 1 and tok.isupper() and tok != "P":
            if tok in names:
                rx += f"(?P={tok})"
            else:
                names[tok] = tok
                rx += f"(?P<{tok}>{_CLS})"
        else:
            rx += re.escape(tok)
    m = re.fullmatch(rx, text)
    assert m, f"{text!r} does not match {pattern!r}"
    groups = m.groupdict()
    assert len(set(groups.values())) == len(groups), f"{text!r}: distinct letters share a class"
    return m


# --------------------------------------------------------------------------
# Attention (packed QKV weight)
# --------------------------------------------------------------------------
def _build_attention(v_hidden=None, past=False, bias_heads=False):
    g = _g()
    a = _front(g)
    vh = v_hidden or 32
    w = g.w("w_qkv", [32, 64 + vh])
    b = g.w("b_qkv", [64 + vh], 0.1)
    ins, outs, attrs = [a, w, b], ["att"], {"num_heads": 4}
    if v_hidden:
        attrs["qkv_hidden_sizes"] = [32, 32, v_hidden]
    if past or bias_heads:
        ins.append("mask")
        g.input("mask", [1, S + (3 if past else 0)], INT32)
    if past:
        ins.append(g.input("past", [2, 1, 4, 3, 8]))
        outs.append("present")
        attrs["unidirectional"] = 1
    if bias_heads:
        ins += ["", g.w("ab", [1, 4, S, S], 0.5)]
    g.node("Attention", ins, outs, name="att", domain=MS, **attrs)
    _back(g, "att", vh)
    if past:
        g.output("present", shape=[2, 1, 4, S + 3, 8])
    return g.build(OPSETS)


def _mask_feeds(model, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    feeds = {"x": rng.standard_normal([1, S, 16]).astype(np.float32)}
    for i in model.graph.input:
        if i.name == "mask":
            n = i.type.tensor_type.shape.dim[1].dim_value
            feeds["mask"] = np.array([[1] * (n - 1) + [0]], np.int32)
        elif i.name == "past":
            feeds["past"] = rng.standard_normal([2, 1, 4, 3, 8]).astype(np.float32)
    return feeds


@pytest.mark.parametrize("form", ["plain", "qkv_hidden_sizes", "past_mask", "attention_bias"])
def test_attention(tmp_path, form):
    model = _build_attention(v_hidden=16 if form == "qkv_hidden_sizes" else None,
                             past=form == "past_mask", bias_heads=form == "attention_bias")
    comp = roundtrip(model, tmp_path, feeds=_mask_feeds(model), **WEAK)
    s = comp.spec()
    dv = 4 if form == "qkv_hidden_sizes" else 8
    # Q and K share heads H and head_dim D, V has its own head_dim V but the same heads
    vd = "D" if form == "past_mask" else "V"  # one cache axis holds K and V: D = V
    h = _match(f"cat(kron(H[4], D[8]), kron(H[4], D[8]), kron(H[4], {vd}[{dv}]))", s["w_qkv"][1])["H"]
    assert s["b_qkv"][0] == s["w_qkv"][1]
    assert s["w_in"][1] == s["w_qkv"][0] and is_secret(s["w_in"][1])
    _match(f"kron(H[4], {vd}[{dv}])", s["y.w"][0])
    assert s["y.w"][0].startswith(f"kron({h}[4]")
    if form == "attention_bias":
        assert s["ab"] == ["P", f"{h}[4]", "P", "P"]
    assert not comp.pins(), comp.pins()


def test_attention_rotary_pins_head_dim():
    """do_rotary inside Attention is not modelled: head_dim is pinned and reported."""
    g = _g()
    a = _front(g)
    g.node("Attention", [a, g.w("w_qkv", [32, 96]), g.w("b_qkv", [96])], ["att"], name="att",
           domain=MS, num_heads=4, do_rotary=1)
    _back(g, "att", 32)
    g.outputs[-1].type.tensor_type.shape.dim[0].dim_value = 1  # declared: no CPU kernel to run
    comp = eeonnx.check(g.build(OPSETS))
    s = comp.spec()
    _match("cat(kron(H[4], P), kron(H[4], P), kron(H[4], V[8]))", s["w_qkv"][1])
    assert "att" in pinned_nodes(comp)


# --------------------------------------------------------------------------
# MultiHeadAttention
# --------------------------------------------------------------------------
def _qkv(g: G, a: str, vh: int = 32):
    return _mm(g, a, "w_q", 32, 32), _mm(g, a, "w_k", 32, 32), _mm(g, a, "w_v", 32, vh)


@pytest.mark.parametrize("form", ["past", "v_head_size"])
def test_mha_bias_attention_bias(tmp_path, form):
    """Unpacked Q/K/V with projection bias and per-head attention_bias; with past/present
    caches, or with V's head size (4) differing from Q/K's (8). (onnxruntime's symbolic
    shape inference gives present_value the key's head size and no shape to qk, so those
    are not combined here.)"""
    past = form == "past"
    vh = 32 if past else 16
    g = _g()
    a = _front(g)
    q, k, v = _qkv(g, a, vh)
    ins = [q, k, v, g.w("b", [64 + vh], 0.1), "", g.w("ab", [1, 4, S, S + (3 if past else 0)], 0.5)]
    outs = ["att"]
    if past:
        ins += [g.input("pk", [1, 4, 3, 8]), g.input("pv", [1, 4, 3, 8])]
        outs += ["prk", "prv"]
    g.node("MultiHeadAttention", ins, outs, name="mha", domain=MS, num_heads=4)
    _back(g, "att", vh)
    if past:
        g.output("prk", shape=[1, 4, S + 3, 8])
        g.output("prv", shape=[1, 4, S + 3, 8])
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    m = _match("kron(H[4], D[8])", s["w_q"][1])
    assert s["w_k"][1] == s["w_q"][1]
    mv = _match(f"kron(H[4], V[{vh // 4}])", s["w_v"][1])
    assert mv["H"] == m["H"]
    assert s["y.w"][0] == s["w_v"][1]
    assert s["b"][0] == f"cat({s['w_q'][1]}, {s['w_k'][1]}, {s['w_v'][1]})"
    assert s["ab"] == ["P", f"{m['H']}[4]", "P", "P"]
    assert not comp.pins(), comp.pins()


@pytest.mark.parametrize("bias", [False, True])
def test_mha_bnsh_key_value(tmp_path, bias):
    """K and V given as BNSH tensors [B, H, L, D]: their head and head_dim axes are
    Q's classes (encode permutes those inputs)."""
    g = _g()
    a = _front(g)
    q = _mm(g, a, "w_q", 32, 32)
    g.input("k", [1, 4, 6, 8])
    g.input("v", [1, 4, 6, 8])
    ins = [q, "k", "v"] + ([g.w("b", [96], 0.3)] if bias else [])
    g.node("MultiHeadAttention", ins, ["att"], name="mha", domain=MS, num_heads=4)
    _back(g, "att", 32)
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    _match("kron(H[4], D[8])", s["w_q"][1])
    if bias:
        _match("cat(kron(H[4], D[8]), kron(H[4], D[8]), kron(H[4], V[8]))", s["b"][0])
    assert not comp.pins(), comp.pins()


def test_mha_packed_qkv_spec():
    """Packed QKV [B, L, H, 3, D] (no CPU kernel): the 3 axis is public, Q/K/V share D."""
    g = _g()
    g.input("x", [1, S, 16])
    r = g.node("Reshape", [_mm(g, "x", "w_in", 16, 96), g.ints("shape", [1, S, 4, 3, 8])])
    g.node("MultiHeadAttention", [r], ["att"], name="mha", domain=MS, num_heads=4)
    _back(g, "att", 32)
    s = eeonnx.check(g.build(OPSETS)).spec()
    m = _match("kron(H[4], P, D[8])", s["w_in"][1])
    assert s["y.w"][0] == f"kron({m['H']}[4], {m['D']}[8])"


# --------------------------------------------------------------------------
# GroupQueryAttention
# --------------------------------------------------------------------------
HD = 16  # the CPU kernel with rotary wants head_size % 16 == 0


def _gqa(interleaved: int = 0, rotary: bool = True, packed: bool = False, past: bool = False):
    g = _g()
    g.input("x", [1, 1 if past else S, 16])
    seq = 1 if past else S
    if packed:
        ins = [_mm(g, "x", "w_qkv", 16, 8 * HD), "", ""]
    else:
        ins = [_mm(g, "x", "w_q", 16, 4 * HD), _mm(g, "x", "w_k", 16, 2 * HD), _mm(g, "x", "w_v", 16, 2 * HD)]
    total = seq + (4 if past else 0)
    if past:
        # a shared buffer (past = present = max length 8): 4 cached tokens, 1 new
        ins += [g.input("pk", [1, 2, 8, HD]), g.input("pv", [1, 2, 8, HD])]
    else:
        ins += ["", ""]
    ins += [g.const("seqlens", np.array([total - 1], np.int32)), g.const("total", np.array(total, np.int32))]
    attrs = {"num_heads": 4, "kv_num_heads": 2}
    if rotary:
        ins += [g.w("cos", [16, HD // 2], 1.0), g.w("sin", [16, HD // 2], 1.0)]
        attrs.update(do_rotary=1, rotary_interleaved=interleaved)
    else:
        ins += ["", ""]
    if past:
        ins += ["", "", g.w("sink", [4], 1.0)]
    # without a past, present_key/value are left out: onnxruntime's symbolic shape inference
    # cannot size them (it copies the past's shape, right for a shared buffer)
    outs = ["att", "prk", "prv"] if past else ["att"]
    g.node("GroupQueryAttention", ins, outs, name="gqa", domain=MS, **attrs)
    g.node("MatMul", ["att", g.w("y.w", [4 * HD, 8])], outputs="y")
    g.output("y", shape=[1, seq, 8])
    if past:
        g.output("prk", shape=[1, 2, 8, HD])
        g.output("prv", shape=[1, 2, 8, HD])
    return g.build(OPSETS)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_gqa_rotary(tmp_path, interleaved):
    """Query heads Kron(kv_heads, group); head_dim of Q and K pair-preserving with the
    cos/sin caches' class A; V has its own head_dim."""
    comp = roundtrip(_gqa(interleaved), tmp_path, **WEAK)
    s = comp.spec()
    d = "A[8], P" if interleaved else "cat(A[8], A[8])"
    q = _match(f"kron(K[2], G[2], {d})", s["w_q"][1])
    k, a, g = q["K"], q["A"], q["G"]
    assert s["w_k"][1] == (f"kron({k}[2], {a}[8], P)" if interleaved else f"kron({k}[2], cat({a}[8], {a}[8]))")
    assert s["cos"] == ["P", f"{a}[8]"] and s["sin"] == s["cos"]
    v = _match("kron(K[2], V[16])", s["w_v"][1])
    assert v["K"] == k
    assert s["y.w"][0] == f"kron({k}[2], {g}[2], {v['V']}[16])"
    assert not comp.pins(), comp.pins()


def test_gqa_packed_past_head_sink(tmp_path):
    """Packed QKV, past caches as inputs and head_sink [num_heads] on the query heads."""
    model = _gqa(rotary=False, packed=True, past=True)
    comp = roundtrip(model, tmp_path, **WEAK)
    s = comp.spec()
    m = _match("cat(kron(K[2], G[2], D[16]), kron(K[2], D[16]), kron(K[2], V[16]))", s["w_qkv"][1])
    assert s["sink"] == [f"kron({m['K']}[2], {m['G']}[2])"]
    assert s["y.w"][0] == f"kron({m['K']}[2], {m['G']}[2], {m['V']}[16])"
    assert not comp.pins(), comp.pins()


def test_gqa_quantised_cache_pins():
    """A quantised KV cache (k_scale / v_scale) is not modelled: every class the node
    touches is pinned, and the report names it."""
    g = _g()
    g.input("x", [1, 1, 16])
    ins = [_mm(g, "x", "w_qkv", 16, 8 * HD), "", "", g.input("pk", [1, 2, 8, HD]), g.input("pv", [1, 2, 8, HD]),
           g.const("seqlens", np.array([4], np.int32)), g.const("total", np.array(5, np.int32)),
           "", "", "", "", "", g.floats("ks", [0.5]), g.floats("vs", [0.5])]
    g.node("GroupQueryAttention", ins, ["att", "prk", "prv"], name="gqa", domain=MS, num_heads=4,
           kv_num_heads=2, k_quant_type="PER_TENSOR", v_quant_type="PER_TENSOR")
    g.node("MatMul", ["att", g.w("y.w", [4 * HD, 8])], outputs="y")
    g.output("y", shape=[1, 1, 8])
    g.output("prk", shape=[1, 2, 8, HD])
    g.output("prv", shape=[1, 2, 8, HD])
    comp = eeonnx.check(g.build(OPSETS))
    s = comp.spec()
    assert s["w_qkv"][1] == "P" and s["y.w"][0] == "P", s
    assert is_secret(s["w_qkv"][0])
    assert "gqa" in pinned_nodes(comp)


# --------------------------------------------------------------------------
# RotaryEmbedding
# --------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["half", "interleaved", "partial", "no_num_heads", "bnsh"])
def test_rotary_embedding(tmp_path, form):
    g = _g()
    a = _front(g)
    half = 2 if form == "partial" else 4
    attrs = {"interleaved": int(form == "interleaved")}
    if form not in ("no_num_heads", "bnsh"):
        attrs["num_heads"] = 4
    if form == "partial":
        attrs["rotary_embedding_dim"] = 4
    x = a
    if form == "bnsh":
        x = g.node("Transpose", [g.node("Reshape", [a, g.ints("s4", [1, S, 4, 8])])], perm=[0, 2, 1, 3])
    r = g.node("RotaryEmbedding", [x, g.ints("pos", [list(range(S))]), g.w("cos", [16, half], 1.0),
                                   g.w("sin", [16, half], 1.0)], name="rot", domain=MS, **attrs)
    if form == "bnsh":
        r = g.node("Reshape", [g.node("Transpose", [r], perm=[0, 2, 1, 3]), g.ints("s3", [1, S, 32])])
    _back(g, r, 32)
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    d = {"half": "cat(A[4], A[4])", "interleaved": "A[4], P", "partial": "cat(A[2], A[2], R[4])",
         "no_num_heads": "cat(A[4], A[4])", "bnsh": "cat(A[4], A[4])"}[form]
    m = _match(f"kron(H[4], {d})", s["w_in"][1])
    assert s["cos"] == ["P", f"{m['A']}[{half}]"] and s["sin"] == s["cos"]
    assert s["y.w"][0] == s["w_in"][1]
    assert not comp.pins(), comp.pins()


# --------------------------------------------------------------------------
# normalisations
# --------------------------------------------------------------------------
#: omitted optional outputs have empty names (["y", "", "", "sum"], as the optimizer
#: writes Skip*LayerNormalization): normalize's SSA check must not count them


@pytest.mark.parametrize("with_sum", [False, True])
def test_skip_layer_norm(tmp_path, with_sum):
    """output and input_skip_bias_sum follow the input; gamma, beta and bias its last axis.
    (mean / inv_std_var are left out: onnxruntime's symbolic shape inference cannot size
    them, and the optimizer never asks for them.)"""
    g = _g()
    g.input("x", [1, S, 16])
    a, b = _mm(g, "x", "w1", 16, 16), _mm(g, "x", "w2", 16, 16)
    g.node("SkipLayerNormalization", [a, b, g.w("gamma", [16], 0.3, 1.0), g.w("beta", [16], 0.1),
                                      g.w("bias", [16], 0.1)], ["n", "", "", "sum"] if with_sum else ["n"],
           name="sln", domain=MS, epsilon=1e-5)
    _back(g, g.node("Add", ["n", "sum"]) if with_sum else "n", 16)
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    c = s["w1"][1]
    assert is_secret(c) and s["w2"][1] == c and s["y.w"][0] == c
    assert s["gamma"][0] == s["beta"][0] == s["bias"][0] == c
    assert not comp.pins(), comp.pins()


@pytest.mark.parametrize("op", ["SkipSimplifiedLayerNormalization",
                                "SimplifiedLayerNormalization"])
def test_simplified_layer_norms(tmp_path, op):
    g = _g(check=op.startswith("Skip"))  # onnx's checker has no schema for the default-domain one
    g.input("x", [1, S, 16])
    a = _mm(g, "x", "w1", 16, 16)
    if op == "SimplifiedLayerNormalization":  # default domain, as the optimizer writes it
        g.node(op, [a, g.w("gamma", [16], 0.3, 1.0)], ["n", "inv"], name="norm", axis=-1)
        out = g.node("Mul", ["n", "inv"])
    else:
        g.node(op, [a, _mm(g, "x", "w2", 16, 16), g.w("gamma", [16], 0.3, 1.0), g.w("bias", [16], 0.1)],
               ["n", "", "", "sum"], name="norm", domain=MS)
        out = g.node("Add", ["n", "sum"])
    _back(g, out, 16)
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    assert is_secret(s["w1"][1]) and s["gamma"][0] == s["w1"][1] == s["y.w"][0]
    assert not comp.pins(), comp.pins()


def test_embed_layer_norm(tmp_path):
    """input_ids' values index the word table's rows (encode maps them); position rows are
    public; the hidden class runs through every table, gamma/beta and embedding_sum."""
    g = _g()
    g.input("ids", [1, S], INT64)
    g.input("mask", [1, S], INT64)
    ids = g.node("Cast", ["ids"], to=INT32)
    mask = g.node("Cast", ["mask"], to=INT32)
    g.node("EmbedLayerNormalization",
           [ids, "", g.w("word", [50, 16], 1.0), g.w("pos", [16, 16], 1.0), "",
            g.w("gamma", [16], 0.3, 1.0), g.w("beta", [16], 0.1), mask],
           ["e", "mask_index", "esum"], name="emb", domain=MS, epsilon=1e-5)
    _back(g, g.node("Add", ["e", "esum"]), 16)
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 50, [1, S]).astype(np.int64), "mask": np.ones([1, S], np.int64)}
    comp = roundtrip(g.build(OPSETS), tmp_path, feeds=feeds, **WEAK)
    s = comp.spec()
    assert re.fullmatch(r"c\d+\[50\]", s["word"][0]), s["word"]
    h = s["word"][1]
    assert is_secret(h) and s["pos"] == ["P", h] and s["gamma"][0] == s["beta"][0] == s["y.w"][0] == h
    assert not comp.pins(), comp.pins()


def test_embed_layer_norm_segments_spec():
    """segment_ids index the segment table's rows like input_ids the word table's."""
    g = _g()
    g.input("ids", [1, S], INT32)
    g.input("seg", [1, S], INT32)
    g.node("EmbedLayerNormalization",
           ["ids", "seg", g.w("word", [50, 16], 1.0), g.w("pos", [16, 16], 1.0), g.w("segw", [3, 16], 1.0),
            g.w("gamma", [16], 0.3, 1.0), g.w("beta", [16], 0.1)], ["e"], name="emb", domain=MS)
    _back(g, "e", 16)
    comp = eeonnx.check(g.build(OPSETS))
    s = comp.spec()
    assert re.fullmatch(r"c\d+\[3\]", s["segw"][0]) and s["segw"][1] == s["word"][1]


# --------------------------------------------------------------------------
# activations and bias adds
# --------------------------------------------------------------------------
def test_gelu_family(tmp_path):
    g = _g()
    a = _front(g)
    t = g.node("FastGelu", [a, g.w("b1", [32], 0.1)], domain=MS)
    t = g.node("BiasGelu", [t, g.w("b2", [32], 0.1)], domain=MS)
    t = g.node("Gelu", [t], domain=MS)
    t = g.node("QuickGelu", [t], domain=MS, alpha=1.702)
    t = g.node("FastGelu", [t], domain=MS)
    _back(g, t, 32)
    comp = roundtrip(g.build(OPSETS), tmp_path, **WEAK)
    s = comp.spec()
    c = s["w_in"][1]
    assert is_secret(c) and s["b1"][0] == s["b2"][0] == s["y.w"][0] == c
    assert not comp.pins(), comp.pins()


def test_bias_add_and_split_gelu_spec():
    """No CPU kernels: layouts only. BiasSplitGelu's input is Cat(A, A), its output A."""
    g = _g()
    a = _front(g, 32)
    t = g.node("BiasAdd", [a, g.w("b1", [32], 0.1), _mm(g, "x", "w_skip", 16, 32)], domain=MS)
    t = g.node("BiasSplitGelu", [t, g.w("b2", [32], 0.1)], domain=MS)
    _back(g, t, 16)
    s = eeonnx.check(g.build(OPSETS)).spec()
    m = _match("cat(A[16], A[16])", s["w_in"][1])
    assert s["b1"][0] == s["b2"][0] == s["w_skip"][1] == s["w_in"][1]
    assert s["y.w"][0] == f"{m['A']}[16]"


def test_attention_cache_is_server_state(tmp_path):
    """past -> present of a fused Attention is found from the op (registry ``state=``),
    not from names: it bypasses encode/decode and is listed in the manifest."""
    model = _build_attention(v_hidden=None, past=True, bias_heads=False)
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    comp = eeonnx.compile(src, tmp_path / "out", min_key_bits=0)
    past = next(i.name for i in model.graph.input if i.name == "past")
    present = model.graph.output[1].name
    assert [(s.input, s.output, s.axis) for s in comp.state] == [(past, present, 3)]
    enc = onnx.load(tmp_path / "out" / "client" / "encode.onnx")
    assert past not in [i.name for i in enc.graph.input]
