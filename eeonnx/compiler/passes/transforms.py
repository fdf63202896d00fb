"""transforms: solve each class's group and draw its transform from the key.

Runs after keygen and state (it needs the classes and the server state
pairs). Walks every node once with its statement from ``rules/group_rules``
(see ``eeonnx.compiler.groups`` for the algebra), then:
- nodes inside subgraphs (If/Loop/Scan bodies) get 0 on everything they read
  or write, outer-scope values included;
- a state pair (past -> present) keeps one exponent per class, so the cache
  the server holds is the transformed K/V;
- classes whose values index a table (token ids) stay permutations.

Invariant: leaves the model unchanged; sets ``SecretClass.group`` (a group
name) on every class, ``comp.transforms`` (uid -> Transform, only for
classes above the permutations) and ``comp.exponents`` ((value, uid) -> +1/-1,
only non-zero entries of those classes). With ``mode="permutation"`` every
class stays a permutation and both dicts are empty.
"""
from __future__ import annotations

import onnx_ir as ir

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler import pairs, structured
from eeonnx.compiler.node_access import NodeAccess
from eeonnx.compiler.rules import group_rules
from eeonnx.compiler.rules import norm_groups  # noqa: F401  (registers the norm statements)

MODES = ("permutation", "max")


class Operand:
    """One input/output of a node as the group statements see it.

    ``vars``: class uid -> relation node, for classes occurring exactly once;
    ``all``: every class uid occurring; ``free``: its exponent is ours to choose
    (an initializer, or an all-zero constant); ``terms``: layout per axis;
    ``uniform``: a constant whose elements are all equal (a scalar in disguise)."""

    UNIFORM_LIMIT = 1 << 20  # elements read to decide ``uniform``

    def __init__(self, key, terms, vars_, all_, free, value=None):
        self.key, self.terms, self.vars, self.all, self.free = key, terms, vars_, all_, free
        self.value = value
        self._uniform = None

    def uids_at(self, axis: int) -> list[int]:
        return list(G.occurrences(self.terms[axis]))

    @property
    def uniform(self) -> bool:
        if self._uniform is None:
            t = self.value.const_value if self.value is not None else None
            ok = t is not None and 0 < t.size <= self.UNIFORM_LIMIT
            if ok:
                flat = t.numpy().reshape(-1)
                ok = bool((flat == flat[0]).all())
            self._uniform = ok
        return self._uniform


class Solver:
    def __init__(self, comp, allow_rounding: bool):
        self.comp = comp
        self.an = comp.analysis
        self.rel = G.Relations()
        self.classes = set(comp.classes)
        self.allow_rounding = allow_rounding
        self.why_zero: dict[int, str] = {}  # uid -> first op that kept some axis of it permuted only
        self.why_limited: dict[int, str] = {}  # uid -> first op that allowed less than LINEAR
        graph = comp.model.graph
        self.consumers: dict[ir.Value, list[tuple[ir.Node, int]]] = {}
        for node in graph:
            for i, x in enumerate(node.inputs):
                if x is not None:
                    self.consumers.setdefault(x, []).append((node, i))
        self.graph_outputs = set(graph.outputs)
        self.tied = {n for t in getattr(comp, "ties", []) for n in t["tensors"]}
        self.fallback: set[int] = set()  # ids of norm nodes stated in their permutation-safe form
        self.ortho_norms: list[tuple[int, tuple]] = []  # (norm node id, its output's relation node)
        self.gain_folds: list = []  # rules/norm_groups.GainFold, one per gain moved into its consumers
        self.claimed: set[ir.Value] = set()  # initializers a gain fold rewrites

    def note(self, table: dict, uid: int, why: str) -> None:
        table.setdefault(uid, why)

    def _exact(self, value: ir.Value) -> bool:
        dt = value.dtype
        if dt in G.EXACT_DTYPES:
            return True
        return self.allow_rounding and dt in G.ROUNDING_DTYPES

    def operand(self, value: ir.Value, key=None, terms=None, free=None) -> Operand | None:
        if value is None:
            return None
        if terms is None:
            terms = self.an.known(value)
            if terms is None:
                return Operand(key or value, [], {}, set(), False, value)
        key = value if key is None else key
        counts: dict[int, int] = {}
        for t in terms:
            G.occurrences(t, counts)
        counts = {u: c for u, c in counts.items() if u in self.classes}
        exact = self._exact(value)
        vars_ = {}
        for uid, c in counts.items():
            node = (key, uid)
            self.rel.add(node)
            if c > 1 or not exact:
                self.rel.force_zero(node)
                self.note(self.why_zero, uid, f"'{value.name}': " + (
                    "the class occurs twice in it" if c > 1 else f"{value.dtype} would be re-rounded"))
            if c == 1:
                vars_[uid] = node
        if free is None:
            free = value.is_initializer()
        return Operand(key, terms, vars_, set(counts), free, value)

    def node_input(self, node: ir.Node, i: int) -> Operand | None:
        if i >= len(node.inputs) or node.inputs[i] is None:
            return None
        value = node.inputs[i]
        if value in self.an.uniform_shared:
            # one layout per use; never folded: only an all-zero constant may take any exponent
            zeros = not value.const_value.numpy().any()
            op = self.operand(value, key=("use", id(node), i), terms=self.an.use_terms(node, i), free=zeros)
            if not zeros:
                for n in op.vars.values():
                    self.rel.force_zero(n)
            return op
        return self.operand(value)

    def uniform_along(self, value: ir.Value | None, uid: int) -> bool:
        """``value`` is known constant along class ``uid``'s axis: an Expand (or an
        Identity of one) whose input does not carry the class (a size-1 axis broadcast)."""
        for _ in range(8):
            node = value.producer() if value is not None else None
            if node is None or node.domain not in ("", "ai.onnx"):
                return False
            if node.op_type == "Identity":
                value = node.inputs[0]
                continue
            if node.op_type != "Expand":
                return False
            terms = self.an.known(node.inputs[0])
            return terms is not None and not any(uid in G.occurrences(t) for t in terms)
        return False

    def zero_value(self, value: ir.Value | None) -> None:
        if value is None:
            return
        op = self.operand(value)
        for uid in op.all:
            self.rel.force_zero((op.key, uid))


