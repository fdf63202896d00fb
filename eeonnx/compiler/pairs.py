"""Pair groups: a 2-D rotation-and-scale per pair of an axis laid out as Cat(f, f).

Rotary embeddings concatenate a frequency table with itself (``Concat(freqs,
freqs)``), so the layout solver gives q's and k's head_dim the term
``Cat(f, f)``: element i and element i + n (n = |f|) form pair i. Read as a
complex number z_i = x_i + j x_{i+n}, every op of the rotary arithmetic is
complex-linear per pair:
- Mul by a tensor whose two halves are equal (cos, sin: ``symmetric``) scales
  each z_i by a real number;
- rotate_half = Concat(Neg(Slice(x, n:2n)), Slice(x, 0:n)) maps z_i -> j z_i;
- Add, projections (MatMul columns), moves (Reshape/Transpose/Expand, the KV
  cache Concat) keep pair i in place;
- q . k^T = sum_i Re(z_i conj(w_i)).
So q's pairs may be multiplied by any a_i = s_i e^{j theta_i} and k's by
1/conj(a_i) = e^{j theta_i} / s_i: the scores and the rotary rotation (a
complex multiplication too) are unchanged. In row-vector form pair i maps
(x_i, x_{i+n}) -> (x_i, x_{i+n}) M_i with M_i = s_i [[cos, sin], [-sin, cos]]
for exponent +1 and M_i^-T = (1/s_i) [[cos, sin], [-sin, cos]] for -1.

The variable f is usually not a secret class (RoPE's inv_freq is a
progression: ``passes/exposed.py`` keeps it the identity); if it is one, its
permutation moves whole pairs, which commutes. Pair transforms live beside
the classes: a union-find with parity over (tensor, f) nodes (the same algebra
as ``groups.Relations``), statements per op in ``rules/pair_rules.py``; an op
without one, a graph input/output other than server state, a client-split wire
or a component without any initializer makes its component 0 (permuted only:
never a wrong output). Each non-zero component (one attention's W_q/W_k and
what lies between) draws its own scales and angles from the key, labelled by
its first initializer's canonical graph position. The cos/sin tables stay as
they are (exponent 0).

Result: ``comp.pair_maps``: relation key -> [(f uid, exponent, PairTransform)]
for every non-zero (tensor, f); ``comp.pair_info``: one dict per component
(size, tensors, label) for reports.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler.node_access import NodeAccess

PAIRS = G.Group("pair rotation-scale", 2, (G.PERMUTATION,))  # inside LINEAR on its axis (for reports)


@dataclass
class PairTransform:
    """scale/theta [n] (one pair map for every head), or [H, n] with ``head`` the uid of
    the class whose plain index k selects row k (a map per KV head)."""

    scale: np.ndarray
    theta: np.ndarray
    head: int | None = None

    def blocks(self, e: int, inverse: bool = False) -> np.ndarray:
        """[..., n, 2, 2]: pair i maps (a, b) -> (a, b) @ blocks[..., i]."""
        s = self.scale ** (-e if inverse else e)
        c, sn = np.cos(self.theta), np.sin(self.theta)
        if inverse:  # (s R)^-1 = R^T / s
            m = np.stack([np.stack([c, -sn], -1), np.stack([sn, c], -1)], -2)
        else:
            m = np.stack([np.stack([c, sn], -1), np.stack([-sn, c], -1)], -2)
        return m * s[..., None, None]

    class_refs = ("head",)  # eeonnx rekey: ``head`` is a class uid (recorded by class name)

    def redraw(self, key, label: str) -> "PairTransform":
        """A fresh element of the same shape (eeonnx rekey, ``groups.redraw``)."""
        if self.head is None:
            return draw(key, label, self.scale.shape[-1])
        return draw(key, label, self.scale.shape[-1], self.head, self.scale.shape[0])


def draw(key, label: str, n: int, head: int | None = None, heads: int = 0) -> PairTransform:
    if head is not None:
        per = [draw(key, f"{label}/head{k}", n) for k in range(heads)]
        return PairTransform(np.stack([p.scale for p in per]), np.stack([p.theta for p in per]), head)
    scale = key.scales(f"{label}/pairs", n, *G.LINEAR_RANGE)
    theta = 2 * np.pi * key._uniform(f"{label}/pairs", "angles", n)
    return PairTransform(scale, theta)


# ---------------------------------------------------------------------------
# where the pairs are in a tensor
# ---------------------------------------------------------------------------
def is_site(t: L.Term) -> int | None:
    """The uid f when ``t`` is Cat(f, f) (two halves of one variable), else None."""
    t = L.resolve(t)
    if isinstance(t, L.Cat) and len(t.parts) == 2:
        a, b = (L.resolve(p) for p in t.parts)
        if isinstance(a, L.Var) and isinstance(b, L.Var) and a.uid == b.uid:
            return a.uid
    return None


def _sites(t: L.Term, out: dict) -> None:
    t = L.resolve(t)
    f = is_site(t)
    if f is not None:
        out[f] = out.get(f, 0) + 1
    elif isinstance(t, L.Cat):
        for p in t.parts:
            _sites(p, out)
    elif isinstance(t, L.Kron):
        for x in t.factors:
            _sites(x, out)


def carriers(terms: list[L.Term], eligible) -> set[int]:
    """Pair variables held by the tensor as exactly one Cat(f, f) and nowhere else."""
    sites: dict[int, int] = {}
    occ: dict[int, int] = {}
    for t in terms:
        _sites(t, sites)
        G.occurrences(t, occ)
    return {f for f, c in sites.items() if c == 1 and occ.get(f) == 2 and eligible(f)}


def site_axis(terms: list[L.Term], f: int) -> int | None:
    """The axis whose whole term is Cat(f, f), if any."""
    return next((i for i, t in enumerate(terms) if is_site(t) == f), None)


def _contains(t: L.Term, f: int) -> bool:
    return any(v.uid == f for v in L.free_vars(t))


def _on_site(a: np.ndarray, terms: list[L.Term], f: int, fn, head: int | None = None) -> np.ndarray:
    """``fn(halves)`` applied at the site of f: halves is the array with the site's two
    halves as axis -2 (size 2) and the pair index as axis -1 (with ``head``: that class's
    axis as -3); fn returns the same shape. Kron factors become axes of their own; a Cat
    holding f (other than the site) is narrowed to its part holding f."""
    terms = [L.resolve(t) for t in terms]
    for i, t in enumerate(terms):
        if isinstance(t, L.Kron):
            sizes = tuple(x.size for x in t.factors)
            b = a.reshape(a.shape[:i] + sizes + a.shape[i + 1:])
            return _on_site(b, terms[:i] + list(t.factors) + terms[i + 1:], f, fn, head).reshape(a.shape)
    for i, t in enumerate(terms):
        if isinstance(t, L.Cat) and is_site(t) != f and _contains(t, f):
            cuts = np.cumsum([p.size for p in t.parts])[:-1]
            pieces = np.split(a, cuts, axis=i)
            out = [_on_site(x, terms[:i] + [p] + terms[i + 1:], f, fn, head) if _contains(p, f) else x
                   for x, p in zip(pieces, t.parts)]
            return np.concatenate(out, axis=i)
    i = next((k for k, t in enumerate(terms) if is_site(t) == f), None)
    if i is None:
        raise AssertionError("no pair site of this variable")
    n = terms[i].size // 2
    b = a.reshape(a.shape[:i] + (2, n) + a.shape[i + 1:])
    src, dst = [i, i + 1], [-2, -1]
    if head is not None:
        k = next((j for j, t in enumerate(terms) if isinstance(t, L.Var) and t.uid == head), None)
        if k is None:
            raise AssertionError("pair site without its head axis")  # assign_heads rules this out
        src, dst = [k + (1 if k > i else 0)] + src, [-3] + dst
    b = fn(np.moveaxis(b, src, dst))
    return np.moveaxis(b, dst, src).reshape(a.shape)


def apply(a: np.ndarray, terms: list[L.Term], f: int, blocks: np.ndarray, head: int | None = None) -> np.ndarray:
    """Pair i of the site of f multiplied by blocks[i] (row vectors); with ``head``,
    blocks[k, i] at plain index k of the head class."""
    def fn(b):
        x0, x1 = b[..., 0, :], b[..., 1, :]
        y0 = x0 * blocks[..., 0, 0] + x1 * blocks[..., 1, 0]
        y1 = x0 * blocks[..., 0, 1] + x1 * blocks[..., 1, 1]
        return np.stack([y0, y1], axis=-2)

    return _on_site(a, terms, f, fn, head)


def halves_equal(a: np.ndarray, terms: list[L.Term], f: int) -> bool:
    seen = []
    _on_site(a, terms, f, lambda b: seen.append(np.array_equal(b[..., 0, :], b[..., 1, :])) or b)
    return bool(seen) and all(seen)


# ---------------------------------------------------------------------------
# solving
# ---------------------------------------------------------------------------
class PairOperand:
    def __init__(self, key, value, terms, nodes: dict):
        self.key, self.value, self.terms, self.nodes = key, value, terms, nodes

    def has(self, f: int) -> bool:
        return f in self.nodes


class PairSolver:
    def __init__(self, comp):
        self.comp = comp
        self.an = comp.analysis
        self.rel = G.Relations()
        self._sym: dict = {}

    def eligible(self, f: int) -> bool:
        """Any variable: a secret f permutes pairs (both halves alike), which commutes
        with the pair maps (applied on plain indices first). The classes' own solver
        gives a tensor holding f twice exponent 0, so no tensor takes both."""
        return True

    def operand(self, node: ir.Node | None, value: ir.Value | None, i: int | None = None) -> PairOperand | None:
        if value is None:
            return None
        if node is not None and i is not None and value in self.an.uniform_shared:
            key, terms = ("use", id(node), i), self.an.use_terms(node, i)
        else:
            key, terms = value, self.an.known(value)
        if terms is None:
            return PairOperand(key, value, [], {})
        nodes = {}
        for f in carriers(terms, self.eligible):
            nodes[f] = (key, f)
            self.rel.add(nodes[f])
            if isinstance(key, tuple):
                self.rel.force_zero(nodes[f])  # a shared uniform constant: one layout per use
        return PairOperand(key, value, terms, nodes)

    def symmetric(self, value: ir.Value, f: int) -> bool:
        """Its two halves at the site of f hold equal values (cos/sin tables): derived
        from the ops that made it, or read from a constant."""
        k = (value, f)
        if k not in self._sym:
            self._sym[k] = False  # cycles (none in a DAG) and unknowns: no
            self._sym[k] = self._symmetric(value, f)
        return self._sym[k]

    def _symmetric(self, value: ir.Value, f: int) -> bool:
        from eeonnx.compiler.rules import pair_rules

        terms = self.an.known(value)
        if terms is None or f not in carriers(terms, lambda _: True):
            return False
        if value.const_value is not None:
            return halves_equal(value.const_value.numpy(), terms, f)
        node = value.producer()
        return node is not None and pair_rules.symmetric_output(self, node, value, f)


class PairView(NodeAccess):
    """What a pair statement sees of one node."""

    def __init__(self, solver: PairSolver, node: ir.Node):
        self.solver, self.node = solver, node
        self.covered: set = set()
        self.passive: set[int] = set()
        self._ops: dict = {}

    def inp(self, i: int) -> PairOperand | None:
        if ("in", i) not in self._ops:
            v = self.node.inputs[i] if i < self.n_in else None
            self._ops[("in", i)] = self.solver.operand(self.node, v, i)
        return self._ops[("in", i)]

    def out(self, k: int) -> PairOperand | None:
        if ("out", k) not in self._ops:
            v = self.node.outputs[k] if k < self.n_out else None
            self._ops[("out", k)] = self.solver.operand(None, v)
        return self._ops[("out", k)]

    def relate(self, a, b, sign: int = 1) -> None:
        self.covered.update((a, b))
        self.solver.rel.relate(a, b, sign, G.LINEAR)

    def zero(self, *nodes) -> None:
        for n in nodes:
            self.covered.add(n)
            self.solver.rel.force_zero(n)

    def finish(self) -> None:
        ops = [self.inp(i) for i in range(self.n_in) if i not in self.passive]
        ops += [self.out(k) for k in range(self.n_out)]
        for op in ops:
            if op is not None:
                for n in op.nodes.values():
                    if n not in self.covered:
                        self.solver.rel.force_zero(n)


def solve(comp, model: ir.Model) -> None:
    """Fill ``comp.pair_maps`` / ``comp.pair_info`` (see the module docstring)."""
    from eeonnx.compiler.passes.keygen import canonical_initializers
    from eeonnx.compiler.rules import pair_rules

    comp.pair_maps, comp.pair_info = {}, []
    s = PairSolver(comp)
    inner = pair_rules.composites(s, model)
    top = set()
    for node in model.graph:
        top.add(id(node))
        if id(node) in inner:
            continue  # a Slice/Neg inside rotate_half: its Concat's statement covers it
        view = PairView(s, node)
        rule = pair_rules.lookup(node)
        if rule is not None:
            rule(view)
        view.finish()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if id(node) not in top:
            for v in list(node.inputs) + list(node.outputs):
                op = s.operand(None, v)
                for n in (op.nodes.values() if op else ()):
                    s.rel.force_zero(n)
    by = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
    state = set()
    for p in comp.state:
        a, b = s.operand(None, by[p.input]), s.operand(None, by[p.output])
        state |= {p.input, p.output}
        for f in set(a.nodes) | set(b.nodes):
            if f in a.nodes and f in b.nodes:
                s.rel.relate(a.nodes[f], b.nodes[f], 1, G.LINEAR)
            else:
                for op in (a, b):
                    if f in op.nodes:
                        s.rel.force_zero(op.nodes[f])
    for v in by.values():
        if v.name not in state:
            for n in s.operand(None, v).nodes.values():
                s.rel.force_zero(n)
    # components: labelled by their first initializer in canonical order; none: zero
    labels: dict = {}
    for tag, value in canonical_initializers(model):
        for f in carriers(comp.analysis.known(value) or [], s.eligible):
            n = (value, f)
            if n in s.rel.parent and s.rel.exponent(n) != 0:
                root = s.rel.find(n)[0]
                labels.setdefault(root, (f"{comp.model_digest}/{tag}:pairs", f))
    draws: dict = {}
    for n in s.rel.parent:
        e = s.rel.exponent(n)
        if e == 0:
            continue
        root = s.rel.find(n)[0]
        if root not in labels:
            continue
        label, f = labels[root]
        if root not in draws:
            size = next(v.size for v in _vars_named(comp, n) if v.uid == f)
            draws[root] = draw(comp.key, label, size)
            comp.pair_info.append({"label": label, "size": size, "root": root, "tensors": []})
        comp.pair_maps.setdefault(n[0], []).append((n[1], e, draws[root], root))
        if isinstance(n[0], ir.Value) and n[0].is_initializer():
            next(i for i in comp.pair_info if i["root"] == root)["tensors"].append(n[0].name)
    assign_heads(comp, model, s)


def _vars_named(comp, node):
    key = node[0]
    terms = comp.analysis.known(key) if isinstance(key, ir.Value) else []
    return [v for t in terms or [] for v in L.free_vars(t)]


def value_maps(comp, value) -> list[tuple[int, np.ndarray, int | None]]:
    """(f, blocks, head) for each pair transform on ``value`` (an initializer)."""
    return [(f, tr.blocks(e), tr.head) for f, e, tr, _root in getattr(comp, "pair_maps", {}).get(value, [])]


def transform(comp, value, array: np.ndarray, terms) -> np.ndarray:
    for f, blocks, head in value_maps(comp, value):
        array = apply(array, terms, f, blocks, head)
    return array


def assign_heads(comp, model: ir.Model, s: PairSolver) -> None:
    """Give a component one map per KV head where ``structured``'s conditions hold with
    the pair variable in the role of the class: every node touching the component's
    transformed tensors has a head statement (rules/head_groups) accepting the head
    class, every initializer and state tensor of it holds the head once in the site's
    piece; the head's own transform is narrowed to at most DIAGONAL."""
    from eeonnx.compiler import structured as S
    from eeonnx.compiler.rules import head_groups

    by_root: dict = {}
    for key, maps in comp.pair_maps.items():
        for f, e, tr, root in maps:
            by_root.setdefault(root, {})[key] = (f, e, tr)
    if not by_root:
        return
    live_at: dict = {}  # root -> [(node, live operands, f)]
    blocked: set = set()
    for node in model.graph:
        ops = S._operands(comp, node)
        for root, keys in by_root.items():
            live = [(k, t, w) for k, t, w in ops if k in keys]
            if not live:
                continue
            if head_groups.lookup(node) is None:
                blocked.add(root)
            live_at.setdefault(root, []).append((node, live, keys[live[0][0]][0]))
    for root, keys in by_root.items():
        if root in blocked:
            continue
        cands = None
        for key, (f, _e, _tr) in keys.items():
            terms = comp.analysis.known(key) if isinstance(key, ir.Value) else None
            if terms is None:
                cands = set()
                break
            here = S.heads_in(terms, f)
            cands = here if cands is None else cands & here
        ok = []
        for h in sorted(cands or (), key=lambda u: (-comp.classes[u].size, comp.classes[u].label)
                        if u in comp.classes else (0, "")):
            if h not in comp.classes or isinstance(comp.transforms.get(h), S.HeadTransform):
                continue
            if all(head_groups.lookup(node)(node, live, f, h) for node, live, f in live_at.get(root, [])):
                ok.append(h)
        if not ok:
            continue
        h, hc = ok[0], comp.classes[ok[0]]
        info = next(i for i in comp.pair_info if i["root"] == root)
        tr = draw(comp.key, info["label"], info["size"], h, hc.size)
        info["head"] = hc.name
        for key, maps in comp.pair_maps.items():
            comp.pair_maps[key] = [(f, e, tr if r == root else t, r) for f, e, t, r in maps]
        S.narrow_head(comp, h, "the head of a per-head pair map")


