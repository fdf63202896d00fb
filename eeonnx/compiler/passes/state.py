"""state: find server-side state pairs (a KV cache) from the graph.

A pair is (graph input P, graph output Q) where Q is a Concat along a
symbolic (growing) axis of P, P's values are read by nothing else (Shape and
Size may read its dims), and the Concat also takes
something computed in this call (reached through value-preserving
Identity/Cast), or the output of a fused op whose rule declares that
it extends that input along an axis (``state=`` in the registry, e.g.
GroupQueryAttention's past/present): the caller feeds Q back as P on the next
call. The pairing is read from the graph, never from names. Through an If (a
merged decoder: first step and cached steps behind one condition), Q is
paired when a branch's output extends P and no other reader of P exists.

Invariant: leaves the model unchanged; fills ``comp.state`` with one
StatePair per pair, in graph-output order. State tensors keep their names on
the server and bypass encode/decode; the cache on the server holds permuted
heads / head dims, and a cache of length 0 is valid as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

PASS_THROUGH = {"Identity", "Cast"}


@dataclass
class StatePair:
    input: str
    output: str
    axis: int
    dtype: str
    shape: list  # of the input; ints or symbol names

    def empty_shape(self) -> list:
        return [0 if k == self.axis else d for k, d in enumerate(self.shape)]


def _source(value: ir.Value) -> ir.Value:
    while value.producer() is not None and value.producer().op_type in PASS_THROUGH:
        value = value.producer().inputs[0]
    return value


def _extends(model: ir.Model, value: ir.Value) -> tuple[list, int, bool] | None:
    """(candidate inputs, axis, declared) when ``value`` is its producer's input extended
    along an axis; ``declared`` when a fused op's rule says so (not merely a Concat)."""
    from eeonnx.compiler import rules
    from eeonnx.compiler.passes.check import opset_of

    node = value.producer()
    if node is None or value.shape is None:
        return None
    if node.op_type == "If" and node.domain in ("", "ai.onnx"):
        return _extends_if(model, node, list(node.outputs).index(value))
    if node.op_type == "Concat" and node.domain in ("", "ai.onnx"):
        return list(node.inputs), int(node.attributes["axis"].value) % len(value.shape), False
    r = rules.lookup(node.domain, node.op_type, opset_of(model, node.domain))
    k = list(node.outputs).index(value)
    for i, o, axis in (r.state if r is not None else ()):
        if o == k and i < len(node.inputs) and node.inputs[i] is not None:
            return [node.inputs[i]], axis, True
    return None


def _extends_if(model: ir.Model, node: ir.Node, k: int) -> tuple[list, int, bool] | None:
    """Output k of an If extends an outer input when some branch's output k does
    (a merged decoder: the cached branch concatenates the past, the first-step
    branch makes the cache from scratch) and every branch that does agrees on the
    axis; the other branches must not read that input's values (checked by the
    caller: it may have no reader but the extending op)."""
    found = []
    for attr in ("then_branch", "else_branch"):
        g = node.attributes[attr].value
        inner = _source(g.outputs[k])
        if inner.shape is None and node.outputs[k].shape is not None:
            continue
        r = _extends(model, inner)
        if r is not None:
            found.append(r)
    if not found or len({axis for _, axis, _ in found}) != 1:
        return None
    return [v for cands, _, _ in found for v in cands], found[0][1], all(d for _, _, d in found)


def _only_extended(src: ir.Value, feed: ir.Value) -> bool:
    """The state input's values reach nothing but the op that extends it."""
    target = feed.consumers()
    for c in src.consumers():
        if c.op_type in ("Shape", "Size"):
            continue
        if c.op_type in PASS_THROUGH:
            if not all(_only_extended(o, feed) for o in c.outputs):
                return False
            continue
        if c not in target:
            return False
    return True


def find_state(model: ir.Model) -> list[StatePair]:
    inputs = {id(v): v for v in model.graph.inputs}
    pairs, used = [], set()
    for out in model.graph.outputs:
        found = _extends(model, _source(out))
        if found is None:
            continue
        candidates, axis, declared = found
        rank = len(out.shape) if out.shape is not None else None
        if rank is None:
            continue
        for inp in candidates:
            src = _source(inp) if inp is not None else None
            if src is not None and id(src) in inputs and src.name not in used:
                if src.shape is None or len(src.shape) != rank:
                    continue
                if not declared and isinstance(src.shape[axis], int):
                    continue  # a cache grows: its axis is symbolic (a static concat is a DenseNet block)
                if not _only_extended(src, inp):
                    continue
                shape = [d if isinstance(d, int) else d.value for d in src.shape]
                pairs.append(StatePair(src.name, out.name, axis, src.dtype.name.lower(), shape))
                used.add(src.name)
                break
    return pairs


class StatePass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        self.comp.state = find_state(model)
