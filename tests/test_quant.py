"""Quantized models: QDQ (per tensor, per axis, blocked), dynamic int8, integer
convolutions and matmuls, com.microsoft MatMulNBits (packed int4, repacked by
fold). Each compiles and decodes to the original's outputs on ONNX Runtime,
bit-exact where the arithmetic is integer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eeonnx
from eeonnx.compiler import storage as S
from helpers import G, classes_of, is_secret, original_names, roundtrip, server_weights

MS = ("com.microsoft", 1)


def _int8(g: G, name: str, shape) -> str:
    return g.const(name, g.rng.integers(-100, 100, shape).astype(np.int8))


def _scale(g: G, name: str, shape) -> str:
    return g.const(name, (0.01 + 0.02 * g.rng.random(shape)).astype(np.float32))


# --------------------------------------------------------------------------
# storage views (packing)
# --------------------------------------------------------------------------
def test_unpack_is_low_nibble_first_and_pack_inverts_it():
    stored = np.array([[0x21, 0x43], [0xF0, 0x0E]], dtype=np.uint8)
    view = S.StorageView((2, 3), [None, None], rows=2, per_row=3, bits=4)
    assert S.unpack(stored, view).tolist() == [[1, 2, 3, 4], [0, 15, 14, 0]]
    assert S.logical(stored, view).tolist() == [[1, 2, 3], [0, 15, 14]]
    assert np.array_equal(S.pack(S.unpack(stored, view), view), stored)
    # permuting the logical columns by [2, 0, 1] keeps each row's padding nibble
    out = S.apply(stored, view, [None, np.array([2, 0, 1])])
    assert out.tolist() == [[0x13, 0x42], [0x0E, 0x0F]]


# --------------------------------------------------------------------------
# QDQ
# --------------------------------------------------------------------------
def _qdq_cnn(per_channel: bool) -> onnx.ModelProto:
    """x -> Q/DQ (per tensor) -> Conv(DQ(int8 weight), per-channel or per-tensor) -> Relu -> Conv -> y."""
    g = G(opset=13, seed=1)
    g.input("x", [1, 3, 6, 6])
    sx, zx = g.floats("sx", 0.05), g.const("zx", np.array(128, np.uint8))
    q = g.node("QuantizeLinear", ["x", sx, zx])
    dq = g.node("DequantizeLinear", [q, sx, zx])
    w = _int8(g, "w1", [8, 3, 3, 3])
    ws = _scale(g, "w1_s", [8] if per_channel else [])
    wz = g.const("w1_z", np.zeros([8] if per_channel else [], np.int8))
    wd = g.node("DequantizeLinear", [w, ws, wz], axis=0)
    a = g.node("Relu", [g.node("Conv", [dq, wd, g.w("b1", [8], 0.1)], pads=[1, 1, 1, 1])])
    g.conv(a, 8, 4, 1, name="c2", outputs="y")
    g.output("y")
    return g.build()


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_conv_is_exact(tmp_path, per_channel):
    comp = roundtrip(_qdq_cnn(per_channel), tmp_path, rtol=1e-5)
    spec = comp.spec()
    assert is_secret(spec["w1"][0]) and spec["w1"][0] == spec["b1"][0]
    if per_channel:  # the per-channel scales move with the output channels
        assert spec["w1_s"][0] == spec["w1"][0] == spec["w1_z"][0]


def _blocked_matmul(k: int, block: int) -> onnx.ModelProto:
    """y = relu(x @ W1) @ DQ(Wq, blocked along K) with opset-21 block_size."""
    g = G(opset=21, seed=2)
    g.input("x", [2, 8])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("w0", [8, k])])])
    nb = -(-k // block)
    wq = _int8(g, "wq", [k, 6])
    wd = g.node("DequantizeLinear", [wq, _scale(g, "wq_s", [nb, 6]), g.const("wq_z", np.zeros([nb, 6], np.int8))],
                axis=0, block_size=block)
    g.node("MatMul", [h, wd], "y")
    g.output("y")
    return g.build()


@pytest.mark.parametrize("k,block", [(16, 4), (18, 4)])
def test_blocked_dequantize_permutes_whole_blocks(tmp_path, k, block):
    comp = roundtrip(_blocked_matmul(k, block), tmp_path, rtol=1e-5)
    spec = comp.spec()
    k_layout = spec["wq"][0]
    assert "kron(" in k_layout and classes_of(spec["wq_s"][0]) < classes_of(k_layout), spec
    assert spec["w0"][1] == k_layout  # the hidden class carries the block structure
    if k % block:  # the partial last block stays last: a cat with a block of k % block
        assert k_layout.startswith("cat(kron(") and f"[{k % block}]" in k_layout


# --------------------------------------------------------------------------
# integer ops
# --------------------------------------------------------------------------
def test_dynamic_int8_matmul_integer_is_bit_exact(tmp_path):
    """x -> DynamicQuantizeLinear -> MatMulInteger(uint8 W, per-column zero point) -> int32 y."""
    g = G(opset=13, seed=3)
    g.input("x", [3, 16])
    q, s, z = g.node("DynamicQuantizeLinear", ["x"], n_out=3)
    wq = g.const("wq", g.rng.integers(0, 255, [16, 12]).astype(np.uint8))
    wz = g.const("wz", g.rng.integers(100, 150, [12]).astype(np.uint8))
    g.node("MatMulInteger", [q, wq, z, wz], "y")
    g.output("y", TensorProto.INT32)
    comp = roundtrip(g.build(), tmp_path, rtol=0.0)
    spec = comp.spec()
    assert is_secret(spec["wq"][0]) and is_secret(spec["wq"][1]) and spec["wz"][0] == spec["wq"][1]


def test_qlinear_conv_and_matmul_are_bit_exact(tmp_path):
    """uint8 in, uint8 out: QLinearConv (per-channel weights, int32 bias) -> QLinearMatMul."""
    g = G(opset=13, seed=4)
    g.input("x", [1, 4, 5, 5], TensorProto.UINT8)
    u8 = lambda name, v: g.const(name, np.array(v, np.uint8))  # noqa: E731
    w = _int8(g, "cw", [6, 4, 1, 1])
    y = g.node("QLinearConv", ["x", g.floats("xs", 0.02), u8("xz", 128), w, _scale(g, "cws", [6]),
                               g.const("cwz", np.zeros([6], np.int8)), g.floats("ys", 0.5), u8("yz", 120),
                               g.const("cb", g.rng.integers(-500, 500, [6]).astype(np.int32))])
    t = g.node("Transpose", [y], perm=[0, 2, 3, 1])  # [1, 5, 5, 6]
    b = g.const("mb", g.rng.integers(0, 255, [6, 7]).astype(np.uint8))
    g.node("QLinearMatMul", [t, g.floats("ts", 0.5), u8("tz", 120), b, _scale(g, "mbs", [7]),
                             g.const("mbz", g.rng.integers(100, 150, [7]).astype(np.uint8)),
                             g.floats("os", 2.0), u8("oz", 100)], "y")
    g.output("y", TensorProto.UINT8)
    comp = roundtrip(g.build(), tmp_path, feeds={"x": np.random.default_rng(0).integers(0, 255, [1, 4, 5, 5])
                                                  .astype(np.uint8)}, rtol=0.0, allow_clear=("x",))
    spec = comp.spec()
    assert is_secret(spec["cw"][0]) and spec["cb"][0] == spec["cw"][0] == spec["mb"][0]
    assert is_secret(spec["mb"][1]) and spec["mbz"][0] == spec["mbs"][0] == spec["mb"][1]


def test_conv_integer(tmp_path):
    g = G(opset=13, seed=5)
    g.input("x", [1, 3, 4, 4])
    h = g.node("Relu", [g.conv("x", 3, 8, 1, name="c1")])
    q, s, z = g.node("DynamicQuantizeLinear", [h], n_out=3)
    w = g.const("iw", g.rng.integers(0, 255, [5, 8, 3, 3]).astype(np.uint8))
    y = g.node("ConvInteger", [q, w, z, g.const("iwz", np.array(128, np.uint8))],
               pads=[1, 1, 1, 1])
    f = g.node("Mul", [g.node("Cast", [y], to=TensorProto.FLOAT), s])
    g.conv(f, 5, 4, 1, name="c3", outputs="y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path, rtol=1e-6)
    spec = comp.spec()
    assert is_secret(spec["iw"][0]) and spec["iw"][0] == spec["c3.w"][1]
    assert spec["iw"][1] == spec["c1.w"][0]


def test_blocked_parameter_of_unexpected_shape_pins(tmp_path):
    """A per-axis scale that matches no axis pins: the axis stays public, the output exact."""
    g = G(opset=13, seed=6)
    g.input("x", [2, 8])
    h = g.node("MatMul", ["x", g.w("w0", [8, 4])])
    wq = _int8(g, "wq", [4, 4])
    wd = g.node("DequantizeLinear", [wq, _scale(g, "wq_s", [4]), g.const("wq_z", np.zeros([4], np.int8))], axis=1)
    g.node("MatMul", [h, wd], "y")
    g.output("y")
    comp = roundtrip(g.build(), tmp_path, rtol=1e-5)
    spec = comp.spec()
    assert spec["wq_s"][0] == spec["wq"][1] and is_secret(spec["wq"][1])


# --------------------------------------------------------------------------
# MatMulNBits (onnxruntime's own int4 quantizer)
# --------------------------------------------------------------------------
def _mlp(k: int, hidden: int = 48) -> onnx.ModelProto:
    g = G(opset=17, seed=7)
    g.input("x", ["batch", 8])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("w0", [8, k])])])
    h = g.node("Relu", [g.node("MatMul", [h, g.w("w1", [k, hidden])])])
    g.node("MatMul", [h, g.w("w2", [hidden, 5])], "y")
    g.output("y")
    return g.build()


def _int4(model: onnx.ModelProto, tmp_path, block: int, symmetric: bool) -> onnx.ModelProto:
    from models.make_quantized import int4

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    int4(str(src), str(dst), block, symmetric)
    m = onnx.load(dst)
    assert "MatMulNBits" in {n.op_type for n in m.graph.node}
    return m


@pytest.mark.parametrize("k,block,symmetric", [(64, 16, False), (64, 32, True), (40, 16, False)])
def test_matmul_nbits_repacks_blocks(tmp_path, k, block, symmetric):
    q = _int4(_mlp(k), tmp_path, block, symmetric)
    rt = roundtrip(q, tmp_path / "rt", dims={"batch": 3}, rtol=1e-5, full=True)
    spec = rt.comp.spec()
    packed = [n for n, lay in spec.items() if lay and lay[-1].endswith("(4-bit packed)") and "zero" not in n]
    (b,) = [n for n in packed if n.startswith("w1")]
    # w1's K axis is kron(blocks, within[block]) (and a partial block), the class of
    # the hidden activation that w0 writes
    k_layout = spec[b][1]
    assert "kron(" in k_layout and f"[{block}]" in k_layout
    (b0,) = [n for n in packed if n.startswith("w0")] or [None]
    writer = spec[b0][0] if b0 else spec["w0"][1]
    assert classes_of(writer) == classes_of(k_layout)
    assert is_secret(spec[b][0])
    # the server's B differs from the original and holds the same nibbles
    srv = server_weights(rt.out)  # by original name
    orig = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert not np.array_equal(srv[b], orig[b])
    nib = lambda a: np.sort(np.concatenate([a.reshape(-1) & 15, a.reshape(-1) >> 4]))  # noqa: E731
    assert np.array_equal(nib(srv[b]), nib(orig[b]))


def test_matmul_nbits_llama_keeps_d_model_secret(tmp_path):
    """The whole LLaMA's residual stream is one class, block-structured by int4 K axes."""
    from pathlib import Path

    fixture = Path(__file__).resolve().parent.parent / "models" / "fixtures" / "llama.dynamo.onnx"
    q = _int4(onnx.load(fixture), tmp_path, 32, False)
    comp = roundtrip(q, tmp_path / "rt", dims={"batch": 1, "sequence": 3}, rtol=1e-4,
                     feeds={"input_ids": np.array([[5, 17, 300]], np.int64),
                            "attention_mask": np.ones([1, 3], np.int64),
                            "position_ids": np.arange(3, dtype=np.int64)[None]})
    spec = comp.spec()
    (emb,) = [n for n, lay in spec.items() if len(lay) == 2 and lay[0].endswith("[320]")
              and lay[1].startswith("kron") and not lay[1].endswith("packed)")]
    d_model = spec[emb][1]
    assert d_model.startswith("kron(") and d_model.endswith("[32])")  # 2 blocks of 32
    readers = [n for n, lay in spec.items() if lay and lay[-1].endswith("(4-bit packed)") and "zero" not in n
               and lay[1].startswith(d_model)]
    assert len(readers) >= 6  # q, k, v, gate, up of each layer read the residual stream