def settle_wires(comp, model: ir.Model, wire_names) -> None:
    """After the client split: a component reaching a wire tensor (encode/decode apply no
    pair map) is dropped to 0 (the permuted-only artifact for its tensors: exact)."""
    maps = getattr(comp, "pair_maps", {})
    if not maps or not wire_names:
        return
    by = {o.name: o for n in model.graph for o in n.outputs}
    by.update({v.name: v for v in model.graph.inputs})
    state = {n for p in comp.state for n in (p.input, p.output)}
    drop = {r for name in wire_names if name in by and name not in state
            for _f, _e, _tr, r in maps.get(by[name], [])}
    if drop:
        comp.pair_maps = {k: [m for m in v if m[3] not in drop] for k, v in maps.items()}
        comp.pair_maps = {k: v for k, v in comp.pair_maps.items() if v}
        comp.pair_info = [i for i in comp.pair_info if i["root"] not in drop]


def describe(comp) -> str:
    """One line per pair component, for ``check --spec`` and the compile summary."""
    out = []
    for i in getattr(comp, "pair_info", []):
        t = ", ".join(i["tensors"][:3]) + (f" +{len(i['tensors']) - 3} more" if len(i["tensors"]) > 3 else "")
        per = f", one map per index of {i['head']}" if i.get("head") else ""
        out.append(f"pairs[{i['size']}] (Cat(f, f)): {PAIRS.name}{per} in {t}")
    return "\n".join(out)