class GroupView(NodeAccess):
    """What a group statement sees of one node."""

    def __init__(self, solver: Solver, node: ir.Node):
        self.solver, self.node = solver, node
        self.covered: set = set()
        self._passive: set[int] = set()
        self._ops: dict = {}

    def inp(self, i: int) -> Operand | None:
        if ("in", i) not in self._ops:
            self._ops[("in", i)] = self.solver.node_input(self.node, i)
        return self._ops[("in", i)]

    def out(self, k: int) -> Operand | None:
        if ("out", k) not in self._ops:
            v = self.node.outputs[k] if k < self.n_out else None
            self._ops[("out", k)] = self.solver.operand(v) if v is not None else None
        return self._ops[("out", k)]

    def passive(self, i: int) -> None:
        self._passive.add(i)

    @property
    def where(self) -> str:
        return f"{self.node.op_type} '{self.node.name}'"

    def relate(self, a, b, sign: int, group: G.Group) -> None:
        self.covered.update((a, b))
        self.solver.rel.relate(a, b, sign, group)
        if group != G.LINEAR:
            self.solver.note(self.solver.why_limited, a[1], f"{self.where}: {group.name} at most")

    def limit(self, node, group: G.Group) -> None:
        """The op commutes with ``node``'s class only under ``group`` (no relation)."""
        self.covered.add(node)
        self.solver.rel.limit(node, group)
        if group != G.LINEAR:
            self.solver.note(self.solver.why_limited, node[1], f"{self.where}: {group.name} at most")

    def is_zero(self, node) -> bool:
        """Already forced to exponent 0 (final: relations never undo a zero)."""
        return self.solver.rel.exponent(node) == 0

    def zero(self, *nodes) -> None:
        for n in nodes:
            self.covered.add(n)
            self.solver.rel.force_zero(n)
            self.solver.note(self.solver.why_zero, n[1], self.where)

    def finish(self) -> None:
        """Every class on an operand the statement did not cover is permuted only."""
        ops = [self.inp(i) for i in range(self.n_in) if i not in self._passive]
        ops += [self.out(k) for k in range(self.n_out)]
        for op in ops:
            if op is None:
                continue
            for uid in op.all:
                node = (op.key, uid)
                if node not in self.covered:
                    self.solver.rel.force_zero(node)
                    self.solver.note(self.solver.why_zero, uid, f"{self.where}: permutations only")


