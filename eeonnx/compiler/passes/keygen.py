"""keygen: decide which layout variables are secret and derive their permutations.

A variable is secret when it is *anchored*: it appears in the layout of some
initializer axis (the secret lives in the weights). Unanchored variables (a
static batch axis, say) stay the identity, which satisfies every equation.
A variable that a tensor's values expose (see ``exposed``: a progression or a
sorted constant along the class) stays the identity too and is reported.

Labels: ``"{model digest}/g{graph}n{node}.{input}:{axis}:{k}"``, from the
first place the class is met in canonical graph order (graph index in
``model.graphs()``, node index, input slot of an initializer; initializers no
node reads follow in stored order as ``i{k}``), the axis and the variable's
position in that axis's layout. No initializer name enters a label; the
digest of the model's content (``comp.model_digest``, weights included) binds
every permutation to this model. So one key and one model always give the
same permutations, and the same key on another model (a fine-tune, a
vocabulary grown by a few rows) gives unrelated ones.

Invariant: leaves the model unchanged; fills ``comp.classes`` (uid ->
SecretClass), ``comp.perms`` (uid -> array), ``comp.exposed`` and
``comp.losses``: weight axes that could have been secret but were pinned,
with the node and reason that pinned them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from eeonnx.compiler import layout as L
from eeonnx.compiler.passes.exposed import exposure
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
        """Permutation entropy log2(n!) (not a security level)."""
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


def canonical_initializers(model: ir.Model) -> list[tuple[str, ir.Value]]:
    """(position tag, initializer) in canonical graph order, each initializer once
    (subgraph initializers included)."""
    inits = {id(v) for _, v in all_initializers(model)}
    seen: set[int] = set()
    out = []
    for gi, g in enumerate(model.graphs()):
        for k, node in enumerate(g):
            for slot, v in enumerate(node.inputs):
                if v is not None and id(v) in inits and id(v) not in seen:
                    seen.add(id(v))
                    out.append((f"g{gi}n{k}.{slot}", v))
    for k, (_name, v) in enumerate(all_initializers(model)):
        if id(v) not in seen:
            seen.add(id(v))
            out.append((f"i{k}", v))
    return out


class KeygenPass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        comp = self.comp
        if not getattr(comp, "model_digest", None):
            from eeonnx.compiler.digest import model_digest

            comp.model_digest = model_digest(model)
        an = comp.analysis
        weights = learned_weights(model)
        anchors: dict[int, set[str]] = {}
        holders: dict[int, list[tuple[ir.Value, int, L.Term]]] = {}
        order = canonical_initializers(model)
        for _tag, value in order:
            if value in an.uniform_shared:
                continue  # uniform: holds no secret, anchors nothing
            terms = an.weight_terms(value) or []
            plain_view = an.storage.get(value) is None  # values laid out as the terms say
            for axis, t in enumerate(terms):
                for v in L.free_vars(t):
                    anchors.setdefault(v.uid, set()).add(value.name)
                    if plain_view:
                        holders.setdefault(v.uid, []).append((value, axis, t))
        classes: dict[int, SecretClass] = {}
        losses: dict[int, tuple[L.PinInfo, int, str]] = {}
        exposed: dict[int, dict] = {}
        for tag, value in order:
            if value in an.uniform_shared:
                continue
            for axis, t in enumerate(an.weight_terms(value) or []):
                for k, v in enumerate(L.free_vars(t)):
                    if v.size <= 1 or v.uid in classes or v.uid in losses or v.uid in exposed:
                        continue
                    if v.pin is None:
                        why = _exposure(v, holders.get(v.uid, []))
                        if why is not None:
                            exposed[v.uid] = {"size": v.size, "tensor": why[0], "axis": why[1], "reason": why[2]}
                            continue
                        classes[v.uid] = SecretClass(f"c{len(classes)}", f"{comp.model_digest}/{tag}:{axis}:{k}",
                                                     v.size)
                    elif not v.pin.inherent and (not v.pin.soft or (anchors[v.uid] & weights) - v.pin.operands):
                        losses[v.uid] = (v.pin, v.size, f"{value.name}[axis {axis}]")
        comp.classes = classes
        comp.losses = list(losses.values())
        comp.exposed = list(exposed.values())
        comp.perms = {uid: comp.key.permutation(c.label, c.size) for uid, c in classes.items()}


def _exposure(v: L.Var, holders) -> tuple[str, int, str] | None:
    """(tensor, axis, reason) of the first holder whose values expose class ``v``."""
    for value, axis, t in holders:
        tensor = value.const_value
        if tensor is None or len(tensor.shape) <= axis:
            continue
        why = exposure(tensor.numpy(), axis, t, v)
        if why is not None:
            return value.name, axis, why
    return None
