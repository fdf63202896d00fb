"""Control flow: layouts propagate through If / Loop / Scan subgraphs; weights that
live inside a subgraph are folded; a merged KV-cache decoder (first step and cached
steps behind one If, as Hugging Face Optimum exports them) generates with its cache
on the server and gives the plain model's greedy tokens."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import eeonnx
from helpers import CPU, FLOAT, INT64, is_secret, original_name, original_names, pinned_nodes, roundtrip, sandwich

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.make_control_flow import merged_decoder  # noqa: E402

RNG = np.random.default_rng(0)


def _subgraph_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant values of every subgraph, by name."""
    out = {}

    def walk(g):
        for t in g.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant" and g is not model.graph:
                out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            for a in n.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    walk(sub)

    for n in model.graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                walk(sub)
    return out


def _cond(g, a):
    """A condition computed from the input, so that nothing folds the If away."""
    return g.node("Greater", [g.node("ReduceSum", [a], keepdims=0), g.floats("zero", 0.0)])


def _if_with_branch_weight():
    """then: 1x1 conv with a weight held by a Constant node inside the branch; else: Relu.
    Both read conv1's output a [1, 8, 4, 4] from the outer scope."""
    w = (RNG.standard_normal([8, 8, 1, 1]) / 3).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["bw"], value=numpy_helper.from_array(w, "bw")),
         helper.make_node("Conv", ["a_in", "bw"], ["t_out"])], "then", [],
        [helper.make_tensor_value_info("t_out", FLOAT, [1, 8, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Relu", ["a_in"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        g.node("Identity", [a], outputs="a_in")
        return g.node("If", [_cond(g, a)], name="cf", then_branch=then_g, else_branch=else_g), 8
    return sandwich(body)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_if_folds_a_weight_inside_a_branch(tmp_path, sign):
    m = _if_with_branch_weight()
    x = (sign * np.abs(RNG.standard_normal([1, 3, 4, 4]))).astype(np.float32)
    rt = roundtrip(m, tmp_path, feeds={"x": x}, full=True)
    s = rt.comp.spec()
    assert is_secret(s["conv1.w"][0]) and s["conv1.w"][0] == s["bw"][0] == s["bw"][1] == s["conv2.w"][1], s
    srv = {original_name(rt.out, n): a  # the server's names are opaque
           for n, a in _subgraph_tensors(onnx.load(rt.out / "server" / "model.onnx")).items()}
    orig = _subgraph_tensors(onnx.load(tmp_path / "model.onnx"))
    assert not np.array_equal(srv["bw"], orig["bw"])  # permuted on the server
    assert np.array_equal(np.sort(srv["bw"], None), np.sort(orig["bw"], None))  # and only permuted


def test_if_branches_that_disagree_pin(tmp_path):
    """else reverses the channels (a Slice with step -1): a's class cannot be one
    permutation on both branches' outputs, so the If output is pinned; still exact."""
    then_g = helper.make_graph([helper.make_node("Relu", ["a_in"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", FLOAT, [1, 8, 4, 4])])
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("st", [-1]), ("en", [-9]), ("ax", [1]), ("sp", [-1]))]
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], [t.name], value=t) for t in consts]
        + [helper.make_node("Slice", ["a_in", "st", "en", "ax", "sp"], ["e_out"])], "else", [],
        [helper.make_tensor_value_info("e_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        g.node("Identity", [a], outputs="a_in")
        return g.node("If", [_cond(g, a)], name="cf", then_branch=then_g, else_branch=else_g), 8
    for sign in (1.0, -1.0):
        x = (sign * np.abs(RNG.standard_normal([1, 3, 4, 4]))).astype(np.float32)
        comp = roundtrip(sandwich(body), tmp_path / str(sign), feeds={"x": x}, allow_weak=("x", "y"),
                         allow_clear=("x", "y"))
        s = comp.spec()
        assert not is_secret(s["conv2.w"][1]), s
        assert comp.pins(), "the disagreement is reported"


def _loop_with_outer_weight():
    """Loop 3 times (a trip count computed from the input): v = tanh(W v) per pixel, W [8, 8]
    an outer initializer read inside the body; scan output: every iteration's v."""
    body_g = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Transpose", ["v_in"], ["vt"], perm=[0, 2, 3, 1]),
         helper.make_node("MatMul", ["vt", "W"], ["vw"]),
         helper.make_node("Transpose", ["vw"], ["vb"], perm=[0, 3, 1, 2]),
         helper.make_node("Tanh", ["vb"], ["v_out"]),
         helper.make_node("Identity", ["v_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", FLOAT, [1, 8, 4, 4]),
         helper.make_tensor_value_info("scan_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        g.w("W", [8, 8])
        trip = g.node("Cast", [g.node("Add", [g.node("ReduceMin", [g.node("Abs", [a])], keepdims=0),
                                              g.floats("three", 3.0)])], to=INT64)
        v, scans = g.node("Loop", [trip, "", a], name="cf", n_out=2, body=body_g)
        last = g.node("ReduceMean", [scans], axes=[0], keepdims=0)
        return g.node("Add", [v, last]), 8
    return sandwich(body, opset=17)


def test_loop_carries_layouts_and_reads_outer_weights(tmp_path):
    comp = roundtrip(_loop_with_outer_weight(), tmp_path)
    s = comp.spec()
    assert is_secret(s["conv1.w"][0]) and s["conv1.w"][0] == s["W"][0] == s["W"][1] == s["conv2.w"][1], s
    assert not pinned_nodes(comp)


# --------------------------------------------------------------------------- merged decoder
@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    d = tmp_path_factory.mktemp("merged")
    src = d / "merged.onnx"
    onnx.save(merged_decoder(str(ROOT / "models" / "fixtures" / "llama_kv.ts.onnx")), src)
    eeonnx.compile(src, d / "out")
    return src, d / "out"


def test_merged_decoder_state_pairs_found_through_the_if(merged):
    _src, out = merged
    m = eeonnx.Client(out).manifest
    want = [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}") for i in range(2) for kv in ("key", "value")]
    assert [(s["input"], s["output"]) for s in m["state"]] == want
    assert all(s["axis"] == 2 for s in m["state"])
    assert original_names(out, m["server_outputs"]) == ["logits"]
    ops = [n.op_type for n in onnx.load(out / "server" / "model.onnx").graph.node]
    assert "If" in ops


def test_merged_decoder_generates_the_plain_tokens(merged):
    """Greedy tokens of the encrypted merged decoder (cache on the server; the first
    step takes the then-branch, the next ones the cached branch) == a plain loop on
    the ORIGINAL KV model that recomputes the whole prefix every step."""
    from test_generate import Plain

    _src, out = merged
    client, server = eeonnx.Client(out), eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    prompt = [5, 17, 42, 99]
    want = Plain("llama_kv.ts.onnx").greedy_recompute(prompt, 10)
    got = list(client.generate(server, prompt, max_new_tokens=10))
    assert got == want and len(set(want)) > 1
