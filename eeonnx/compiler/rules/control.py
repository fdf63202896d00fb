"""Control flow: If, Loop, Scan. Layouts propagate through the subgraphs.

A subgraph is solved with the same unifier as its enclosing graph
(``Analysis.run_graph``): its reads of outer values (weights, activations)
are those values themselves, so they get the same layout inside and out.
Then the subgraph's boundary is tied to the node's:

- If: output k of *each* branch is unified with the node's output k, so both
  branches must agree on every output layout (where they cannot, the axes
  are pinned and stay in the clear). The condition is a control input
  (public).
- Loop: a loop-carried value has one layout: initial value = body input =
  body output = final value (a permutation that holds before an iteration
  holds after it). Scan outputs stack the body's per-iteration values along a
  new leading axis, which is positional. The trip count, the condition and
  the iteration number are numbers (public).
- Scan: states as Loop's carried values; each scan input is sliced along its
  scan axis (positional), the other axes are the body's slice axes; scan
  outputs stack along their scan output axis (positional).

Integer values that flow unchanged (token ids carried through a loop) keep
one value layout across the boundary; integers the body computes with are
pinned by the body's own rules.
"""
from __future__ import annotations

import onnx_ir as ir

from eeonnx.compiler.rules import NodeView, NoShape, rule


def _terms(n: NodeView, value: ir.Value):
    return n.analysis.terms(value)


def _tie_values(n: NodeView, values: list[ir.Value]) -> None:
    """Integer values flowing across the subgraph boundary share one value slot."""
    ints = [v for v in values if v is not None and n.is_int(v)]
    for a, b in zip(ints, ints[1:]):
        n.analysis.values.merge(n.analysis.slot(a), n.analysis.slot(b), f"{n.node.op_type}: carried index values")


def _fill_shape(outer: ir.Value, sources: list[ir.Value]) -> None:
    """An output whose shape inference left open is one of ``sources`` (the branch
    outputs, or the initial value and the body's declared output of a carried
    value): its rank is theirs, a dim is static where they all agree on it."""
    if outer is None or outer.shape is not None:
        return
    shapes = [v.shape for v in sources if v is not None]
    if not shapes or any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
        return
    dims = []
    for ds in zip(*shapes):
        same = all(isinstance(d, int) for d in ds) and len(set(ds)) == 1
        dims.append(ds[0] if same else ir.SymbolicDim(None))
    outer.shape = ir.Shape(dims)


def fill_carried_shapes(model: ir.Model) -> bool:
    """Give Loop/Scan final state values and If outputs that shape inference left
    untyped the shape their sources agree on (see ``_fill_shape``), so that the
    nodes after them get shapes too. Returns whether anything was filled."""
    filled = False
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        pairs = []
        if node.op_type == "If":
            branches = [node.attributes[a].value for a in ("then_branch", "else_branch") if a in node.attributes]
            pairs = [(o, [g.outputs[k] for g in branches]) for k, o in enumerate(node.outputs)]
        elif node.op_type == "Loop" and "body" in node.attributes:
            body = node.attributes["body"].value
            for i in range(len(node.inputs) - 2):
                if i < len(node.outputs) and 1 + i < len(body.outputs):
                    pairs.append((node.outputs[i], [node.inputs[2 + i], body.inputs[2 + i], body.outputs[1 + i]]))
        elif node.op_type == "Scan" and "body" in node.attributes:
            body = node.attributes["body"].value
            states = len(node.inputs) - int(node.attributes["num_scan_inputs"].value)
            for i in range(states):
                if i < len(node.outputs):
                    pairs.append((node.outputs[i], [node.inputs[i], body.inputs[i], body.outputs[i]]))
        for out, sources in pairs:
            if out is not None and out.shape is None:
                _fill_shape(out, sources)
                filled |= out.shape is not None
    return filled


def _fill_stacked(outer: ir.Value, inner: ir.Value, axis: int) -> None:
    """A scan output left open by shape inference: the body's slice shape with the
    (unknown) iteration axis inserted at ``axis``."""
    if outer is None or outer.shape is not None or inner.shape is None:
        return
    dims = list(inner.shape)
    dims.insert(axis, ir.SymbolicDim(None))
    outer.shape = ir.Shape(dims)


def _tie_all(n: NodeView, values: list[ir.Value], why: str) -> None:
    """Unify the axes of values that are the same tensor on both sides of a subgraph boundary
    (the last one may be the node's output; its shape is filled in from the others if unknown)."""
    _fill_shape(values[-1] if values[-1] is not None and values[-1] in n.node.outputs else None, values[:-1])
    terms = [_terms(n, v) for v in values if v is not None and v.shape is not None]
    if len(terms) < len(values):
        raise NoShape(next(v for v in values if v is not None and v.shape is None))
    ranks = {len(t) for t in terms}
    if len(ranks) > 1:
        for t in terms:
            for a in t:
                n.pin(a, f"{why}: rank differs across the boundary")
        return
    for t in terms[1:]:
        for a, b in zip(terms[0], t):
            n.unify(a, b, f"{n.node.op_type}: {why}")
    _tie_values(n, values)