class TransformsPass:
    def __init__(self, comp, mode: str = "permutation", allow_rounding: bool = False):
        self.comp, self.mode, self.allow_rounding = comp, mode, allow_rounding

    def __call__(self, model: ir.Model) -> None:
        comp = self.comp
        comp.transforms, comp.exponents, comp.prefold = {}, {}, {}
        comp.pair_maps, comp.pair_info = {}, []  # compiler/pairs.py
        for c in comp.classes.values():
            c.group = G.PERMUTATION.name
        if self.mode == "permutation" or not comp.classes:
            return
        indexed = self._indexed_classes()
        fallback: set[int] = set()
        for _ in range(len(model.graph) + 1):
            s = self._solve(model, fallback)
            best = self._select(s, indexed)
            # a norm stated as orthogonal whose stream got no transform in the end: state it
            # in its permutation-safe form (its output may still take a diagonal) and solve again
            lost = {nid for nid, y in s.ortho_norms if s.rel.exponent(y) == 0} - fallback
            if not lost:
                break
            fallback |= lost
        self._assign(s, indexed, best)
        structured.assign(comp, model)  # LINEAR classes whose maps may differ per head
        pairs.solve(comp, model)  # rotation-scale per pair of Cat(f, f) axes (rotary q/k)

    def _solve(self, model: ir.Model, fallback: set[int]) -> Solver:
        s = Solver(self.comp, self.allow_rounding)
        s.fallback = set(fallback)
        top = set()
        for node in model.graph:
            top.add(id(node))
            view = GroupView(s, node)
            rule = group_rules.lookup(node)
            if rule is not None:
                rule(view)
            view.finish()
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if id(node) not in top:
                for v in list(node.inputs) + list(node.outputs):
                    s.zero_value(v)
        self._state(model, s)
        self._io_limits(model, s)
        return s

    def _state(self, model: ir.Model, s: Solver) -> None:
        by_name = {v.name: v for v in list(model.graph.inputs) + list(model.graph.outputs)}
        for pair in self.comp.state:
            a, b = s.operand(by_name[pair.input]), s.operand(by_name[pair.output])
            for uid in a.all | b.all:
                if uid in a.vars and uid in b.vars:
                    s.rel.relate(a.vars[uid], b.vars[uid], 1, G.LINEAR)
                else:
                    for op in (a, b):
                        if uid in op.all:
                            s.rel.force_zero((op.key, uid))

    def _io_limits(self, model: ir.Model, s: Solver) -> None:
        """encode/decode apply a dense map as an n x n matrix: not for long axes."""
        for v in list(model.graph.inputs) + list(model.graph.outputs):
            op = s.operand(v)
            for t in op.terms:
                if t.size is None or t.size > G.DENSE_IO_LIMIT:
                    for uid in G.occurrences(t):
                        if uid in op.all:
                            s.rel.limit((op.key, uid), G.DIAGONAL)

    def _indexed_classes(self) -> set[int]:
        an = self.comp.analysis
        out = set()
        for slot in an._slots.values():
            for term in (slot.root().term, an.values.secret_term(slot)):
                if term is not None:
                    out.update(v.uid for v in L.free_vars(term))
        return out

    def _select(self, s: Solver, indexed: set[int]) -> dict[int, G.Group]:
        """Per class, the group its transform is drawn from: the lattice is not a chain,
        so components of one class may allow incomparable groups (a diagonal through a
        ReLU here, an orthogonal stream there). Pick the group that covers the most
        weight bytes (ties: the larger group) and zero every component that does not
        allow it (a zero component is permuted only: always exact)."""
        comps: dict = {}  # root -> [uid, group, bytes]
        for node in s.rel.parent:
            uid = node[1]
            if uid in indexed or s.rel.exponent(node) == 0:
                continue
            root = s.rel.find(node)[0]
            entry = comps.setdefault(root, [uid, s.rel.group_of(node), 0])
            value = node[0]
            if isinstance(value, ir.Value) and value.is_initializer() and value.const_value is not None:
                entry[2] += value.const_value.nbytes
        by_class: dict[int, list] = {}
        for root, (uid, group, nbytes) in comps.items():
            by_class.setdefault(uid, []).append((root, group, nbytes))
        best: dict[int, G.Group] = {}
        for uid, members in by_class.items():
            candidates = {g for _, g, _ in members if g != G.PERMUTATION}
            if uid in indexed or not candidates:
                for root, _, _ in members:
                    s.rel.force_zero(root)
                continue
            pick = max(candidates, key=lambda g: (sum(b for _, h, b in members if G.leq(g, h)), g.rank, g.name))
            for root, group, _ in members:
                if not G.leq(pick, group):
                    s.rel.force_zero(root)
                    s.note(s.why_zero, uid, f"kept permuted: it allows {group.name}, the class {pick.name}")
            best[uid] = pick
        return best

    def _assign(self, s: Solver, indexed: set[int], best: dict[int, G.Group]) -> None:
        comp = self.comp
        for uid, c in comp.classes.items():
            if uid in indexed:
                c.why = "its values index a table (token ids)"
            elif uid not in best:
                c.why = s.why_zero.get(uid, "")
            elif best[uid] != G.LINEAR:
                c.why = s.why_limited.get(uid, "")
        for uid, group in best.items():
            c = comp.classes[uid]
            tr = G.draw(comp.key, c.label, c.size, group)
            if tr is None:
                continue
            c.group = group.name
            comp.transforms[uid] = tr
        comp.exponents = {node: s.rel.exponent(node) for node in s.rel.parent
                          if node[1] in comp.transforms and s.rel.exponent(node) != 0}
        # gains moved into their consumers, where the stream they sit on is transformed
        comp.prefold = {}
        rewritten = set()
        for fold in s.gain_folds:
            if fold.trigger in comp.exponents:
                fold.record(comp.prefold)
                rewritten.add(fold.gamma)
        # a weight that carries a continuous class at exponent 0 shows its permutation
        for node in s.rel.parent:
            value, uid = node
            if (uid in comp.transforms and isinstance(value, ir.Value) and value.is_initializer()
                    and value not in comp.analysis.uniform_shared and node not in comp.exponents
                    and value not in rewritten):
                comp.classes[uid].visible_in.append(value.name)
