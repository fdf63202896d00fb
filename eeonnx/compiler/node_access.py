"""One node's arity and attributes, as every statement view reads them.

The layout view (``rules.NodeView``), the group view
(``passes.transforms.GroupView``) and the pair view (``pairs.PairView``)
each wrap one ``onnx_ir`` node for the statements of their analysis; this
base gives them the same read-only accessors. It never changes the node.
"""
from __future__ import annotations

import onnx_ir as ir


class NodeAccess:
    """Read-only accessors over ``self.node`` (set by the subclass)."""

    node: ir.Node

    @property
    def n_in(self) -> int:
        return len(self.node.inputs)

    @property
    def n_out(self) -> int:
        return len(self.node.outputs)

    def attr(self, name: str, default=None):
        """The attribute's value, or ``default`` when the node does not set it."""
        a = self.node.attributes.get(name)
        return default if a is None else a.value
