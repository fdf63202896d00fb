"""check: every node must have a rule in the registry.

Invariant: leaves the model unchanged; fills ``comp.unsupported`` with
(node, reason) for each node without a rule, nodes inside subgraphs included
(an op with subgraphs has a rule only if it propagates through them: If,
Loop, Scan in rules/control.py).
"""
from __future__ import annotations

import onnx_ir as ir

from eeonnx.compiler import rules


def opset_of(model: ir.Model, domain: str) -> int:
    d = "" if domain in ("", "ai.onnx") else domain
    return model.opset_imports.get(d, model.opset_imports.get("ai.onnx", 1) if d == "" else 1)


def unsupported_reason(model: ir.Model, node: ir.Node) -> str | None:
    if rules.lookup(node.domain, node.op_type, opset_of(model, node.domain)) is None:
        known = rules.REGISTRY.get(("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type))
        if known:
            return f"no rule for opset {opset_of(model, node.domain)}"
        if node.domain not in ("", "ai.onnx"):
            return f"unknown domain '{node.domain}': no equivariance rule for this op"
        return "no equivariance rule for this op (it is not on the whitelist)"
    return None


class CheckPass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        for node in ir.traversal.RecursiveGraphIterator(model.graph):  # subgraphs (If/Loop/Scan) too
            why = unsupported_reason(model, node)
            if why:
                self.comp.unsupported.append((node, why))
