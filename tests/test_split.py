"""The client split: weak boundary layers move into encode/decode until every content tensor
on the wire has ``min_key_bits`` key bits; the rest stays exact and on the server."""
from __future__ import annotations

import onnx
import pytest

import eeonnx
from eeonnx.errors import ClearBoundaryError, EEError
from helpers import G, original_names, roundtrip, sandwich, server_name

pytestmark = pytest.mark.skipif("split" not in eeonnx.compile.__code__.co_varnames,
                                reason="this eeonnx has no client split")


def relu_sandwich():
    """x [1,3,4,4] (2.6 bits) -> conv1 -> Relu (8 ch: 15.3 bits) -> conv2 -> y (4 ch: 4.6 bits)."""
    return sandwich(lambda g, a: (g.node("Relu", [a], name="the_relu"), 8))


def _server_ops(rt):
    return [n.op_type for n in onnx.load(rt.out / "server" / "model.onnx").graph.node]


def test_auto_split_moves_the_weak_layers(tmp_path):
    rt = roundtrip(relu_sandwich(), tmp_path, full=True, split="auto", min_key_bits=10)
    s = rt.manifest["split"]
    assert s["client_prefix_nodes"] == 1 and s["client_suffix_nodes"] == 1  # conv1, conv2
    assert _server_ops(rt) == ["Relu"]
    assert all(b >= 10 for b in s["wire_bits"].values()), s
    # what crosses the wire are the Relu's input and output, permuted on 8 channels
    assert original_names(rt.out, rt.manifest["server_inputs"]) == ["conv1_out"]
    assert original_names(rt.out, rt.manifest["server_outputs"]) == ["the_relu_out"]
    (x,) = rt.encoded.values()
    assert x.shape == (1, 8, 4, 4)


def test_auto_split_not_needed(tmp_path):
    rt = roundtrip(relu_sandwich(), tmp_path, full=True, split="auto", min_key_bits=2)
    assert rt.manifest["split"]["client_prefix_nodes"] == rt.manifest["split"]["client_suffix_nodes"] == 0
    assert _server_ops(rt) == ["Conv", "Relu", "Conv"]


def test_split_none_refuses_weak_boundaries(tmp_path):
    with pytest.raises(ClearBoundaryError) as e:
        eeonnx.compile(relu_sandwich(), tmp_path / "out", split="none", min_key_bits=10)
    assert "'x'" in str(e.value) or "'y'" in str(e.value)
    assert not (tmp_path / "out").exists()
    rt = roundtrip(relu_sandwich(), tmp_path / "ok", full=True, split="none", min_key_bits=10,
                   allow_weak=["x", "y"])
    assert _server_ops(rt) == ["Conv", "Relu", "Conv"]


def test_no_split_reaches_the_threshold(tmp_path):
    """Nothing in this model has 1000 bits: refused (an EEError), nothing written."""
    with pytest.raises(EEError):
        eeonnx.compile(relu_sandwich(), tmp_path / "out", split="auto", min_key_bits=1000)
    assert not (tmp_path / "out").exists()


def test_split_at_by_hand(tmp_path):
    rt = roundtrip(relu_sandwich(), tmp_path, full=True, split="auto", min_key_bits=10,
                   split_at=["in:conv1_out", "out:the_relu_out"])
    assert _server_ops(rt) == ["Relu"]


def test_split_at_unknown_tensor(tmp_path):
    with pytest.raises(EEError) as e:
        eeonnx.compile(relu_sandwich(), tmp_path / "out", split="auto", min_key_bits=10,
                       split_at=["in:no_such_tensor"])
    assert "no_such_tensor" in str(e.value)


def test_split_mlp_head(tmp_path):
    """A deeper chain: only as many layers as needed move to the client."""
    g = G()
    g.input("x", [2, 64])
    h = "x"
    for i, (k, n) in enumerate([(64, 48), (48, 48), (48, 48), (48, 5)]):
        h = g.node("MatMul", [h, g.w(f"W{i}", [k, n])], name=f"mm{i}")
        if i < 3:
            h = g.node("Relu", [h], name=f"relu{i}")
    g.node("Identity", [h], outputs="y")
    g.output("y")
    rt = roundtrip(g.build(), tmp_path, full=True, split="auto", min_key_bits=128)
    ops = _server_ops(rt)
    assert rt.manifest["split"]["client_prefix_nodes"] == 0          # 64 features: 296 bits
    assert ops.count("MatMul") == 3                                   # the 5-way head moved
    assert rt.manifest["split"]["client_suffix_nodes"] >= 1


