"""The server model keeps the original graph's structure (only initializer data
changes), so ONNX Runtime fuses it exactly as it fuses the original; where that
cannot be proved exact, the normalized structure is kept and the reason given."""
from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import eeonnx
from eeonnx.client.verify import verify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "models", "fixtures")


def _ort_ops(path: str, tmp) -> collections.Counter:
    """Op histogram of the graph ONNX Runtime actually runs (after its own fusions)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp)
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp)).graph.node)


@pytest.mark.parametrize("name", ["bert.ts.onnx", "sentence_embed.ts.onnx", "llama_kv.ts.onnx"])
def test_torchscript_server_fuses_like_the_original(tmp_path, name):
    src = os.path.join(FIX, name)
    comp = eeonnx.compile(src, tmp_path / "out")
    assert comp.server_model is not None, comp.structure_note
    server = str(tmp_path / "out" / "server" / "model.onnx")
    assert _ort_ops(server, tmp_path / "s.onnx") == _ort_ops(src, tmp_path / "o.onnx")
    # only Identity nodes over constants are gone (they became initializers)
    orig = collections.Counter(n.op_type for n in onnx.load(src).graph.node)
    got = collections.Counter(n.op_type for n in onnx.load(server).graph.node)
    assert {k: v for k, v in (orig - got).items()} .keys() <= {"Identity"} and not (got - orig)
    checks = verify(src, tmp_path / "out", trials=2)
    assert all(c.ok and c.err < 1e-4 for c in checks.values()), checks


def _folded_weight_model() -> onnx.ModelProto:
    """y = x @ Transpose(W): normalization folds Transpose(W) into a new initializer,
    so the permuted weight is not an original tensor and the original structure
    cannot simply carry it."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal([32, 16]).astype(np.float32)
    w2 = rng.standard_normal([32, 8]).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0], name="t"),
         helper.make_node("MatMul", ["x", "Wt"], ["h"], name="mm"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm2")],
        "folded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_folded_weight_keeps_the_normalized_structure_and_stays_exact(tmp_path):
    m = _folded_weight_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    comp = eeonnx.compile(path, tmp_path / "out", split="none", allow_clear=("x", "y"), min_key_bits=0)
    assert comp.server_model is None and "is neither an original initializer" in comp.structure_note
    checks = verify(str(path), tmp_path / "out", trials=2)
    assert all(c.ok for c in checks.values()), checks


def test_split_model_keeps_the_subgraph(tmp_path):
    comp = eeonnx.compile(os.path.join(ROOT, "models", "cnn.onnx"), tmp_path / "out")
    assert comp.server_model is None and "split" in comp.structure_note
