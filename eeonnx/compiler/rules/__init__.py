"""Op rule registry: one declarative entry per (domain, op_type, opset range).

A rule receives a :class:`NodeView` and states layout equations between the
axes of the node's inputs and outputs (``unify``), or pins axes on which the
op is not equivariant (``pin``: reported; ``public``: inherent, e.g. spatial
axes of a convolution, not reported).

Safety net (enforced by :meth:`NodeView.finish`, not by each rule): every
input or output the rule did not touch with ``x()``/``y()``/``passive()`` is
a *control* tensor (shapes, pads, scales, axes...) and is pinned to Public
entirely, so a rule can never leave a weight permuted by accident.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import layout as L
from eeonnx.compiler.node_access import NodeAccess


@dataclass(frozen=True)
class OpRule:
    domain: str
    op_type: str
    since: int
    until: int | None
    apply: Callable[["NodeView"], None]
    mixes: bool = False  # contracts over axes of its constant inputs: those are learned weights
    # (input index, output index, axis): the output is the input extended along
    # axis (a KV cache inside a fused attention op)
    state: tuple = ()

    @property
    def doc(self) -> str:
        return (self.apply.__doc__ or "").strip().splitlines()[0] if self.apply.__doc__ else ""


REGISTRY: dict[tuple[str, str], list[OpRule]] = {}


def rule(*op_types: str, domain: str = "", since: int = 1, until: int | None = None, mixes: bool = False,
         state: tuple = ()):
    """Register ``fn`` as the rule of each op type for opsets [since, until].

    ``mixes=True`` says the op contracts over axes of its constant inputs
    (Conv, MatMul, ...): those constants are learned weights, whose classes are
    worth reporting when something pins them. ``state`` lists (input, output,
    axis) triples where the op appends to a cache it reads (past -> present)."""

    def deco(fn: Callable[[NodeView], None]):
        for op in op_types:
            REGISTRY.setdefault((domain, op), []).append(OpRule(domain, op, since, until, fn, mixes, state))
        return fn

    return deco


def lookup(domain: str, op_type: str, opset: int) -> OpRule | None:
    domain = "" if domain in ("", "ai.onnx") else domain
    for r in REGISTRY.get((domain, op_type), []):
        if r.since <= opset and (r.until is None or opset <= r.until):
            return r
    return None


class NoShape(Exception):
    """A value the rule needs has no known rank."""

    def __init__(self, value: ir.Value):
        super().__init__(value.name)
        self.value = value


def dims_of(value: ir.Value) -> list | None:
    """Static ints, symbolic names (str) or None (unknown) per axis; None if rank unknown."""
    if value.shape is None:
        return None
    out = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(d.value if isinstance(d.value, str) else None)
    return out


class NodeView(NodeAccess):
    """What a rule sees of one node: its axes as layout terms, attributes, constants."""

    def __init__(self, analysis, node: ir.Node, opset: int):
        self.analysis = analysis
        self.node = node
        self.opset = opset
        self._used_in: set[int] = set()
        self._used_out: set[int] = set()
        self._values_in: set[int] = set()
        self._values_out: set[int] = set()

    # -- structure -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.node.name or f"<{self.node.op_type}>"

    def has(self, i: int) -> bool:
        return i < len(self.node.inputs) and self.node.inputs[i] is not None

    def has_out(self, i: int) -> bool:
        return i < len(self.node.outputs) and (
            self.node.outputs[i].uses() or self.node.outputs[i].is_graph_output()
        )

    def x(self, i: int) -> list[L.Term]:
        """Layout terms of input i, marking it a data input."""
        self._used_in.add(i)
        return self.analysis.use_terms(self.node, i)

    def y(self, i: int) -> list[L.Term]:
        """Layout terms of output i, marking it a data output."""
        self._used_out.add(i)
        return self.analysis.terms(self.node.outputs[i])

    def passive(self, i: int) -> None:
        """Input i is read for its shape only: any layout and any values are fine."""
        self._used_in.add(i)
        self._values_in.add(i)

    def storage(self, i: int, view) -> bool:
        """Input i (an initializer) stores its values packed: ``view`` (a
        compiler.storage.StorageView) gives its logical axes' layouts, which fold
        applies by repacking. The stored axes themselves stay as they are.

        Several nodes may read one packed tensor (two branches of a merged
        decoder) when each reads it through the same view: their logical layouts
        are unified. A reader that does not declare a view (it would read the
        bytes as they are) pins every logical axis, checked once every node has
        been seen (``Analysis.check_storage``). Returns whether the view was kept."""
        v = self.node.inputs[i]
        self._used_in.add(i)
        self._values_in.add(i)
        self.public(*self.analysis.use_terms(self.node, i))
        for t in view.terms:
            L.anchor(t)
        if v.const_value is None or v.is_graph_output():
            for t in view.terms:
                self.pin(t, "packed weight is not a constant")
            return False
        known = self.analysis.storage.get(v)
        if known is None:
            self.analysis.storage[v] = view
        elif (known.logical_shape, known.rows, known.per_row, known.bits) == \
                (view.logical_shape, view.rows, view.per_row, view.bits):
            for a, b in zip(known.terms, view.terms):
                self.unify(a, b, f"{self.node.op_type}: readers of one packed weight disagree")
        else:
            for t in list(known.terms) + list(view.terms):
                self.pin(t, "packed weight read with two different packings")
            return False
        self.analysis.storage_readers.setdefault(v, set()).add(id(self.node))
        return True

    def dims(self, i: int) -> list:
        d = dims_of(self.node.inputs[i])
        if d is None:
            raise NoShape(self.node.inputs[i])
        return d

    def out_dims(self, i: int) -> list:
        d = dims_of(self.node.outputs[i])
        if d is None:
            raise NoShape(self.node.outputs[i])
        return d

    def const(self, i: int) -> np.ndarray | None:
        """Value of input i when it is a constant (initializer), else None."""
        if not self.has(i):
            return None
        v = self.node.inputs[i]
        if v.const_value is None:
            return None
        return v.const_value.numpy()

    def ints(self, attr: str, input_index: int | None = None) -> list[int] | None:
        """Integer list from an attribute, or from a constant input (newer opsets)."""
        a = self.attr(attr)
        if a is not None:
            return [int(v) for v in a]
        if input_index is not None and self.has(input_index):
            c = self.const(input_index)
            return None if c is None else [int(v) for v in np.asarray(c).reshape(-1)]
        return None

    # -- value layouts (integer tensors whose values index an axis) ------------
    def is_int(self, value: ir.Value | None) -> bool:
        return value is not None and value.dtype is not None and value.dtype.is_integer()

    def flow(self, i: int, o: int) -> None:
        """Output o's integer values are input i's values, rearranged (not computed)."""
        vi, vo = self.node.inputs[i], self.node.outputs[o]
        if self.is_int(vi) and self.is_int(vo):
            self._values_in.add(i)
            self._values_out.add(o)
            sv = self.analysis.values
            sv.merge(self.analysis.slot(vi), self.analysis.slot(vo), f"{self.node.op_type}: index values")

    def index(self, i: int, term: L.Term) -> None:
        """Input i's values are positions on an axis with layout ``term``."""
        self._values_in.add(i)
        self.analysis.values.bind(self.analysis.slot(self.node.inputs[i]), term,
                                  f"{self.node.op_type}: indexed tables do not match")

    def index_out(self, o: int, term: L.Term) -> None:
        """Output o's values are positions on an axis with layout ``term`` (ArgMax, TopK)."""
        self._values_out.add(o)
        self.analysis.values.bind(self.analysis.slot(self.node.outputs[o]), term,
                                  f"{self.node.op_type}: indexed tables do not match")

    # -- equations -----------------------------------------------------------
    def unify(self, a: L.Term, b: L.Term, why: str | None = None) -> None:
        self.analysis.unifier.unify(a, b, why or f"{self.node.op_type}: layouts cannot be matched")

    def tie(self, xs: list[L.Term], ys: list[L.Term]) -> None:
        """Unify two lists of axes pairwise (same rank)."""
        for a, b in zip(xs, ys, strict=True):
            self.unify(a, b)

    def pin(self, t: L.Term, why: str) -> None:
        """Force an axis public because the op is not equivariant on it (reported)."""
        self.analysis.unifier.pin(t, f"{self.node.op_type}: {why}")

    def public(self, *ts: L.Term) -> None:
        """Axes that are positional by nature (spatial, kernel); not reported as a loss."""
        for t in ts:
            self.analysis.unifier.pin(t, "positional", report=False)

    def finish(self) -> None:
        """Pin every input/output the rule did not declare as data (control tensors),
        and the values of every integer input/output whose values it did not route."""
        why = f"{self.node.op_type}: reads index values as numbers"
        for i, v in enumerate(self.node.inputs):
            if i not in self._values_in and self.is_int(v):
                self.analysis.values.pin(self.analysis.slot(v), why)
        for i, v in enumerate(self.node.outputs):
            if i not in self._values_out and self.is_int(v):
                self.analysis.values.pin(self.analysis.slot(v), why)
        for i, v in enumerate(self.node.inputs):
            if v is not None and i not in self._used_in and v.shape is not None:
                for t in self.analysis.terms(v):
                    self.analysis.unifier.pin(t, "control input", report=False)
        for i, v in enumerate(self.node.outputs):
            if i not in self._used_out and v.shape is not None:
                for t in self.analysis.terms(v):
                    self.analysis.unifier.pin(t, "untracked output", report=False)


def load_all() -> None:
    """Import every rule module so that the registry is complete."""
    from eeonnx.compiler.rules import elementwise, indexing, linear, recurrent, reduce, shape, spatial  # noqa: F401
    from eeonnx.compiler.rules import contrib, control, quant  # noqa: F401


load_all()
