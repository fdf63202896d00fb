"""restructure: write the server model in the ORIGINAL graph's structure.

The analysis works on the normalized graph (constants and shape arithmetic
folded, Constant nodes lifted, functions inlined). ONNX Runtime fuses that
graph differently from the original (e.g. static shapes let it form
SkipLayerNormalization where the original keeps Add + LayerNormalization),
so the server would not run at the original's speed. This pass takes the
original graph as loaded and replaces only the data of the initializers the
fold pass changed, so ORT sees the original's nodes and fuses them the same
way.

Exactness: the normalized graph computes the original's function for the
original initializer values; its rewrites depend on values only through
constant folding. The original structure is used only when every changed
initializer (1) is an original tensor (an initializer of that name, or a
Constant node's value; an Identity of a constant that normalization made an
initializer becomes that initializer first, see
``_materialize_constant_identities``), and
(2) is read, in the original, only by nodes that survive normalization
unchanged in op type, attributes and input position (same first output name), directly
or through Identity nodes (which only rename it), so no folded value was
computed from it. Then original(changed) equals
normalized(changed) as functions: shape-derived folds read only shapes, which
permutations and group transforms preserve. Otherwise (a changed value that
was lifted or folded, control flow, model-local functions, inputs that normalization
removed or renamed, a client split) the normalized server model is kept and
``reason`` says why.
"""
from __future__ import annotations

import onnx_ir as ir


def original_server(comp, original: ir.Model, changed: list[str]) -> tuple[ir.Model | None, str]:
    """(the original graph carrying the server's changed initializers, "") or (None, why not).

    ``changed``: the top-level initializers of the normalized model whose tensor
    the fold replaced (compared by identity before and after it)."""
    norm = comp.model
    if comp.split is not None and comp.split.active:
        return None, "client split (the server is a subgraph)"
    if any(_has_subgraph(n) for g in (original.graph, norm.graph) for n in g):
        return None, "control flow (subgraph tensors are folded inside their branches)"
    if original.functions:
        return None, "model-local functions (inlined by normalization)"
    if ([v.name for v in original.graph.inputs] != [v.name for v in norm.graph.inputs]
            or [v.name for v in original.graph.outputs] != [v.name for v in norm.graph.outputs]):
        return None, "normalization changed the graph inputs/outputs"
    if original.ir_version is None or original.ir_version < 4:
        return None, "IR version < 4"
    kept = {}
    for node in norm.graph:
        if node.outputs and node.outputs[0].name:
            kept[node.outputs[0].name] = node
    _materialize_constant_identities(original, norm)
    producers = {o.name: n for n in original.graph for o in n.outputs if o.name}
    targets = []
    for name in changed:
        if name in original.graph.initializers:
            root = original.graph.initializers[name]
        else:
            node = producers.get(name)
            if (node is None or node.op_type != "Constant" or node.domain not in ("", "ai.onnx")
                    or list(node.attributes) != ["value"]):
                return None, f"changed constant '{name}' is neither an original initializer nor a Constant node"
            root = node.outputs[0]
        why = _readers_kept(root, {root.name}, kept)
        if why:
            return None, why
        targets.append((root, name))
    for root, name in targets:
        tensor = norm.graph.initializers[name].const_value
        node = root.producer()
        if node is None:
            root.const_value = tensor
        else:  # a Constant node: replace its value attribute
            node.attributes["value"] = ir.AttrTensor("value", tensor)
    for mine, theirs in zip(original.graph.inputs, norm.graph.inputs):
        mine.shape = theirs.shape  # --dim values, as the manifest states them
    return original, ""


def _readers_kept(value: ir.Value, aliases: set[str], kept: dict) -> str:
    """"" when every original reader of ``value`` survives normalization (same op,
    reading one of ``aliases`` at the same input); Identity readers pass the
    value on (normalization removes them and rewires their readers), so their
    readers are checked in turn. Else the reason."""
    for user, k in value.uses():
        if user.op_type == "Identity" and user.domain in ("", "ai.onnx"):
            out = user.outputs[0]
            why = _readers_kept(out, aliases | {out.name}, kept)
            if why:
                return why
            continue
        twin = kept.get(user.outputs[0].name) if user.outputs else None
        if (twin is None or twin.op_type != user.op_type or twin.domain != user.domain
                or k >= len(twin.inputs) or twin.inputs[k] is None or twin.inputs[k].name not in aliases
                or _attrs(twin) != _attrs(user)):
            return f"node '{user.name}' reading '{value.name}' was rewritten by normalization"
    return ""


def _attrs(node: ir.Node) -> dict:
    return {name: repr(a.value) for name, a in node.attributes.items()}


def _has_subgraph(node: ir.Node) -> bool:
    return any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())


def _materialize_constant_identities(original: ir.Model, norm: ir.Model) -> None:
    """An Identity whose output normalization turned into an initializer (the
    TorchScript exporter shares equal-valued weights through Identity nodes;
    normalization gives each alias its own tensor, and the fold may permute the
    aliases differently) becomes that initializer, with the normalized value:
    what ORT's own constant folding makes of it, so fusions do not change."""
    for node in list(original.graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or not node.outputs:
            continue
        out = node.outputs[0]
        if out.name not in norm.graph.initializers or out.is_graph_output():
            continue
        src = node.inputs[0]
        if src is None or (not src.is_initializer() and (src.producer() is None
                                                         or src.producer().op_type not in ("Constant", "Identity"))):
            continue
        value = ir.Value(name=out.name, shape=out.shape, type=out.type,
                         const_value=norm.graph.initializers[out.name].const_value)
        out.replace_all_uses_with(value)
        original.graph.remove(node, safe=True)
        original.graph.register_initializer(value)