# --------------------------------------------------------------------------- an RGB CNN at the default 128 bits
# (issue "client split"): the image has 3 channels (2.6 bits) and the head 10 classes (21.8 bits); the
# 64-channel layers in between have log2(64!) = 296 bits.
def rgb_cnn(width: int = 64, hw: int = 8) -> onnx.ModelProto:
    """image [1,3,hw,hw] -> stem Conv 3->width (+Relu) -> 2 x (Conv width->width, Relu) -> GAP -> Flatten
    -> Gemm width->10 -> logits."""
    g = G(opset=17, seed=0)
    g.input("image", [1, 3, hw, hw])
    h = g.conv("image", 3, width, 3, name="stem", outputs="stem_out")
    h = g.node("Relu", [h], name="stem_relu")
    for i in range(2):
        h = g.conv(h, width, width, 3, name=f"conv{i}")
        h = g.node("Relu", [h], name=f"relu{i}")
    h = g.node("GlobalAveragePool", [h], name="gap")
    h = g.node("Flatten", [h], name="flatten")
    g.node("Gemm", [h, g.w("head.w", [10, width]), g.w("head.b", [10], 0.1)], outputs="logits", name="head",
           transB=1)
    g.output("logits")
    return g.build()


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def test_rgb_cnn_default_split(tmp_path):
    model = rgb_cnn()
    rt = roundtrip(model, tmp_path, full=True, split="auto")  # min_key_bits: the default, 128
    s = rt.manifest["split"]
    assert s["mode"] == "auto" and s["min_key_bits"] == 128
    assert s["client_prefix_nodes"] >= 1 and s["client_suffix_nodes"] >= 1, s
    assert s["wire_bits"] and all(b >= 128 for b in s["wire_bits"].values()), s
    wires = original_names(rt.out, rt.manifest["server_inputs"] + rt.manifest["server_outputs"])
    assert set(s["wire_bits"]) == set(wires)
    # the stem conv runs in encode.onnx, the classifier in decode.onnx
    assert "Conv" in _ops(rt.out / "client" / "encode.onnx")
    assert "Gemm" in _ops(rt.out / "client" / "decode.onnx")
    server = _ops(rt.out / "server" / "model.onnx")
    assert len(server) < len(model.graph.node) and "Gemm" not in server
    assert server.count("Conv") == 2
    # what the server receives is the stem's 64-channel output, permuted
    (x,) = rt.encoded.values()
    assert x.shape == (1, 64, 8, 8)
    ins = {c["name"]: c for c in rt.manifest["inputs"]}
    assert ins["image"]["clear"] and "encode.onnx" in ins["image"]["clear_reason"]
    assert 0 < s["client_flops_share"] < 0.2


def test_rgb_cnn_split_none_refuses_the_image(tmp_path):
    with pytest.raises(ClearBoundaryError) as e:
        eeonnx.compile(rgb_cnn(), tmp_path / "out", split="none")
    msg = str(e.value)
    assert "'image'" in msg and "2.6 key bits" in msg and "128" in msg, msg
    assert not (tmp_path / "out").exists()
    # the 10-way output is refused as well once the image is allowed
    with pytest.raises(ClearBoundaryError) as e:
        eeonnx.compile(rgb_cnn(), tmp_path / "out", split="none", allow_weak=("image",))
    assert "'logits'" in str(e.value) and "21.8 key bits" in str(e.value)
    rt = roundtrip(rgb_cnn(), tmp_path / "ok", full=True, split="none", min_key_bits=128,
                   allow_weak=("image", "logits"))
    s = rt.manifest["split"]
    assert s["client_prefix_nodes"] == s["client_suffix_nodes"] == 0
    assert _ops(rt.out / "server" / "model.onnx").count("Conv") == 3


def test_rgb_cnn_no_threshold_no_split(tmp_path):
    rt = roundtrip(rgb_cnn(), tmp_path, full=True, split="auto", min_key_bits=0)
    s = rt.manifest["split"]
    assert s["client_prefix_nodes"] == s["client_suffix_nodes"] == 0
    assert original_names(rt.out, rt.manifest["server_inputs"]) == ["image"]
    assert original_names(rt.out, rt.manifest["server_outputs"]) == ["logits"]
    assert s["wire_bits"] == {"image": pytest.approx(2.6), "logits": pytest.approx(21.8)}


