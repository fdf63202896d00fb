"""The client split: weak boundary layers move into encode/decode until every content tensor
on the wire has ``min_key_bits`` key bits; the rest stays exact and on the server."""
from __future__ import annotations

import onnx
import pytest

import eeonnx
from eeonnx.errors import ClearBoundaryError, EEError
from helpers import G, roundtrip, sandwich

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
    assert rt.manifest["server_inputs"] == ["conv1_out"] and rt.manifest["server_outputs"] == ["the_relu_out"]
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