def _run(n: NodeView, graph: ir.Graph) -> None:
    n.analysis.run_graph(graph)
    n.analysis.current = n.node


def _mark_out(n: NodeView, k: int) -> None:
    n._used_out.add(k)
    n._values_out.add(k)


def _mark_in(n: NodeView, i: int) -> None:
    n._used_in.add(i)
    n._values_in.add(i)


def _pin_body_input(n: NodeView, v: ir.Value, why: str) -> None:
    if v is None:
        return
    if n.is_int(v):
        n.analysis.values.pin(n.analysis.slot(v), why)
    if v.shape is not None:
        for t in _terms(n, v):
            n.pin(t, why)


@rule("If")
def if_(n: NodeView) -> None:
    """Both branches' output k are unified with output k of the node."""
    branches = [n.attr(a) for a in ("then_branch", "else_branch")]
    for g in branches:
        _run(n, g)
    for k, out in enumerate(n.node.outputs):
        _tie_all(n, [g.outputs[k] for g in branches] + [out], "branch outputs disagree")
        _mark_out(n, k)


@rule("Loop")
def loop(n: NodeView) -> None:
    """M, cond, v_initial... ; body(iter, cond, v...) -> (cond, v..., scan...)."""
    body = n.attr("body")
    carried = n.n_in - 2
    _pin_body_input(n, body.inputs[0], "Loop: the iteration number is a number")
    _pin_body_input(n, body.inputs[1], "Loop: the condition is public")
    for i in range(carried):
        vals = [n.node.inputs[2 + i], body.inputs[2 + i], body.outputs[1 + i]]
        if i < n.n_out:
            vals.append(n.node.outputs[i])
            _mark_out(n, i)
        _tie_all(n, vals, "loop-carried value changes layout")
        _mark_in(n, 2 + i)
    _run(n, body)
    for j, inner in enumerate(body.outputs[1 + carried:]):
        k = carried + j
        if k >= n.n_out:
            break
        _fill_stacked(n.node.outputs[k], inner, 0)
        y, b = n.y(k), _terms(n, inner)
        _mark_out(n, k)
        if len(y) != len(b) + 1:
            for t in y + b:
                n.pin(t, "Loop: scan output of unexpected rank")
            continue
        n.public(y[0])
        n.tie(y[1:], b)
        _tie_values(n, [inner, n.node.outputs[k]])


def _axes(n: NodeView, attr: str, count: int) -> list[int]:
    a = n.attr(attr)
    return [int(x) for x in a] if a is not None else [0] * count


@rule("Scan", since=9)
def scan(n: NodeView) -> None:
    """states..., scan inputs... ; body(states..., slices...) -> (states..., slices...)."""
    body = n.attr("body")
    m = int(n.attr("num_scan_inputs"))
    states = n.n_in - m
    k_out = len(body.outputs) - states
    in_axes, out_axes = _axes(n, "scan_input_axes", m), _axes(n, "scan_output_axes", k_out)
    for i in range(states):
        vals = [n.node.inputs[i], body.inputs[i], body.outputs[i]]
        if i < n.n_out:
            vals.append(n.node.outputs[i])
            _mark_out(n, i)
        _tie_all(n, vals, "scan state changes layout")
        _mark_in(n, i)
    for j in range(m):
        x, b = n.x(states + j), _terms(n, body.inputs[states + j])
        a = in_axes[j] % len(x) if x else 0
        if len(x) != len(b) + 1:
            for t in x + b:
                n.pin(t, "Scan: scan input of unexpected rank")
            continue
        n.public(x[a])
        n.tie(x[:a] + x[a + 1:], b)
        _tie_values(n, [n.node.inputs[states + j], body.inputs[states + j]])
        _mark_in(n, states + j)
    _run(n, body)
    for j in range(k_out):
        k = states + j
        if k >= n.n_out:
            break
        if body.outputs[k].shape is not None:
            _fill_stacked(n.node.outputs[k], body.outputs[k], out_axes[j] % (len(body.outputs[k].shape) + 1))
        y, b = n.y(k), _terms(n, body.outputs[k])
        _mark_out(n, k)
        if len(y) != len(b) + 1:
            for t in y + b:
                n.pin(t, "Scan: scan output of unexpected rank")
            continue
        a = out_axes[j] % len(y)
        n.public(y[a])
        n.tie(y[:a] + y[a + 1:], b)
        _tie_values(n, [body.outputs[k], n.node.outputs[k]])
