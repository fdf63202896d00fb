"""LSTM, GRU, RNN: the hidden axis is one secret class, shared by every gate block.

Each model puts the recurrent layer between secret layers: x -> MatMul(w_in) + b_in ->
OP -> MatMul(w_out) per output, so the input features of the layer come from a
weight and every output goes through one. The checks: exact roundtrip on
onnxruntime (``helpers.roundtrip``), W/R/B/P axes are ``kron(P, H)`` (the gate blocks
stacked, each permuted by the same H), the states and outputs carry H, and nothing is
pinned. ``layout=1`` (batch first) is not run by onnxruntime's CPU kernels, so it is
checked on onnx's reference evaluator instead.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

import eeonnx
from helpers import G, assert_close, classes_of, compile_plain, drawn_identity, is_secret, roundtrip, server_name

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, B, I, F, HID = 4, 2, 5, 6, 8  # sequence, batch, input, features into the layer, hidden


def rnn_model(op: str, direction: str = "forward", *, opset: int = 14, layout: int = 0,
              seq_lens: bool = False, init_state: str | None = None, peepholes: bool = False,
              bias: bool = True, outputs=("Y", "Y_h"), merge_directions: bool = False,
              seed: int = 0, **attrs) -> onnx.ModelProto:
    """x[T,B,I] (or [B,T,I]) -> MatMul(w_in[I,F]) + b_in -> OP(hidden HID) -> MatMul(w_<out>[HID, 3]).

    ``init_state``: None, "input" (initial_h/initial_c are model inputs) or "weight"
    (initializers). ``merge_directions``: Y -> Transpose -> Reshape [T, B, dir*HID] ->
    MatMul(w_Ycat), the usual bidirectional pattern.
    """
    g = G(opset=opset, seed=seed)
    gates = GATES[op]
    nd = 2 if direction == "bidirectional" else 1
    g.input("x", [B, T, I] if layout else [T, B, I])
    a = g.node("Add", [g.node("MatMul", ["x", g.w("w_in", [I, F])]), g.w("b_in", [F], 0.1)])
    ins = [a, g.w("W", [nd, gates * HID, F]), g.w("R", [nd, gates * HID, HID])]
    ins.append(g.w("B", [nd, 2 * gates * HID], 0.1) if bias else "")
    if seq_lens:
        ins.append(g.input("seq_lens", [B], TensorProto.INT32))
    else:
        ins.append("")
    state_shape = [B, nd, HID] if layout else [nd, B, HID]
    for name in ("h0", "c0") if op == "LSTM" else ("h0",):
        if init_state == "input":
            ins.append(g.input(name, state_shape))
        elif init_state == "weight":
            ins.append(g.w(name, state_shape, 0.5))
        else:
            ins.append("")
    if peepholes:
        ins.append(g.w("P", [nd, 3 * HID], 0.3))
    while ins and ins[-1] == "":
        ins.pop()
    names = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    outs = [f"{op}_{o}" if o in outputs else "" for o in names]
    while outs[-1] == "":
        outs.pop()
    if layout:
        attrs["layout"] = 1
    g.node(op, ins, outs, name="rnn", hidden_size=HID, direction=direction, **attrs)
    for o in outputs:
        src = f"{op}_{o}"
        if o == "Y" and merge_directions:
            perm = [0, 1, 2, 3] if layout else [0, 2, 1, 3]  # -> [.., .., dir, HID]
            t = g.node("Transpose", [src], perm=perm)
            src = g.node("Reshape", [t, g.ints("ycat_shape", [0, 0, nd * HID])])
            g.node("MatMul", [src, g.w("w_Ycat", [nd * HID, 3])], outputs=f"out_{o}")
        else:
            g.node("MatMul", [src, g.w(f"w_{o}", [HID, 3])], outputs=f"out_{o}")
        g.output(f"out_{o}")
    return g.build()


def hidden_class(comp, op: str, *, bias=True, init=None, peepholes=False, outputs=("Y", "Y_h"),
                 merged=False):
    """One class H of size HID: R.2 = H; W.1 = R.1 = kron(P, H) (gate blocks); B.1 too;
    the input features are W.2 = w_in.1; every output weight reads H; no pins."""
    s = comp.spec()
    h = s["R"][2]
    assert is_secret(h) and h.endswith(f"[{HID}]") and len(classes_of(h)) == 1, s
    stacked = h if op == "RNN" else f"kron(P, {h})"
    assert s["W"][1] == stacked and s["R"][1] == stacked, s
    assert s["W"][0] == s["R"][0] == "P", s
    assert is_secret(s["W"][2]) and s["W"][2] == s["w_in"][1] == s["b_in"][0], s
    assert not classes_of(s["W"][2]) & classes_of(h), s
    if bias:
        assert s["B"][1] == f"kron(P, {h})", s
    if peepholes:
        assert s["P"][1] == f"kron(P, {h})", s
    if init == "weight":
        for name in ("h0", "c0") if op == "LSTM" else ("h0",):
            # a static batch axis in an initializer anchors a (batch) class of its own
            assert s[name][-1] == h and s[name][0] == "P" and s[name][1] != h, s
    for o in outputs:
        if o == "Y" and merged:
            assert s["w_Ycat"][0] in (h, f"kron(P, {h})"), s
        else:
            assert s[f"w_{o}"][0] == h, s
    assert not comp.pins(), comp.pins()
    return h


# --------------------------------------------------------------------------
# every op x direction, opset 14, layout 0
# --------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_directions(op, direction, tmp_path):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    comp = roundtrip(rnn_model(op, direction, outputs=outputs), tmp_path)
    hidden_class(comp, op, outputs=outputs)


@pytest.mark.parametrize("opset", [7, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_opsets(op, opset, tmp_path):
    comp = roundtrip(rnn_model(op, "bidirectional", opset=opset), tmp_path)
    hidden_class(comp, op)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_no_bias_weight_state_and_seq_lens(op, tmp_path):
    """Optional inputs: no B, initial states as initializers, sequence_lens from the client
    (lengths on the public sequence axis: passed unchanged)."""
    m = rnn_model(op, "bidirectional", bias=False, init_state="weight", seq_lens=True)
    feeds = {"x": np.random.default_rng(1).standard_normal([T, B, I]).astype(np.float32),
             "seq_lens": np.array([T, 2], dtype=np.int32)}
    comp = roundtrip(m, tmp_path, feeds=feeds)
    hidden_class(comp, op, bias=False, init="weight")
    (lens,) = [c for c in comp.inputs if c.name == "seq_lens"]
    # the lengths move with their batch rows (h0's batch axis), their values are unchanged
    assert lens.value_index is None and lens.layout == [comp.spec()["h0"][1]], lens


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_initial_state_inputs_are_encoded(op, tmp_path):
    """initial_h/initial_c from the client: encode permutes their hidden axis by H."""
    m = rnn_model(op, "bidirectional", init_state="input")
    comp = roundtrip(m, tmp_path)
    h = hidden_class(comp, op)
    for c in comp.inputs:
        if c.name in ("h0", "c0"):
            assert c.layout == ["P", "P", h], c


def test_lstm_peepholes_activations_clip_input_forget(tmp_path):
    m = rnn_model("LSTM", "bidirectional", peepholes=True, init_state="input", outputs=("Y", "Y_h", "Y_c"),
                  activations=["HardSigmoid", "Tanh", "Softsign"] * 2, activation_alpha=[0.3, 0.0, 0.0] * 2,
                  activation_beta=[0.4, 0.0, 0.0] * 2, clip=2.0, input_forget=1)
    comp = roundtrip(m, tmp_path)
    hidden_class(comp, "LSTM", peepholes=True, outputs=("Y", "Y_h", "Y_c"))


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr, tmp_path):
    m = rnn_model("GRU", "forward", linear_before_reset=lbr, init_state="input",
                  activations=["Sigmoid", "LeakyRelu"], activation_alpha=[0.0, 0.2])
    comp = roundtrip(m, tmp_path)
    hidden_class(comp, "GRU")


def test_rnn_activation_and_clip(tmp_path):
    m = rnn_model("RNN", "reverse", activations=["Relu"], clip=1.5, init_state="input")
    comp = roundtrip(m, tmp_path)
    hidden_class(comp, "RNN")


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_bidirectional_merged_directions(op, tmp_path):
    """Y [T, 2, B, H] -> [T, B, 2, H] -> [T, B, 2H]: the merged axis is kron(P[2], H)."""
    m = rnn_model(op, "bidirectional", merge_directions=True)
    comp = roundtrip(m, tmp_path)
    h = hidden_class(comp, op, merged=True)
    assert comp.spec()["w_Ycat"][0] == f"kron(P, {h})"


def test_input_axis_without_weight_before(tmp_path):
    """The layer reads the client's input directly: encode permutes x's features by W.2's class."""
    g = G(opset=14)
    g.input("x", [T, B, I])
    _, yh = g.node("LSTM", ["x", g.w("W", [1, 4 * HID, I]), g.w("R", [1, 4 * HID, HID])], n_out=2,
                   hidden_size=HID)
    g.node("MatMul", [yh, g.w("w_out", [HID, 3])], outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    (x,) = comp.inputs
    assert is_secret(s["W"][2]) and x.layout == ["P", "P", s["W"][2]], (s, x)
    assert s["w_out"][0] == s["R"][2], s


def test_two_stacked_lstms(tmp_path):
    """Layer 2 reads layer 1's hidden state: W2.2 is layer 1's H; layer 2 has its own H."""
    g = G(opset=14)
    g.input("x", [T, B, I])
    y1, _ = g.node("LSTM", ["x", g.w("W1", [1, 4 * HID, I]), g.w("R1", [1, 4 * HID, HID])], n_out=2,
                   hidden_size=HID)
    sq = g.node("Squeeze", [y1, g.ints("ax", [1])])
    y2, yh2 = g.node("LSTM", [sq, g.w("W2", [1, 4 * 6, HID]), g.w("R2", [1, 4 * 6, 6])], n_out=2,
                     hidden_size=6)
    g.node("MatMul", [yh2, g.w("w_out", [6, 3])], outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert s["W2"][2] == s["R1"][2] and is_secret(s["R1"][2]), s
    assert s["R2"][2] != s["R1"][2] and is_secret(s["R2"][2]), s


def test_sequence_axis_is_pinned_and_reported(tmp_path):
    """A weight on the sequence axis (a learned per-step offset) cannot be permuted: the
    recurrence reads steps in order; the loss is reported and the result stays exact."""
    g = G(opset=14)
    g.input("x", [T, B, I])
    a = g.node("Add", ["x", g.w("steps", [T, 1, I])])
    _, yh = g.node("GRU", [a, g.w("W", [1, 3 * HID, I]), g.w("R", [1, 3 * HID, HID])], n_out=2,
                   hidden_size=HID, name="gru")
    g.node("MatMul", [yh, g.w("w_out", [HID, 3])], outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert s["steps"][0] == "P" and is_secret(s["steps"][2]), s
    assert [p["node"] for p in comp.pins()] == ["gru"], comp.pins()
    assert "sequence" in comp.pins()[0]["reason"]


# --------------------------------------------------------------------------
# layout=1 (batch first): onnx's reference evaluator on both sides
# --------------------------------------------------------------------------
def _reference_roundtrip(model, tmp_path, feeds):
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    out = tmp_path / "out"
    comp = compile_plain(src, out)
    want = ReferenceEvaluator(model).run(None, feeds)
    client = eeonnx.Client(out)
    server = ReferenceEvaluator(str(out / "server" / "model.onnx"))
    enc = client.encode(feeds)
    srv_in = [i.name for i in onnx.load(out / "server" / "model.onnx").graph.input]
    served = server.run(None, {k: enc[k] for k in srv_in if k in enc})
    srv_out = [o.name for o in onnx.load(out / "server" / "model.onnx").graph.output]
    dec = client.decode(dict(zip(srv_out, served)))
    lucky = {c.name for c in comp.outputs if drawn_identity(c)}  # small classes drawn as the identity
    for o, w in zip(model.graph.output, want):
        assert_close(dec[o.name], w, 1e-4, what=o.name)
        assert o.name in lucky or not np.allclose(dict(zip(srv_out, served))[server_name(comp, o.name)], w)
    return comp


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_layout_batch_first(op, tmp_path):
    outputs = ("Y", "Y_h", "Y_c") if op == "LSTM" else ("Y", "Y_h")
    m = rnn_model(op, "bidirectional", layout=1, init_state="input", outputs=outputs)
    rng = np.random.default_rng(3)
    state = rng.standard_normal([B, 2, HID]).astype(np.float32)
    feeds = {"x": rng.standard_normal([B, T, I]).astype(np.float32), "h0": state}
    if op == "LSTM":
        feeds["c0"] = state * 0.5
    comp = _reference_roundtrip(m, tmp_path, feeds)
    h = hidden_class(comp, op, outputs=outputs)
    for c in comp.inputs:
        if c.name in ("h0", "c0"):
            assert c.layout == ["P", "P", h], c