def test_rgb_cnn_split_at_by_hand(tmp_path):
    """Cut after the stem's Relu (one node further than auto) and before the head."""
    rt = roundtrip(rgb_cnn(), tmp_path / "a", full=True, split="auto",
                   split_at=("in:stem_out", "out:flatten_out"))
    assert original_names(rt.out, rt.manifest["server_inputs"]) == ["stem_out"]
    assert rt.manifest["split"]["client_prefix_nodes"] == 1
    rt = roundtrip(rgb_cnn(), tmp_path / "b", full=True, split="auto",
                   split_at=("in:stem_relu_out", "out:flatten_out"))
    assert original_names(rt.out, rt.manifest["server_inputs"]) == ["stem_relu_out"]
    assert original_names(rt.out, rt.manifest["server_outputs"]) == ["flatten_out"]
    assert rt.manifest["split"]["client_prefix_nodes"] == 2
    assert _ops(rt.out / "client" / "encode.onnx")[-2:] == ["Conv", "Relu"]


def test_rgb_cnn_split_at_input_side_only(tmp_path):
    rt = roundtrip(rgb_cnn(), tmp_path, full=True, split="auto", split_at=("in:stem_out",))
    assert original_names(rt.out, rt.manifest["server_inputs"]) == ["stem_out"]


def test_narrow_model_no_split_reaches_the_threshold(tmp_path):
    """Every layer is 8 wide (15.3 bits): no cut gives 128 bits; refused, nothing written."""
    with pytest.raises(EEError) as e:
        eeonnx.compile(rgb_cnn(width=8), tmp_path / "out")
    msg = str(e.value)
    assert "no convex split" in msg and "128 key bits" in msg, msg
    assert not (tmp_path / "out").exists()


def test_integer_structure_inputs_are_public(tmp_path):
    """ids index a 64-row table (content, value-permuted: 296 bits); the mask is read as numbers,
    positions feed a sinusoid (read as numbers), segment ids index a 2-row table: public structure."""
    import numpy as np

    from helpers import INT64

    g = G(opset=17, seed=0)
    seq = 6
    g.input("ids", [1, seq], INT64)
    g.input("mask", [1, seq], INT64)
    g.input("pos", [1, seq], INT64)
    g.input("segment", [1, seq], INT64)
    x = g.node("Gather", [g.w("emb", [64, 64]), "ids"], name="embed")
    x = g.node("Add", [x, g.node("Gather", [g.w("seg_emb", [2, 64]), "segment"], name="seg_gather")])
    p = g.node("Unsqueeze", [g.node("Cast", ["pos"], to=1), g.ints("axis_last", [-1])])
    ang = g.node("Mul", [p, g.floats("inv_freq", 1.0 / (100.0 ** (np.arange(32) / 32)))])
    x = g.node("Add", [x, g.node("Concat", [g.node("Sin", [ang]), g.node("Cos", [ang])], axis=-1)])
    m = g.node("Unsqueeze", [g.node("Cast", ["mask"], to=1), "axis_last"])
    x = g.node("Mul", [x, m])
    x = g.node("Relu", [g.node("MatMul", [x, g.w("w1", [64, 64])])])
    g.node("MatMul", [x, g.w("w2", [64, 48])], outputs="y")
    g.output("y")
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 64, (1, seq)), "mask": np.array([[1, 1, 1, 1, 0, 0]]),
             "pos": np.arange(seq)[None], "segment": np.array([[0, 0, 0, 1, 1, 1]])}
    feeds = {k: v.astype(np.int64) for k, v in feeds.items()}
    rt = roundtrip(g.build(), tmp_path, feeds=feeds, full=True, split="auto")
    s = rt.manifest["split"]
    assert s["client_prefix_nodes"] == s["client_suffix_nodes"] == 0
    assert set(s["public_structure"]) == {"mask", "pos", "segment"}, s
    assert set(s["wire_bits"]) == {"ids", "y"} and all(b >= 128 for b in s["wire_bits"].values())
    sent = {n: rt.encoded[server_name(rt.out, n)] for n in ("mask", "pos", "ids")}
    assert np.array_equal(sent["mask"], feeds["mask"]) and np.array_equal(sent["pos"], feeds["pos"])
    assert not np.array_equal(sent["ids"], feeds["ids"])
