"""Head statements: which ops commute with per-head maps (``compiler/structured.py``).

A statement ``rule(node, live, d, h) -> bool`` is asked about a node that
reads or writes class ``d`` at a non-zero exponent (``live``: those operands,
as (relation key, terms, which) triples) and a candidate head class ``h``.
It answers True only if the op commutes with x -> x U_k applied on ``d`` at
every plain index k of ``h``, on all its operands at once, for any blocks U_k.

The ops listed all have a LINEAR group statement on ``d`` (rules/group_rules.py)
and move, add or multiply elements without combining different indices of a
class that is present on both sides: with ``h`` present (once) in ``d``'s block
of every live operand, the output at head index k depends only on inputs at
head index k, so a map that depends on k commutes exactly as a shared one does:
- moves (Reshape/Flatten/Transpose/(Un)Squeeze/Identity/Neg/Dropout/Concat/Split/
  Slice/Expand/Tile), including the KV repeat and the KV cache Concat: the
  layout solver keeps each head index in place; an output that gains ``h``
  from an input without it (a broadcast along the head axis) fails the test;
- sums and products (Add/Sub/Sum/Mean, MatMul/Gemm/Einsum/Mul/Div): per head
  index a linear function of that head's operands; a reduction over ``h``
  leaves an operand without ``h`` and fails the test;
- ReduceSum/ReduceMean over other axes; Gather along an axis other than ``h``.
An op not listed (convolutions, pools, norms, activations...) answers no.
"""
from __future__ import annotations

from typing import Callable

from eeonnx.compiler.structured import heads_in

HEAD_RULES: dict[str, Callable] = {}


def head_rule(*op_types: str):
    def deco(fn):
        for op in op_types:
            HEAD_RULES[op] = fn
        return fn

    return deco


def lookup(node) -> Callable | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return HEAD_RULES.get(node.op_type)


def carried_by_all(live, d: int, h: int) -> bool:
    """Every operand holding ``d`` (transformed) holds ``h`` once in ``d``'s block."""
    return all(h in heads_in(terms, d) for _, terms, _ in live)


@head_rule("Identity", "Neg", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Expand", "Tile",
           "Concat", "Split", "Slice", "Dropout",
           "Add", "Sub", "Sum", "Mean", "MatMul", "Gemm", "Einsum", "Mul", "Div",
           "ReduceSum", "ReduceMean")
def _elementwise_in_heads(node, live, d: int, h: int) -> bool:
    return carried_by_all(live, d, h)


@head_rule("Gather")
def _gather(node, live, d: int, h: int) -> bool:
    """The data's other axes pass through; gathering along ``h`` itself would move
    head indices."""
    if not carried_by_all(live, d, h):
        return False
    data = next((t for _, t, w in live if w == ("in", 0)), None)
    if data is None:
        return False
    a = node.attributes.get("axis")
    axis = (a.value if a is not None else 0) % len(data)
    return h not in {v.uid for v in _vars(data[axis])}


def _vars(t):
    from eeonnx.compiler import layout as L

    return L.free_vars(t)


@head_rule("Shape", "Size", "EyeLike")
def _dims_only(node, live, d: int, h: int) -> bool:
    """Reads only the dims of input 0."""
    return True
