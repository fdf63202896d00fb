"""propagate: give every axis of every tensor a layout, by unification.

Each node's rule states equations between its axes; the solver binds
variables. Nodes without a rule (or whose shapes are unknown) pin every axis
they touch, so whatever passes through them is in the clear and exact.

Invariant: leaves the model unchanged; fills ``comp.terms`` (value -> list of
layout terms, one per axis)  Every
equation that forced a variable to the identity is remembered on the
variable (see layout.PinInfo); keygen decides which of those were losses.
"""
from __future__ import annotations

import onnx_ir as ir

from eeonnx.compiler import layout as L
from eeonnx.compiler import rules
from eeonnx.compiler.passes.check import opset_of
from eeonnx.compiler.values import Slot, ValueSolver


class Analysis:
    """Layout terms per value plus the solver that relates them."""

    def __init__(self):
        self._terms: dict[ir.Value, list[L.Term]] = {}
        self._slots: dict[ir.Value, Slot] = {}
        self._use_terms: dict[tuple[int, int], list[L.Term]] = {}
        self.uniform_shared: set[ir.Value] = set()
        # initializers whose stored axes are not the computed ones (packed int4):
        # fold permutes their logical view (see compiler/storage.py)
        self.storage: dict[ir.Value, object] = {}
        self.storage_readers: dict[ir.Value, set[int]] = {}  # packed value -> ids of nodes unpacking it
        self.run_graph = lambda graph: None  # set by PropagatePass: propagate through a subgraph
        self.current: ir.Node | None = None
        self.unifier = L.Unifier(self._context)
        self.values = ValueSolver(self.unifier)

    def _context(self) -> tuple[str, str, frozenset]:
        n = self.current
        if n is None:
            return "", "", frozenset()
        return n.name or "", n.op_type, frozenset(v.name for v in n.inputs if v is not None and v.is_initializer())

    def terms(self, value: ir.Value) -> list[L.Term]:
        t = self._terms.get(value)
        if t is None:
            dims = rules.dims_of(value)
            if dims is None:
                raise rules.NoShape(value)
            t = [L.fresh(d if isinstance(d, int) else None) for d in dims]
            if value.is_initializer():
                for term in t:
                    L.anchor(term)
            self._terms[value] = t
        return t

    def use_terms(self, node: ir.Node, i: int) -> list[L.Term]:
        """Terms of input i of node: per use for a shared uniform constant (any
        permutation leaves it unchanged, so its uses need not agree), else the value's."""
        value = node.inputs[i]
        if value not in self.uniform_shared:
            return self.terms(value)
        key = (id(node), i)
        if key not in self._use_terms:
            dims = rules.dims_of(value)
            if dims is None:
                raise rules.NoShape(value)
            self._use_terms[key] = [L.fresh(d if isinstance(d, int) else None) for d in dims]
        return self._use_terms[key]

    def slot(self, value: ir.Value) -> Slot:
        """Value-layout slot of an integer tensor (constants are pinned: fixed values)."""
        s = self._slots.get(value)
        if s is None:
            s = self._slots[value] = Slot()
            if value.const_value is not None:
                s.pinned = "constant indices"
        return s

    def has_slot(self, value: ir.Value) -> bool:
        return value in self._slots

    def known(self, value: ir.Value) -> list[L.Term] | None:
        try:
            return self.terms(value)
        except rules.NoShape:
            return None

    def check_storage(self) -> None:
        """A packed weight that some node reads without unpacking it keeps its bytes:
        its logical axes are pinned (the node would see repacked bytes otherwise)."""
        for value, view in self.storage.items():
            readers = {id(u.node) for u in value.uses()}
            if readers != self.storage_readers.get(value, set()):
                for t in view.terms:
                    self.unifier.pin(t, "packed weight also read as plain bytes")

    def weight_terms(self, value: ir.Value) -> list[L.Term] | None:
        """Layout per axis of what an initializer holds: its storage view's logical
        axes when it has one, else its own axes."""
        view = self.storage.get(value)
        return list(view.terms) if view is not None else self.known(value)


