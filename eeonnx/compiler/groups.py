r"""Groups: the largest exact transform each secret class admits, beyond permutations.

The layout algebra (layout.py) decides which axes share a secret *class*
and gives each class a permutation. Many classes admit more: this module
decides, per class, the largest *group* of exact transforms the graph
commutes with, and draws an element of it from the key.

Lattice (not a chain: ``meet`` is the largest common subgroup)::

                 DIAGONAL (permutation x positive diagonal)
               /                                            \
    PERMUTATION                                               LINEAR (permutation x invertible map)
               \                                            /
                 ORTHO_ONES (orthogonal Q, Q 1 = 1) <= ORTHOGONAL

Permutation matrices are orthogonal and fix the all-ones vector, so
PERMUTATION is below every group; a positive diagonal that is orthogonal is
the identity, so meet(DIAGONAL, ORTHO_ONES) = meet(DIAGONAL, ORTHOGONAL) =
PERMUTATION. For an orthogonal T, T^-T = T: exponents +1 and -1 are one map.

A class c with transform T (n x n, on plain indices; then its permutation)
appears on an axis of a tensor with an *exponent* e:
  e = +1: the axis is transformed by T (x -> x T, the axis as a row vector),
  e = -1: by T^-T (what a weight contracted against a +1 axis needs),
  e =  0: permuted only.
For a positive diagonal T = diag(d), that is scaling by d^e.

Each op states, per class on its operands, relations between exponents
(equal, opposite, zero) and the largest group under which those relations
make the op commute with the transform (``rules/groups.py``). An operand
the op's statement does not cover gets e = 0 (so an op without a statement
commutes with permutations only: the default). The solver is a union-find
with parity over (tensor, class) nodes; a zero
anywhere in a component makes the whole component 0; a parity contradiction
limits it to ORTHOGONAL (T^-T = T there, so both exponents are one map).
Every remaining
component has exactly one free integer (any assignment satisfies every
relation), fixed to 1 at its root. A class's group is the meet of the
groups of its non-zero components; a class with none stays a permutation.

Invariants:
- sound by construction: e = 0 everywhere is the permutation-only artifact,
  and every relation an op states is one under which it commutes for every
  element of the group named with it;
- classes whose values index a table (token ids) stay permutations;
- precision: a non-zero exponent needs float32/float64 tensors (a
  continuous transform would re-round fp16/bf16/int weights) unless
  ``allow_rounding``;
- a graph input/output axis longer than ``DENSE_IO_LIMIT`` never gets a
  dense map (encode/decode would carry an n x n matrix): at most DIAGONAL.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import layout as L


@dataclass(frozen=True)
class Group:
    """A group of exact transforms; ``below``: the groups it directly contains
    (the partial order is their transitive closure); ``rank`` orders groups
    consistently with it (a larger group has a larger rank)."""

    name: str
    rank: int
    below: tuple = ()

    def __repr__(self) -> str:
        return self.name

    def subgroups(self) -> frozenset:
        """Every group contained in this one, itself included."""
        out = {self}
        for g in self.below:
            out |= g.subgroups()
        return frozenset(out)


PERMUTATION = Group("permutation", 0)
DIAGONAL = Group("diagonal", 1, (PERMUTATION,))
ORTHO_ONES = Group("orthogonal-ones", 1, (PERMUTATION,))
ORTHOGONAL = Group("orthogonal", 2, (ORTHO_ONES,))
LINEAR = Group("linear", 3, (DIAGONAL, ORTHOGONAL))
GROUPS = (PERMUTATION, DIAGONAL, ORTHO_ONES, ORTHOGONAL, LINEAR)


def leq(a: Group, b: Group) -> bool:
    """a is a subgroup of b."""
    return a in b.subgroups()


def meet(*gs: Group) -> Group:
    """The largest group contained in all of ``gs`` (the common subgroups of two
    groups of this lattice have one largest element: the one of largest rank)."""
    common = frozenset.intersection(*(g.subgroups() for g in gs)) | {PERMUTATION}  # below everything
    return max(common, key=lambda g: (g.rank, g.name))


#: scale ranges (log-uniform): wide for diagonals, narrower inside a linear map
DIAGONAL_RANGE = (0.25, 4.0)
LINEAR_RANGE = (0.5, 2.0)
DENSE_IO_LIMIT = 1024
EXACT_DTYPES = (ir.DataType.FLOAT, ir.DataType.DOUBLE)
ROUNDING_DTYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


class Relations:
    """Union-find with parity: e(a) = sign * e(root); components may be forced to 0."""

    def __init__(self):
        self.parent: dict = {}
        self.sign: dict = {}
        self.zero: set = set()
        self.group: dict = {}

    def add(self, x) -> None:
        if x not in self.parent:
            self.parent[x], self.sign[x], self.group[x] = x, 1, LINEAR

    def find(self, x):
        path = []
        while self.parent[x] != x:
            path.append(x)
            x = self.parent[x]
        root, acc = x, 1
        for y in reversed(path):
            acc *= self.sign[y]
            self.sign[y], self.parent[y] = acc, root
        return root, (self.sign[path[0]] if path else 1)

    def relate(self, a, b, s: int, g: Group) -> None:
        """e(a) = s * e(b), valid under group g."""
        ra, sa = self.find(a)
        rb, sb = self.find(b)
        if ra == rb:
            # a parity contradiction leaves only maps with T^-T = T (orthogonal ones),
            # for which both exponents are one map
            self.group[ra] = meet(self.group[ra], g, *((ORTHOGONAL,) if sa != s * sb else ()))
            return
        self.parent[ra], self.sign[ra] = rb, sa * s * sb
        if ra in self.zero:
            self.zero.add(rb)
        self.group[rb] = meet(self.group[ra], self.group[rb], g)

    def limit(self, a, g: Group) -> None:
        r, _ = self.find(a)
        self.group[r] = meet(self.group[r], g)

    def force_zero(self, a) -> None:
        self.zero.add(self.find(a)[0])

    def exponent(self, a) -> int:
        r, s = self.find(a)
        return 0 if r in self.zero else s

    def group_of(self, a) -> Group:
        return self.group[self.find(a)[0]]


def occurrences(t: L.Term, out: dict[int, int] | None = None) -> dict[int, int]:
    """Root uid -> how many times the variable occurs in the term."""
    out = {} if out is None else out
    t = L.resolve(t)
    if isinstance(t, L.Var):
        out[t.uid] = out.get(t.uid, 0) + 1
    elif isinstance(t, L.Cat):
        for p in t.parts:
            occurrences(p, out)
    elif isinstance(t, L.Kron):
        for f in t.factors:
            occurrences(f, out)
    return out


@dataclass
class Transform:
    """The element of a class's group drawn from the key (on top of its permutation).

    DIAGONAL: T = diag(scale). LINEAR: T = diag(scale) @ ortho, so T^-T =
    diag(1/scale) @ ortho and the condition number is max/min of the scale.
    ORTHOGONAL / ORTHO_ONES: scale = ones, T = ortho = T^-T."""

    group: Group
    scale: np.ndarray
    ortho: np.ndarray | None = None

    def __post_init__(self):
        self._cache: dict = {}

    def factor(self, e: int, inverse: bool = False) -> np.ndarray:
        """The map for exponent e (T for +1, T^-T for -1), or its inverse: a
        vector (diagonal) or an n x n matrix, float64."""
        k = (e, inverse)
        if k not in self._cache:
            s = self.scale ** (-e if inverse else e)
            if self.ortho is None:
                self._cache[k] = s
            elif not inverse:
                self._cache[k] = s[:, None] * self.ortho
            else:
                self._cache[k] = self.ortho.T * s[None, :]
        return self._cache[k]


def fixing_ones(q: np.ndarray) -> np.ndarray:
    """The (n+1) x (n+1) orthogonal H diag(1, q) H with H the Householder reflection
    swapping e_0 and 1/sqrt(n+1): it fixes the all-ones vector (and, q Haar on
    O(n), is Haar on the stabiliser of 1 in O(n+1))."""
    n = q.shape[0] + 1
    v = -np.full(n, 1.0 / np.sqrt(n))
    v[0] += 1.0
    nv = float(v @ v)
    h = np.eye(n) - (2.0 / nv) * np.outer(v, v) if nv > 0 else np.eye(n)
    inner = np.eye(n)
    inner[1:, 1:] = q
    return h @ inner @ h


def group_named(name: str) -> Group:
    """The group of that display name (``SecretClass.group``, the manifest, client/rekey.json)."""
    for g in GROUPS:
        if g.name == name:
            return g
    raise KeyError(name)


def draw(key, label: str, n: int, group: Group) -> Transform | None:
    if group == DIAGONAL:
        return Transform(group, key.scales(label, n, *DIAGONAL_RANGE))
    if group == ORTHOGONAL:
        return Transform(group, np.ones(n), key.orthogonal(label, n))
    if group == ORTHO_ONES:
        q = key.orthogonal(label, n - 1) if n > 1 else np.zeros((0, 0))
        return Transform(group, np.ones(n), fixing_ones(q))
    if group == LINEAR:
        return Transform(group, key.scales(label, n, *LINEAR_RANGE), key.orthogonal(label, n))
    return None


def redraw(key, label: str, old: Transform) -> Transform:
    """A fresh element of ``old``'s group with ``old``'s structure, from ``key`` and
    ``label`` (``eeonnx rekey``). A Transform subclass with more structure than a
    size (blocks, heads) defines ``redraw(key, label)`` itself."""
    own = getattr(old, "redraw", None)
    if own is not None:
        return own(key, label)
    return draw(key, label, int(old.scale.size), old.group)


# ---------------------------------------------------------------------------
# applying transforms to arrays
# ---------------------------------------------------------------------------
def apply_axis(a: np.ndarray, axis: int, term: L.Term, factor) -> np.ndarray:
    """``a`` with ``axis`` (layout ``term``) multiplied by each variable's map:
    ``factor(var)`` gives None, a vector (diagonal) or a matrix (x -> x M);
    Cat parts and Kron factors get their own maps (block-diagonal / Kronecker)."""
    t = L.resolve(term)
    if isinstance(t, L.Public):
        return a
    if isinstance(t, L.Var):
        f = factor(t)
        if f is None or f.ndim > 2:  # ndim 3: per-head blocks, applied by structured.apply
            return a
        if f.ndim == 1:
            shape = [1] * a.ndim
            shape[axis] = -1
            return a * f.reshape(shape)
        return np.moveaxis(np.tensordot(a, f, axes=([axis], [0])), -1, axis)
    if isinstance(t, L.Cat):
        cuts = np.cumsum([p.size for p in t.parts])[:-1]
        pieces = np.split(a, cuts, axis=axis)
        return np.concatenate([apply_axis(x, axis, p, factor) for x, p in zip(pieces, t.parts)], axis=axis)
    sizes = [f.size for f in t.factors]
    b = a.reshape(a.shape[:axis] + tuple(sizes) + a.shape[axis + 1:])
    for k, f in enumerate(t.factors):
        b = apply_axis(b, axis + k, f, factor)
    return b.reshape(a.shape)


def has_dense(term: L.Term, factor) -> bool:
    return any(f is not None and f.ndim >= 2 for f in (factor(v) for v in L.free_vars(term)))


def value_factor(comp, key, inverse: bool = False):
    """factor(var) for the tensor ``key`` (an ir.Value): the class's map for the
    tensor's exponent, None where the exponent is 0 or the class has no transform."""

    def factor(v: L.Var):
        tr = comp.transforms.get(v.uid)
        if tr is None or v.pin is not None:
            return None
        e = comp.exponents.get((key, v.uid), 0)
        return None if e == 0 else tr.factor(e, inverse)

    return factor


def axis_map(comp, value, terms: list[L.Term], inverse: bool = False) -> list[np.ndarray | None]:
    """Per axis of a wire tensor: None, a scale vector or a full matrix (x -> x M),
    on plain indices (before the permutation; ``inverse``: undoing it after)."""
    factor = value_factor(comp, value, inverse)
    return [term_map(t, factor) for t in terms]


def term_map(t: L.Term, factor) -> np.ndarray | None:
    """The whole map of one axis (layout ``t``, per-variable maps ``factor``): None when
    no variable has one, else a scale vector, or a matrix M (x -> x M) when any is dense."""
    t = L.resolve(t)
    if t.size is None or not any(factor(v) is not None for v in L.free_vars(t)):
        return None
    if has_dense(t, factor):
        from eeonnx.compiler import structured  # per-head blocks on this axis

        return structured.dense(t, factor)
    return apply_axis(np.ones(t.size), 0, t, factor)
