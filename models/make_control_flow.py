"""Models with control flow, built with ``onnx.helper`` from the committed fixtures.

``merged_decoder(path)``: a KV-cache decoder "merged" the way Hugging Face
Optimum exports one (``decoder_model_merged.onnx``): the first step and the
cached steps in one graph behind an ``If``. The weights live in the outer
graph (both branches read them from the outer scope); the condition is
"past length == 0", computed from the shape of the first past key, so the
inputs are those of the original. The *first-step* branch never reads the
past tensors: it builds an empty cache of its own (``ConstantOfShape`` with
the batch taken from ``input_ids``); the *cached* branch is the original
graph. Values inside each branch are renamed with a branch prefix (ONNX
wants names unique across the model); outer-scope names stay.

    python models/make_control_flow.py models/fixtures/llama_kv.ts.onnx OUT.onnx
"""
from __future__ import annotations

import sys

import onnx
from onnx import TensorProto, helper


def _branch(graph: onnx.GraphProto, prefix: str, outer: set[str], replace: dict[str, str]) -> tuple[list, list]:
    """The graph's nodes renamed into a branch; inputs in ``replace`` read other names."""
    def name(n: str) -> str:
        if not n:
            return n
        if n in replace:
            return replace[n]
        return n if n in outer else prefix + n

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + (node.name or node.op_type)
        for i, n in enumerate(new.input):
            new.input[i] = name(n)
        for i, n in enumerate(new.output):
            new.output[i] = name(n)
        nodes.append(new)
    outputs = []
    for o in graph.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = name(o.name)
        outputs.append(vi)
    return nodes, outputs


def merged_decoder(path: str) -> onnx.ModelProto:
    m = onnx.load(path)
    g = m.graph
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    outer = inits | {i.name for i in inputs}
    past = [i for i in inputs if i.name.startswith("past")]
    if not past:
        raise ValueError(f"{path}: no past_* inputs, not a KV-cache decoder")

    cached_nodes, cached_out = _branch(g, "cached/", outer, {})
    # first step: every past input replaced by an empty [batch, heads, 0, head_dim] tensor
    first_pre, replace = [], {}
    batch = "first/batch"
    first_pre += [
        helper.make_node("Shape", ["input_ids"], ["first/ids_shape"], name="first/Shape_ids"),
        helper.make_node("Slice", ["first/ids_shape", "first/c0", "first/c1"], [batch], name="first/Slice_batch"),
    ]
    consts = [helper.make_tensor("first/c0", TensorProto.INT64, [1], [0]),
              helper.make_tensor("first/c1", TensorProto.INT64, [1], [1])]
    for p in past:
        dims = p.type.tensor_type.shape.dim
        rest = [dims[1].dim_value, 0, dims[3].dim_value]
        cname = f"first/{p.name}/rest"
        consts.append(helper.make_tensor(cname, TensorProto.INT64, [3], rest))
        shape = f"first/{p.name}/shape"
        empty = f"first/{p.name}/empty"
        first_pre += [helper.make_node("Concat", [batch, cname], [shape], axis=0, name=f"first/Concat_{p.name}"),
                      helper.make_node("ConstantOfShape", [shape], [empty], name=f"first/Empty_{p.name}",
                                       value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))]
        replace[p.name] = empty
    const_nodes = [helper.make_node("Constant", [], [t.name], value=t, name=t.name + "/Constant") for t in consts]
    first_nodes, first_out = _branch(g, "first/", outer, replace)
    first_graph = helper.make_graph(const_nodes + first_pre + first_nodes, "first_step", [], first_out)
    cached_graph = helper.make_graph(cached_nodes, "cached_steps", [], cached_out)

    # outer graph: cond = (past length == 0), one If, the original outputs
    top = [
        helper.make_node("Shape", [past[0].name], ["past_shape"], name="PastShape", start=2, end=3),
        # ReduceMax: like Optimum's use_cache_branch input, a condition that shape tools
        # cannot evaluate (they would type only the branch they think is taken)
        helper.make_node("ReduceMax", ["past_shape"], ["past_len"], keepdims=0, name="PastLen"),
        helper.make_node("Equal", ["past_len", "zero_len"], ["is_first"], name="IsFirst"),
        helper.make_node("If", ["is_first"], [o.name for o in g.output], name="merged",
                         then_branch=first_graph, else_branch=cached_graph),
    ]
    small = [helper.make_tensor("zero_len", TensorProto.INT64, [], [0])]
    graph = helper.make_graph(top, g.name + "_merged", inputs, list(g.output), list(g.initializer) + small)
    out = helper.make_model(graph, opset_imports=list(m.opset_import), producer_name="eeonnx-tests")
    out.ir_version = m.ir_version
    onnx.checker.check_model(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    onnx.save(merged_decoder(sys.argv[1]), sys.argv[2])