class PropagatePass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        an = Analysis()
        an.uniform_shared = shared_uniform_constants(model)
        unsupported = {id(n) for n, _ in self.comp.unsupported}
        an.run_graph = lambda graph: _run(an, model, graph, unsupported)
        an.run_graph(model.graph)
        an.current = None
        an.check_storage()
        self.comp.analysis = an


def _run(an: Analysis, model: ir.Model, graph: ir.Graph, unsupported: set[int]) -> None:
    """Apply every node's rule in ``graph``; a control-flow rule calls back into
    this for its subgraphs (``Analysis.run_graph``), with the same solver."""
    for node in graph:
        an.current = node
        if id(node) in unsupported:
            _pin_all(an, node, "op not supported")
            continue
        rule = rules.lookup(node.domain, node.op_type, opset_of(model, node.domain))
        view = rules.NodeView(an, node, opset_of(model, node.domain))
        try:
            rule.apply(view)
            view.finish()
        except rules.NoShape as e:
            an.current = node
            _pin_all(an, node, f"shape of '{e.value.name}' is unknown (try --dim)")


def all_initializers(model: ir.Model):
    """(name, value) of every initializer, those of subgraphs (If/Loop/Scan bodies) included."""
    for g in model.graphs():
        yield from g.initializers.items()


def outer_reads(node: ir.Node) -> list[ir.Value]:
    """Values of enclosing graphs that the subgraphs of ``node`` read (its implicit inputs)."""
    inner: set[int] = set()
    reads: list[ir.Value] = []
    seen: set[int] = set()
    for attr in node.attributes.values():
        graphs = [attr.value] if isinstance(attr.value, ir.Graph) else \
            list(attr.value) if attr.type == ir.AttributeType.GRAPHS else []
        for g in graphs:
            for sub in ir.traversal.RecursiveGraphIterator(g):
                for o in sub.outputs:
                    inner.add(id(o))
            for sub_g in [g] + [a.value for s in ir.traversal.RecursiveGraphIterator(g)
                                for a in s.attributes.values() if isinstance(a.value, ir.Graph)]:
                for v in list(sub_g.inputs) + list(sub_g.initializers.values()):
                    inner.add(id(v))
            for sub in ir.traversal.RecursiveGraphIterator(g):
                for v in sub.inputs:
                    if v is not None and id(v) not in inner and id(v) not in seen:
                        seen.add(id(v))
                        reads.append(v)
            for v in g.outputs:  # a subgraph may return an outer value unchanged
                if id(v) not in inner and id(v) not in seen:
                    seen.add(id(v))
                    reads.append(v)
    return reads


#: ops that map a tensor with all elements equal to one with all elements equal
#: (elementwise, with per-tensor parameters)
UNIFORM_PRESERVING = {"Identity", "Cast", "QuantizeLinear", "DequantizeLinear"}


def shared_uniform_constants(model: ir.Model) -> set[ir.Value]:
    """Tensors used by several nodes whose elements are all equal (zeros biases,
    ones scales that an exporter deduplicated into one tensor): such initializers,
    and the outputs of UNIFORM_PRESERVING ops applied to them with per-tensor
    parameters (a QDQ model dequantizes a shared zeros bias once and feeds every
    layer from that one output)."""
    uniform = set()
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is None or t.size < 2:
            continue
        a = t.numpy().reshape(-1)
        if (a == a[0]).all():
            uniform.add(value)
    for node in model.graph:
        if node.op_type not in UNIFORM_PRESERVING or not node.inputs or node.inputs[0] not in uniform:
            continue
        params = [v for v in node.inputs[1:] if v is not None]
        if all(v.const_value is not None and v.const_value.size == 1 for v in params) \
                and int(node.attributes.get_int("block_size", 0) or 0) == 0 and node.outputs[0].shape is not None:
            uniform.add(node.outputs[0])
    return {v for v in uniform if len(v.uses()) >= 2}


def _pin_all(an: Analysis, node: ir.Node, reason: str) -> None:
    """Pin every axis the node touches, the outer values its subgraphs read included."""
    for v in list(node.inputs) + list(node.outputs) + outer_reads(node):
        if v is None:
            continue
        terms = an.known(v)
        for t in terms or []:
            an.unifier.pin(t, f"{node.op_type}: {reason}")