# --------------------------------------------------------------------------
# the client split on quantized and multi-output models
# --------------------------------------------------------------------------
def test_split_output_read_by_later_client_layers(tmp_path):
    """y1 (an output, in a's class, which the server holds) feeds the layer making
    y2; with the cut after a, both are made in decode.onnx, where y2's layer must
    read y1 still permuted, not the decoded y1."""
    g = G(opset=13, seed=8)
    g.input("x", [1, 3, 4, 4])
    a = g.node("Relu", [g.conv("x", 3, 8, 1, name="c1")], "a")
    y1 = g.node("Add", [a, g.conv(a, 8, 8, 1, name="c2")], "y1")
    g.conv(y1, 8, 3, 1, name="c3", outputs="y2")
    g.output("y1")
    g.output("y2")
    rt = roundtrip(g.build(), tmp_path, full=True, split="auto", min_key_bits=10, split_at=["out:a"])
    assert rt.manifest["split"]["client_suffix_nodes"] == 3
    assert original_names(rt.out, rt.manifest["server_outputs"]) == ["a"]


def test_split_of_a_qdq_model_cuts_at_quantized_tensors(tmp_path):
    """The weak head of a QDQ model moves to the client with its DequantizeLinear
    nodes: the wire carries the uint8 tensor, never a dequantized weight, and the
    client's DQ -> Conv -> Q fuses as in the original (bit-exact)."""
    model = _qdq_cnn(True)
    rt = roundtrip(model, tmp_path, full=True, split="auto", min_key_bits=10, rtol=1e-5)
    wires = original_names(rt.out, rt.manifest["server_inputs"] + rt.manifest["server_outputs"])
    weights = {t.name for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    assert wires and all(w in produced or w in {i.name for i in model.graph.input} for w in wires)
    for w in wires:
        p = produced.get(w)
        assert p is None or not all(i in weights for i in p.input), f"{w} is computed from weights only"


@pytest.mark.parametrize("op", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"])
def test_contrib_quantized_matmuls(tmp_path, op):
    """x [3, 16] -> (quantized) op with per-column weight parameters and a bias -> MatMul -> y."""
    g = G(opset=13, seed=9)
    g.input("x", [3, 16])
    wq = g.const("wq", g.rng.integers(0, 255, [12, 16] if op == "QGemm" else [16, 12]).astype(np.uint8))
    ws, wz = _scale(g, "ws", [12]), g.const("wz", g.rng.integers(120, 136, [12]).astype(np.uint8))
    if op == "DynamicQuantizeMatMul":
        h = g.node(op, ["x", wq, ws, wz, g.w("bias", [12], 0.1)], domain="com.microsoft")
    else:
        q, s, z = g.node("DynamicQuantizeLinear", ["x"], n_out=3)
        if op == "MatMulIntegerToFloat":
            h = g.node(op, [q, wq, s, ws, z, wz, g.w("bias", [12], 0.1)], domain="com.microsoft")
        else:  # QGemm with transB (B is [N, K]), int32 bias, float output
            h = g.node(op, [q, s, z, wq, ws, wz, g.const("bias", g.rng.integers(-99, 99, [12]).astype(np.int32))],
                       domain="com.microsoft", transB=1)
    g.node("MatMul", [h, g.w("w2", [12, 5])], "y")
    g.output("y", shape=[3, 5])
    model = g.build([MS])
    model.graph.value_info.append(helper.make_tensor_value_info(h, TensorProto.FLOAT, [3, 12]))  # ONNX cannot infer it
    comp = roundtrip(model, tmp_path, rtol=1e-5)
    spec = comp.spec()
    n_axis = 0 if op == "QGemm" else 1
    assert is_secret(spec["wq"][n_axis]) and spec["ws"][0] == spec["wz"][0] == spec["wq"][n_axis] == spec["bias"][0]
    assert spec["w2"][0] == spec["wq"][n_axis]


def _share_packed(q: onnx.ModelProto, plain_reader: bool) -> onnx.ModelProto:
    """A second node reads w1's packed B: another MatMulNBits on Sigmoid(its input) (two
    readers unpacking alike, as in both branches of a merged decoder), or a Gather
    of rows of the bytes by an input (a reader that does not unpack)."""
    m = onnx.ModelProto()
    m.CopyFrom(q)
    (node,) = [n for n in m.graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("w1")]
    if plain_reader:
        m.graph.input.append(helper.make_tensor_value_info("rows", TensorProto.INT64, [2]))
        m.graph.node.append(helper.make_node("Gather", [node.input[1], "rows"], ["bytes"]))
        m.graph.output.append(helper.make_tensor_value_info("bytes", TensorProto.UINT8, None))
        return m
    twin = onnx.NodeProto()
    twin.CopyFrom(node)
    twin.name = "twin"
    m.graph.node.append(helper.make_node("Sigmoid", [node.input[0]], ["neg_in"]))
    twin.input[0] = "neg_in"
    twin.output[0] = "twin_out"
    idx = list(m.graph.node).index(node)
    m.graph.node.insert(idx + 1, twin)
    m.graph.node.insert(idx + 1, m.graph.node.pop())  # Sigmoid before the twin
    (reader,) = [n for n in m.graph.node if node.output[0] in n.input and n.name != "twin"]
    add = helper.make_node("Add", [node.output[0], "twin_out"], ["sum_out"])
    m.graph.node.insert(list(m.graph.node).index(reader), add)
    reader.input[list(reader.input).index(node.output[0])] = "sum_out"
    return m


@pytest.mark.parametrize("plain_reader", [False, True])
def test_packed_weight_with_two_readers(tmp_path, plain_reader):
    q = _share_packed(_int4(_mlp(64), tmp_path, 32, False), plain_reader)
    comp = roundtrip(q, tmp_path / "rt", dims={"batch": 3}, rtol=1e-5, allow_clear=("bytes", "rows"))
    spec = comp.spec()
    (b,) = [n for n in spec if n.startswith("w1") and n.endswith("Q4")]
    assert is_secret(spec[b][1]) != plain_reader, spec[b]  # pinned when a node reads the raw bytes


def test_check_spec_shows_the_block_structure(tmp_path):
    """`eeonnx check --spec` prints the logical layout of a packed weight: K as
    kron(blocks, within[block]), marked 4-bit packed, and the scales' block axis."""
    from click.testing import CliRunner

    from eeonnx.cli import main

    q = _int4(_mlp(64), tmp_path, 32, False)
    onnx.save(q, tmp_path / "q4.onnx")
    res = CliRunner().invoke(main, ["check", str(tmp_path / "q4.onnx"), "--spec", "--dim", "batch=2"])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("w1_Q4")]
    assert "(4-bit packed)" in line and "kron(" in line and "[32])" in line, line
    (scales,) = [ln for ln in res.output.splitlines() if ln.startswith("w1_scales")]
    assert classes_of(scales) < classes_of(line)
