"""keygen: decide which layout variables are secret and derive their permutations.

A variable is secret when it is *anchored*: it appears in the layout of some
initializer axis (the secret lives in the weights). Unanchored variables (a
static batch axis, say) stay the identity, which satisfies every equation.

Classes get stable labels from the first initializer axis that holds them
(initializers visited by name), so one key and one model always give the
same permutations. Invariant: leaves the model unchanged; fills
``comp.classes`` (uid -> SecretClass), ``comp.perms`` (uid -> array) and
``comp.losses``: weight axes that could have been secret but were pinned,
with the node and reason that pinned them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from eeonnx.compiler import layout as L
from eeonnx.compiler.passes.propagate import all_initializers


@dataclass
class SecretClass:
    name: str  # display name, c0, c1, ...
    label: str  # stable derivation label
    size: int
    group: str = "permutation"  # set by the transforms pass (eeonnx.compiler.groups)
    why: str = ""  # what kept the group from being larger (transforms pass)
    # weights that carry this (continuous) class permuted only: they show its permutation
    visible_in: list = field(default_factory=list)

    @property
    def bits(self) -> float:
        return L.log2_factorial(self.size)


def learned_weights(model: ir.Model) -> set[str]:
    """Initializers that some op contracts over (a rule registered with mixes=True)."""
    from eeonnx.compiler import rules
    from eeonnx.compiler.passes.check import opset_of

    out = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        r = rules.lookup(node.domain, node.op_type, opset_of(model, node.domain))
        if r is not None and r.mixes:
            out.update(v.name for v in node.inputs if v is not None and v.is_initializer())
    return out


class KeygenPass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        an = self.comp.analysis
        classes: dict[int, SecretClass] = {}
        losses: dict[int, tuple[L.PinInfo, int, str]] = {}
        weights = learned_weights(model)
        anchors: dict[int, set[str]] = {}
        inits = dict(all_initializers(model))  # subgraph initializers included
        for name, value in inits.items():
            if value in an.uniform_shared:
                continue
            for t in an.weight_terms(value) or []:
                for v in L.free_vars(t):
                    anchors.setdefault(v.uid, set()).add(name)
        for name in sorted(inits):
            value = inits[name]
            if value in an.uniform_shared:
                continue  # uniform: holds no secret, anchors nothing
            terms = an.weight_terms(value)
            for axis, t in enumerate(terms or []):
                for k, v in enumerate(L.free_vars(t)):
                    if v.size <= 1 or v.uid in classes or v.uid in losses:
                        continue
                    if v.pin is None:
                        classes[v.uid] = SecretClass(f"c{len(classes)}", f"{name}:{axis}:{k}", v.size)
                    elif not v.pin.inherent and (not v.pin.soft or (anchors[v.uid] & weights) - v.pin.operands):
                        losses[v.uid] = (v.pin, v.size, f"{name}[axis {axis}]")
        self.comp.classes = classes
        self.comp.losses = list(losses.values())
        self.comp.perms = {uid: self.comp.key.permutation(c.label, c.size) for uid, c in classes.items()}
