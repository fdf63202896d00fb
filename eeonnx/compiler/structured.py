"""Structured groups: a class whose transform depends on the index along another class.

``groups.py`` gives each class one transform T, the same at every index of
every other axis. In attention, the value/output class ``d`` (head_dim) sits
next to a head class ``h`` on every tensor between the V and O projections,
and no op there mixes different heads: each head may take its own invertible
map. This module states that group:

    PER_HEAD (d over h): x[..., i_h, ..., :] -> x[..., i_h, ..., :] U_{i_h}

with one invertible block U_k per plain index k of ``h`` (``U_k = diag(s_k) Q_k``,
the LINEAR draw per block), applied with the tensor's exponent of ``d``
(+1: U_k, -1: U_k^-T) at every tensor where ``d`` is transformed. Query heads
of a GQA group share their KV head's block because the KV repeat (Expand /
Tile along a new axis) keeps the KV head class ``h`` and adds another class
for the repeat: the block follows ``h`` only.

When it holds (``assign``, after the transforms pass solved the exponents):
- ``d``'s group is LINEAR (every op on it commutes with any invertible map);
- every node reading or writing ``d`` at a non-zero exponent has a head
  statement (``rules/head_groups.py``) that accepts ``h``: it commutes with
  maps whose blocks follow the index of ``h`` (no op mixes different ``h``
  indices while carrying ``d``);
- every tensor that is materialized with the transform (an initializer, a
  graph input or output that is not server state, a client-split wire) holds
  ``h`` exactly once in the block of ``d`` (``expressible``): the blocks can
  be applied there; for wires and graph I/O ``h`` and ``d`` share one axis, so
  encode/decode apply it as a dense block-diagonal matrix on that axis;
- ``h``'s own transform is at most DIAGONAL (a per-head scale commutes with
  the blocks; a LINEAR ``h`` is narrowed to DIAGONAL, an orthogonal one to the
  permutation: subgroups, always sound) and ``h`` is not itself per-head.
Anything else keeps ``d``'s shared LINEAR map: never a wrong output.

Element as stored: ``HeadTransform`` = head class uid + per-block scales
[H, n] and orthogonal factors [H, n, n] (plain indices of ``h`` and ``d``).
On an axis holding Kron(.., h, .., d, ..) it is the dense block-structured
matrix ``structured.dense(...)`` gives (what encode/decode multiply by).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L

#: above LINEAR: a shared map is the special case of equal blocks
PER_HEAD = G.Group("per-head linear", G.LINEAR.rank + 1, (G.LINEAR,))


@dataclass
class PerHead:
    """The factor of a per-head class on one tensor: ``blocks[k]`` acts on the class's
    axis where the head class has plain index k (x -> x blocks[k])."""

    head: int
    blocks: np.ndarray  # [H, n, n] float64
    ndim: int = 3  # groups.has_dense: a dense map


@dataclass
class HeadTransform:
    head: int
    scale: np.ndarray  # [H, n]
    ortho: np.ndarray  # [H, n, n]
    group: G.Group = PER_HEAD
    _cache: dict = field(default_factory=dict, repr=False)
    class_refs = ("head",)  # eeonnx rekey: ``head`` is a class uid (recorded by class name)

    def redraw(self, key, label: str) -> "HeadTransform":
        """A fresh element with the same blocks (eeonnx rekey, ``groups.redraw``)."""
        return draw(key, label, self.scale.shape[1], self.head, self.scale.shape[0])

    def factor(self, e: int, inverse: bool = False) -> PerHead:
        k = (e, inverse)
        if k not in self._cache:
            s = self.scale ** (-e if inverse else e)
            if not inverse:
                b = s[:, :, None] * self.ortho
            else:
                b = np.transpose(self.ortho, (0, 2, 1)) * s[:, None, :]
            self._cache[k] = PerHead(self.head, b)
        return self._cache[k]


def draw(key, label: str, n: int, head: int, heads: int) -> HeadTransform:
    """One LINEAR draw per block, from the class label and the block index."""
    scale = np.stack([key.scales(f"{label}/head{k}", n, *G.LINEAR_RANGE) for k in range(heads)])
    ortho = np.stack([key.orthogonal(f"{label}/head{k}", n) for k in range(heads)])
    return HeadTransform(head, scale, ortho)


# ---------------------------------------------------------------------------
# where d's block lives in a tensor
# ---------------------------------------------------------------------------
def _contains(t: L.Term, uid: int) -> bool:
    return any(v.uid == uid for v in L.free_vars(t))


def _leaves(terms: list[L.Term], d: int):
    """The axes of the piece of a tensor that holds ``d``: Kron factors become axes of
    their own, a Cat holding ``d`` is narrowed to its part holding ``d`` (other parts
    do not carry the class). Yields (leaf terms) for that one piece."""
    terms = [L.resolve(t) for t in terms]
    for i, t in enumerate(terms):
        if isinstance(t, L.Kron):
            return _leaves(terms[:i] + list(t.factors) + terms[i + 1:], d)
    for i, t in enumerate(terms):
        if isinstance(t, L.Cat):
            part = next((p for p in t.parts if _contains(p, d)), None)
            rest = terms[:i] + [L.Public(t.size)] + terms[i + 1:] if part is None else \
                terms[:i] + [part] + terms[i + 1:]
            return _leaves(rest, d)
    return terms


def heads_in(terms: list[L.Term], d: int) -> set[int]:
    """Classes that occur exactly once, as whole axes or Kron factors, in the piece of the
    tensor holding ``d`` (candidates for its head); empty when ``d`` is not there."""
    leaves = _leaves(terms, d)
    uids = [t.uid for t in leaves if isinstance(t, L.Var)]
    if d not in uids:
        return set()
    return {u for u in uids if u != d and uids.count(u) == 1}


def same_axis(terms: list[L.Term], d: int, h: int) -> bool:
    """``h`` and ``d`` in one axis's term, ``h`` once in ``d``'s block of it."""
    return any(_contains(t, d) and h in heads_in([t], d) for t in terms)


def apply(a: np.ndarray, terms: list[L.Term], factor) -> np.ndarray:
    """``a`` with every per-head class's blocks applied (``factor(var)`` a PerHead);
    other maps are ``groups.apply_axis``'s (they commute: the head's own map is at
    most a scale per head)."""
    for t in terms:
        for v in L.free_vars(t):
            f = factor(v)
            if isinstance(f, PerHead):
                a = _apply_one(a, list(terms), v.uid, f)
    return a


def _apply_one(a: np.ndarray, terms: list[L.Term], d: int, f: PerHead) -> np.ndarray:
    terms = [L.resolve(t) for t in terms]
    for i, t in enumerate(terms):
        if isinstance(t, L.Kron):
            sizes = tuple(x.size for x in t.factors)
            b = a.reshape(a.shape[:i] + sizes + a.shape[i + 1:])
            return _apply_one(b, terms[:i] + list(t.factors) + terms[i + 1:], d, f).reshape(a.shape)
    for i, t in enumerate(terms):
        if isinstance(t, L.Cat) and _contains(t, d):
            cuts = np.cumsum([p.size for p in t.parts])[:-1]
            pieces = np.split(a, cuts, axis=i)
            out = [_apply_one(x, terms[:i] + [p] + terms[i + 1:], d, f) if _contains(p, d) else x
                   for x, p in zip(pieces, t.parts)]
            return np.concatenate(out, axis=i)
    pos = {t.uid: i for i, t in enumerate(terms) if isinstance(t, L.Var)}
    if d not in pos or f.head not in pos:
        raise AssertionError("per-head class without its head axis")  # assign() rules this out
    ih, idd = pos[f.head], pos[d]
    b = np.moveaxis(a, (ih, idd), (-2, -1))
    b = np.einsum("...hi,hij->...hj", b, f.blocks)
    return np.moveaxis(b, (-2, -1), (ih, idd))


def dense(term: L.Term, factor) -> np.ndarray | None:
    """The matrix (x -> x M) of the per-axis and per-head maps on one axis; None when a
    per-head class's head is on another axis (no one matrix per axis: only server state
    tensors, which encode/decode never transform, hold such a class; ``assign`` and
    ``settle_wires`` keep it off every other wire)."""
    n = term.size
    for v in L.free_vars(term):
        f = factor(v)
        if isinstance(f, PerHead) and not same_axis([term], v.uid, f.head):
            return None
    return apply(G.apply_axis(np.eye(n), 1, term, factor), [L.Public(n), term], factor)


# ---------------------------------------------------------------------------
# deciding which classes get per-head maps
# ---------------------------------------------------------------------------
def _operands(comp, node: ir.Node):
    """(relation key, terms) of every input and output of a node, as the transforms
    pass keyed them."""
    an = comp.analysis
    out = []
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        if v in an.uniform_shared:
            out.append((("use", id(node), i), an.use_terms(node, i), ("in", i)))
        else:
            t = an.known(v)
            if t is not None:
                out.append((v, t, ("in", i)))
    for k, v in enumerate(node.outputs):
        t = an.known(v)
        if t is not None:
            out.append((v, t, ("out", k)))
    return out


def _io(comp, model: ir.Model, names=()) -> list[ir.Value]:
    """Tensors that encode/decode transform (graph I/O other than server state, and
    ``names``)."""
    state = {n for p in comp.state for n in (p.input, p.output)}
    vals = [v for v in list(model.graph.inputs) + list(model.graph.outputs) if v.name not in state]
    if names:
        by = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
        by.update({o.name: o for n in model.graph for o in n.outputs})
        vals += [by[n] for n in names if n in by and n not in state]
    return vals


def assign(comp, model: ir.Model) -> None:
    """Turn LINEAR classes into PER_HEAD where the module docstring's conditions hold
    (updates ``comp.transforms`` and the classes' ``group``)."""
    from eeonnx.compiler.rules import head_groups

    linear = [u for u, tr in comp.transforms.items() if tr.group == G.LINEAR]
    if not linear:
        return
    exps = comp.exponents
    candidates: dict[int, set[int] | None] = {u: None for u in linear}
    touching: dict[int, list] = {u: [] for u in linear}
    for node in model.graph:
        ops = _operands(comp, node)
        for d in linear:
            live = [(k, t, w) for k, t, w in ops if exps.get((k, d), 0)]
            if not live:
                continue
            rule = head_groups.lookup(node)
            if rule is None:
                candidates[d] = set()
                continue
            touching[d].append((node, live, rule))
            here = set.union(*(heads_in(t, d) for _, t, _ in live))
            candidates[d] = here if candidates[d] is None else candidates[d] & here
    io = {id(v) for v in _io(comp, model)}
    for d in linear:
        ok = set()
        for h in sorted(candidates[d] or (), key=lambda u: (-comp.classes[u].size, comp.classes[u].label)
                        if u in comp.classes else (0, "")):
            if h not in comp.classes or not _fits(comp, model, d, h, touching[d], io):
                continue
            ok.add(h)
        candidates[d] = ok
    heads: set[int] = set()
    for d in sorted(linear, key=lambda u: (-comp.classes[u].size, comp.classes[u].label)):
        if d in heads:
            continue
        choice = [h for h in sorted(candidates[d], key=lambda u: (-comp.classes[u].size, comp.classes[u].label))
                  if not isinstance(comp.transforms.get(h), HeadTransform)]
        if not choice:
            continue
        h = choice[0]
        c, hc = comp.classes[d], comp.classes[h]
        comp.transforms[d] = draw(comp.key, c.label, c.size, h, hc.size)
        c.group, c.why = PER_HEAD.name, f"one block per index of {hc.name}"
        heads.add(h)
        narrow_head(comp, h, f"the head of per-head class {c.name}")


def _fits(comp, model, d: int, h: int, touching, io: set[int]) -> bool:
    for node, live, rule in touching:
        if not rule(node, live, d, h):
            return False
    exps = comp.exponents
    for k in list(exps):
        if k[1] != d or not isinstance(k[0], ir.Value):
            continue
        v = k[0]
        terms = comp.analysis.known(v)
        if v.is_initializer() and h not in heads_in(terms, d):
            return False
        if id(v) in io and not same_axis(terms, d, h):
            return False
    for p in comp.state:  # past and present hold the same transformed K/V
        by = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
        for name in (p.input, p.output):
            v = by.get(name)
            if v is not None and exps.get((v, d), 0) and h not in heads_in(comp.analysis.known(v), d):
                return False
    return True


def narrow_head(comp, h: int, why: str) -> None:
    """Make head class ``h``'s own map one that commutes with maps following its index.

    A map that mixes heads would not commute with per-head blocks: a group above
    DIAGONAL is narrowed to DIAGONAL when it contains it, else to the permutation
    (re-drawn from the class's label). Used by the per-head and the pair groups."""
    hc, htr = comp.classes[h], comp.transforms.get(h)
    if htr is None or htr.group in (G.PERMUTATION, G.DIAGONAL):
        return
    narrow = G.DIAGONAL if G.DIAGONAL in htr.group.subgroups() else G.PERMUTATION
    tr = G.draw(comp.key, hc.label, hc.size, narrow)
    if tr is None:
        comp.transforms.pop(h)
    else:
        comp.transforms[h] = tr
    hc.group, hc.why = narrow.name, why


def settle_wires(comp, model: ir.Model, wire_names) -> None:
    """After the client split: a wire tensor where a per-head class's head is on another
    axis cannot take it in encode/decode (one matrix per axis there): that class falls
    back to its shared LINEAR map (a subgroup: still exact)."""
    per_head = [u for u, tr in comp.transforms.items() if isinstance(tr, HeadTransform)]
    if not per_head:
        return
    for v in _io(comp, model, tuple(wire_names)):
        terms = comp.analysis.known(v)
        if terms is None:
            continue
        for d in per_head:
            tr = comp.transforms.get(d)
            if isinstance(tr, HeadTransform) and comp.exponents.get((v, d), 0) \
                    and not same_axis(terms, d, tr.head):
                c = comp.classes[d]
                comp.transforms[d] = G.draw(comp.key, c.label, c.size, G.LINEAR)
                c.group, c.why = G.LINEAR.name, f"its head is on another axis of wire tensor '{v.name}'"
