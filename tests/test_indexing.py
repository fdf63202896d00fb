"""Ops whose integers are positions: ArgMax/ArgMin and TopK (results), GatherElements,
ScatterElements, ScatterND (operands); and control flow (If, Loop, Scan).

Most models are the ``helpers.sandwich``: x [1,3,4,4] -> conv1 (3->8) -> OP -> conv2 -> y,
so the op sits between two secret layers. Each test checks exactness on onnxruntime and
what the analysis says: which axes stay secret, which are pinned and by which node.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import eeonnx
from eeonnx.errors import ClearBoundaryError, UnsupportedOpError
from helpers import (CPU, FLOAT, INT64, G, assert_close, compile_plain, drawn_identity, is_secret, pinned_nodes,
                     random_feeds, roundtrip, run_original, sandwich)

C1, C2 = "conv1.w", "conv2.w"


def pins_of(comp, node):
    return [p for p in comp.pins() if p["node"] == node]


def exact(model, tmp_path, feeds=None, **kw):
    """Compile and check decode(server(encode(x))) == original(x) on onnxruntime CPU
    (for models whose integer inputs are permuted by position *and* mapped by value,
    which ``helpers.roundtrip``'s bijection check does not expect)."""
    tmp_path = Path(tmp_path)
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    comp = compile_plain(src, tmp_path / "out", **kw)
    feeds = feeds if feeds is not None else random_feeds(model)
    client = eeonnx.Client(tmp_path / "out")
    server = eeonnx.Server(tmp_path / "out" / "server" / "model.onnx", providers=CPU)
    enc = client.encode(feeds)
    lucky = {c.name for c in comp.inputs if drawn_identity(c)}  # small classes drawn as the identity
    for name, x in feeds.items():
        wire = [c["wire_name"] for c in client.manifest["inputs"] if c["name"] == name][0]
        assert name in lucky or not np.array_equal(enc[wire], x), f"input '{name}' reaches the server unchanged"
    served = server.run(enc)
    got = client.decode(served)
    for o, want in zip(model.graph.output, run_original(model, feeds)):
        assert_close(got[o.name], want, 1e-4, what=o.name)
    return comp


# --------------------------------------------------------------------------
# ArgMax / ArgMin
# --------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("opset,extra", [(11, {}), (13, {"select_last_index": 1}), (13, {"keepdims": 0})])
def test_arg_reduce_over_space_keeps_channels(op, opset, extra, tmp_path):
    """ArgMax over a spatial axis: the values index a public axis, the channel axis of the
    result follows the input (decode un-permutes it), nothing is pinned."""
    g = G(opset=opset)
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    g.node(op, [a], outputs="idx", name="arg", axis=3, **extra)
    g.output("idx", INT64)
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and not comp.pins(), (s, comp.pins())
    (out,) = comp.outputs
    assert out.layout[1] == s[C1][0] and out.value_index is None, out


def _argmax_channels(bias: float):
    """conv1 -> Relu -> ArgMax over channels; with a negative bias most pixels are all-zero
    after the Relu: ties, where the first index of the maximum depends on the order."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    w = g.w("conv1.w", [8, 3, 1, 1])
    b = g.floats("conv1.b", np.full([8], bias, np.float32) + np.arange(8, dtype=np.float32) * 0.01)
    a = g.node("Relu", [g.node("Conv", ["x", w, b], kernel_shape=[1, 1])])
    g.node("ArgMax", [a], outputs="idx", name="argmax", axis=1)
    g.output("idx", INT64)
    return g.build()


@pytest.mark.parametrize("bias", [0.0, -5.0])
def test_argmax_over_channels_pins_them(bias, tmp_path):
    """Ties (bias -5: all channels are 0 after Relu) make the index depend on the order:
    the channel axis is pinned and named; the result index is then content in the clear."""
    m = _argmax_channels(bias)
    with pytest.raises(ClearBoundaryError):
        compile_plain(m, tmp_path / "refused")
    comp = roundtrip(m, tmp_path / "ok", allow_clear=["idx"])
    s = comp.spec()
    assert s[C1][0] == "P" and s["conv1.b"][0] == "P" and is_secret(s[C1][1]), s
    (p,) = pins_of(comp, "argmax")
    assert "ties" in p["reason"], p


def test_argmax_ids_into_a_table(tmp_path):
    """Greedy decoding: ids = ArgMax(logits) index an embedding table. The vocabulary axis is
    pinned by the ArgMax (ties), and the table's rows with it (the ids carry that axis)."""
    g = G()
    g.input("x", [2, 6])
    logits = g.node("MatMul", ["x", g.w("W_vocab", [6, 5])])
    ids = g.node("ArgMax", [logits], name="greedy", axis=-1, keepdims=0)
    e = g.node("Gather", [g.w("emb", [5, 8]), ids], axis=0)
    g.node("MatMul", [e, g.w("W_out", [8, 4])], outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert s["W_vocab"][1] == "P" and s["emb"][0] == "P", s
    assert is_secret(s["W_vocab"][0]) and is_secret(s["emb"][1]), s
    assert "greedy" in pinned_nodes(comp), comp.pins()


# --------------------------------------------------------------------------
# TopK
# --------------------------------------------------------------------------
def _topk_values(opset=11, k=3, relu=True, **attrs):
    def body(g, a):
        if relu:
            a = g.node("Relu", [a])  # many equal zeros: ties do not change the values
        kin = [g.ints("k", [k])] if opset >= 10 else []
        kat = {} if opset >= 10 else {"k": k}
        vals, _ = g.node("TopK", [a] + kin, name="topk", n_out=2, axis=1, **kat, **attrs)
        return vals, k
    return sandwich(body, opset=opset)


@pytest.mark.parametrize("opset", [9, 10, 11])
def test_topk_values_keep_channels_secret(opset, tmp_path):
    """Top-k values in sorted order are the same numbers whatever the channel order: conv1's
    channels stay secret; the k axis is rank order (positional), so conv2 reads it in the clear."""
    comp = roundtrip(_topk_values(opset), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s["conv1.b"][0] == s[C1][0], s
    assert s[C2][1] == "P" and is_secret(s[C2][0]), s
    assert not comp.pins(), comp.pins()


def test_topk_smallest_values(tmp_path):
    comp = roundtrip(_topk_values(11, k=5, largest=0), tmp_path)
    assert is_secret(comp.spec()[C1][0]) and not comp.pins()


def test_topk_unsorted_pins(tmp_path):
    """sorted=0: the result order is implementation-defined (may follow the input): pinned."""
    comp = roundtrip(_topk_values(11, sorted=0), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P", s
    (p,) = pins_of(comp, "topk")
    assert "sorted=0" in p["reason"], p


def test_topk_indices_pin_the_axis(tmp_path):
    """Used indices: ties break by position, so the axis is pinned (and named); the values
    and the (clear) indices are exact."""
    g = G(opset=11)
    g.input("x", [1, 3, 4, 4])
    a = g.node("Relu", [g.conv("x", 3, 8, name="conv1")])
    vals, idx = g.node("TopK", [a, g.ints("k", [3])], ["vals", "idx"], name="topk", axis=1)
    g.conv(vals, 3, 4, name="conv2", outputs="y")
    g.output("y")
    g.output("idx", INT64)
    comp = roundtrip(g.build(), tmp_path, allow_clear=["idx"])
    s = comp.spec()
    assert s[C1][0] == "P" and is_secret(s[C1][1]) and is_secret(s[C2][0]), s
    (p,) = pins_of(comp, "topk")
    assert "ties" in p["reason"], p


def test_topk_over_space_keeps_channels(tmp_path):
    """TopK (values and indices) along a spatial axis: channels follow the input."""
    g = G(opset=11)
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    vals, idx = g.node("TopK", [a, g.ints("k", [2])], ["vals", "idx"], name="topk", axis=-1)
    g.conv(vals, 8, 4, name="conv2", outputs="y")
    g.output("y")
    g.output("idx", INT64)
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s[C2][1] and not comp.pins(), s
    idx_out = [c for c in comp.outputs if c.name == "idx"][0]
    assert idx_out.layout[1] == s[C1][0] and idx_out.value_index is None, idx_out


# --------------------------------------------------------------------------
# GatherElements
# --------------------------------------------------------------------------
def test_gather_elements_constant_indices_pin_the_axis(tmp_path):
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 8, [1, 8, 4, 4])

    def body(g, a):
        return g.node("GatherElements", [a, g.ints("idx", idx)], name="ge", axis=1), 8

    comp = roundtrip(sandwich(body, opset=13), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P" and is_secret(s[C1][1]), s
    assert "ge" in pinned_nodes(comp), comp.pins()


def test_gather_elements_along_space_keeps_channels(tmp_path):
    """Constant indices along a spatial axis: the channel positions are tied through."""
    rng = np.random.default_rng(6)
    idx = rng.integers(-4, 4, [1, 8, 4, 4])

    def body(g, a):
        return g.node("GatherElements", [a, g.ints("idx", idx)], name="ge", axis=3), 8

    comp = roundtrip(sandwich(body, opset=11), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s[C2][1] and s["idx"][1] == s[C1][0], s
    assert not comp.pins(), comp.pins()


def test_gather_elements_partial_axis_is_pinned(tmp_path):
    """Indices cover channels 0..4 of 8 (a prefix: positional) -> channels pinned."""
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 4, [1, 5, 4, 4])

    def body(g, a):
        return g.node("GatherElements", [a, g.ints("idx", idx)], name="ge", axis=3), 5

    comp = roundtrip(sandwich(body, opset=13), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P", s
    assert any("part" in p["reason"] for p in pins_of(comp, "ge")), comp.pins()


def _gather_elements_ids(c_idx: int):
    """The client picks channels per pixel: idx [1, c_idx, 4, 4] (int64 input) into conv1's
    channels."""
    g = G(opset=13)
    g.input("x", [1, 3, 4, 4])
    g.input("idx", [1, c_idx, 4, 4], INT64)
    a = g.conv("x", 3, 8, name="conv1")
    b = g.node("GatherElements", [a, "idx"], name="ge", axis=1)
    g.conv(b, c_idx, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def test_gather_elements_client_indices_are_mapped(tmp_path):
    """Indices from the client carry conv1's channel class on their values (like token ids):
    encode maps them, the channels stay secret."""
    comp = roundtrip(_gather_elements_ids(1), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and not comp.pins(), s
    (ids,) = [c for c in comp.inputs if c.name == "idx"]
    assert ids.value_layout == s[C1][0], ids


def test_gather_elements_client_indices_values_and_positions(tmp_path):
    """idx [1,5,4,4]: its values carry conv1's channels, its positions conv2's inputs."""
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal([1, 3, 4, 4]).astype(np.float32),
             "idx": rng.integers(-8, 8, [1, 5, 4, 4])}
    comp = exact(_gather_elements_ids(5), tmp_path, feeds)
    s = comp.spec()
    (ids,) = [c for c in comp.inputs if c.name == "idx"]
    assert ids.value_layout == s[C1][0] and is_secret(s[C1][0]), (ids, s)
    assert ids.layout[1] == s[C2][1] and is_secret(s[C2][1]), (ids, s)
    assert not comp.pins(), comp.pins()


@pytest.mark.parametrize("src", ["ArgMax", "TopK"])
def test_gather_elements_of_argmax_or_topk(src, tmp_path):
    """x.gather(1, x.argmax(1, keepdim=True)) / the top-k gather: the indices come from the
    op that pins the axis (ties), so GatherElements' data axis is that pinned class."""
    def body(g, a):
        a = g.node("Relu", [a])
        if src == "ArgMax":
            idx = g.node("ArgMax", [a], name="src", axis=1)
        else:
            _, idx = g.node("TopK", [a, g.ints("k", [2])], name="src", n_out=2, axis=1)
        return g.node("GatherElements", [a, idx], name="ge", axis=1), 1 if src == "ArgMax" else 2

    comp = roundtrip(sandwich(body, opset=13), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P" and is_secret(s[C1][1]) and is_secret(s[C2][0]), s
    assert "src" in pinned_nodes(comp), comp.pins()


# --------------------------------------------------------------------------
# ScatterElements / Scatter
# --------------------------------------------------------------------------
def test_scatter_elements_constant_indices_pin(tmp_path):
    rng = np.random.default_rng(9)
    idx = np.stack([rng.permutation(8)[:2] for _ in range(16)], -1).reshape(1, 2, 4, 4)

    def body(g, a):
        return g.node("ScatterElements", [a, g.ints("idx", idx), g.w("upd", [1, 2, 4, 4])],
                      name="se", axis=1), 8

    comp = roundtrip(sandwich(body, opset=13), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P" and s[C2][1] == "P", s
    assert "se" in pinned_nodes(comp), comp.pins()


def test_scatter_along_space_keeps_channels(tmp_path):
    """Scatter (opset 9-10 form) along a spatial axis: channels of data, updates and
    indices are one class."""
    rng = np.random.default_rng(10)
    rows = np.array([rng.permutation(4)[:2] for _ in range(8 * 4)])  # [(c, w), r]: distinct rows
    idx = rows.reshape(8, 4, 2).transpose(0, 2, 1)[None]  # idx[0, c, r, w]

    def body(g, a):
        return g.node("Scatter", [a, g.ints("idx", np.ascontiguousarray(idx)), g.w("upd", [1, 8, 2, 4])],
                      name="se", axis=2), 8

    comp = roundtrip(sandwich(body, opset=10), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s[C2][1] == s["upd"][1] == s["idx"][1], s
    assert not comp.pins(), comp.pins()


def _scatter_ids(c_idx, reduction=None, opset=16):
    g = G(opset=opset)
    g.input("x", [1, 3, 4, 4])
    g.input("idx", [1, c_idx, 4, 4], INT64)
    a = g.conv("x", 3, 8, name="conv1")
    attrs = {"reduction": reduction} if reduction else {}
    b = g.node("ScatterElements", [a, "idx", g.w("upd", [1, c_idx, 4, 4])], name="se", axis=1, **attrs)
    g.conv(b, 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def test_scatter_elements_client_indices_are_mapped(tmp_path):
    comp = roundtrip(_scatter_ids(1), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s[C2][1] and not comp.pins(), s
    (ids,) = [c for c in comp.inputs if c.name == "idx"]
    assert ids.value_layout == s[C1][0], ids


@pytest.mark.parametrize("reduction", ["add", "mul", "max", "min"])
def test_scatter_elements_reductions_with_duplicates(reduction, tmp_path):
    """Duplicate indices with a commutative reduction: the order of the writes does not
    matter, so the updates' own axis may be permuted too (it is a class of its own)."""
    rng = np.random.default_rng(11)
    feeds = {"x": rng.standard_normal([1, 3, 4, 4]).astype(np.float32),
             "idx": rng.integers(0, 2, [1, 3, 4, 4])}  # many duplicates
    comp = exact(_scatter_ids(3, reduction, opset=18), tmp_path, feeds)
    s = comp.spec()
    assert is_secret(s[C1][0]) and is_secret(s["upd"][1]) and not comp.pins(), s


def test_scatter_elements_duplicates_last_write_wins(tmp_path):
    """reduction='none' with duplicates: the last write (in index order) wins, so the
    updates' axis along ``axis`` keeps its order (pinned, reported); still exact."""
    rng = np.random.default_rng(12)
    feeds = {"x": rng.standard_normal([1, 3, 4, 4]).astype(np.float32),
             "idx": rng.integers(0, 2, [1, 3, 4, 4])}
    comp = exact(_scatter_ids(3), tmp_path, feeds)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s["upd"][1] == "P", s
    assert any("last write" in p["reason"] for p in pins_of(comp, "se")), comp.pins()


# --------------------------------------------------------------------------
# ScatterND
# --------------------------------------------------------------------------
def test_scatter_nd_addressing_channels_pins_them(tmp_path):
    """Index tuples (n, c) address the channel axis: pinned, named."""
    def body(g, a):
        return g.node("ScatterND", [a, g.ints("idx", [[0, 5], [0, 2]]), g.w("upd", [2, 4, 4])],
                      name="snd"), 8

    comp = roundtrip(sandwich(body, opset=13), tmp_path)
    s = comp.spec()
    assert s[C1][0] == "P" and "snd" in pinned_nodes(comp), (s, comp.pins())


@pytest.mark.parametrize("reduction", [None, "add"])
def test_scatter_nd_over_batch_keeps_channels(reduction, tmp_path):
    """Tuples of length 1 address the batch axis only: the updates' trailing axes are
    data's, channels included."""
    def body(g, a):
        attrs = {"reduction": reduction} if reduction else {}
        return g.node("ScatterND", [a, g.ints("idx", [[0]]), g.w("upd", [1, 8, 4, 4])],
                      name="snd", **attrs), 8

    comp = roundtrip(sandwich(body, opset=16), tmp_path)
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s[C2][1] == s["upd"][1], s
    assert not comp.pins(), comp.pins()


def test_scatter_nd_rows_of_a_matrix(tmp_path):
    """x[2,6] @ W1 -> h[2, 8]; ScatterND writes rows of h (tuples of length 1 address the
    batch rows); the feature axis stays secret."""
    g = G(opset=13)
    g.input("x", [3, 6])
    h = g.node("MatMul", ["x", g.w("W1", [6, 8])])
    s_ = g.node("ScatterND", [h, g.ints("rows", [[2], [0]]), g.w("upd", [2, 8])], name="snd")
    g.node("MatMul", [s_, g.w("W2", [8, 4])], outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path)
    s = comp.spec()
    assert is_secret(s["W1"][1]) and s["W1"][1] == s["upd"][1] == s["W2"][0], s
    assert not comp.pins(), comp.pins()


# --------------------------------------------------------------------------
# control flow: layouts through the subgraphs (more in tests/test_control.py)
# --------------------------------------------------------------------------


def _if_model():
    then_g = helper.make_graph([helper.make_node("Relu", ["a"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", FLOAT, [1, 8, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        g.node("Identity", [a], outputs="a")
        cond = g.node("Greater", [g.node("ReduceSum", [a], keepdims=0), g.floats("zero", 0.0)])
        return g.node("If", [cond], name="cf", then_branch=then_g, else_branch=else_g), 8
    return sandwich(body)


def _loop_model():
    """Loop: v = tanh(v), max|a| times (a trip count computed from the input cannot fold)."""
    body_g = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Tanh", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", INT64, []),
         helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        trip = g.node("Cast", [g.node("ReduceMax", [g.node("Abs", [a])], keepdims=0)], to=INT64)
        return g.node("Loop", [trip, "", a], name="cf", body=body_g), 8
    return sandwich(body)


def _scan_model():
    """Scan over the spatial rows: a running sum (state [1, 8, 4]) of a[:, :, i, :]."""
    body_g = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("s_in", FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("row", FLOAT, [1, 8, 4])],
        [helper.make_tensor_value_info("s_out", FLOAT, [1, 8, 4]),
         helper.make_tensor_value_info("scan_out", FLOAT, [1, 8, 4])])

    def body(g, a):
        init = g.floats("s0", np.zeros([1, 8, 4], np.float32))
        _, ys = g.node("Scan", [init, a], name="cf", n_out=2, body=body_g, num_scan_inputs=1,
                       scan_input_axes=[2], scan_output_axes=[2])
        return ys, 8
    return sandwich(body, opset=11)


@pytest.mark.parametrize("op,build", [("If", _if_model), ("Loop", _loop_model), ("Scan", _scan_model)])
def test_control_flow_carries_the_channel_class(op, build, tmp_path):
    """The subgraph reads a (8 channels) from the outer scope or as a carried/scanned
    value, and what it returns keeps a's class: conv1's output class reaches conv2."""
    m = build()
    assert op in {n.op_type for n in m.graph.node}
    comp = roundtrip(m, tmp_path)
    s = comp.spec()
    assert is_secret(s["conv1.w"][0]) and s["conv1.w"][0] == s["conv2.w"][1], s
