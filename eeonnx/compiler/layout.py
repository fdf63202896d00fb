"""Layout algebra: what permutation each tensor axis carries, solved by unification.

A *layout* is a term describing how one axis of one tensor is permuted on the
server (the encrypted tensor is ``plain.take(perm, axis)``):

- ``Public(n)``: the identity (n may be None for a symbolic axis).
- ``Var(n)``: an unknown secret permutation of n elements; a union-find node
  that unification may bind to another term.
- ``Cat(a, b, ...)``: blocks side by side, each permuted within itself.
- ``Kron(a, b, ...)``: a merged axis, outer factor first; index (i, j) of
  ``Kron(a, b)`` goes to ``(a(i), b(j))``.

Invariants the solver keeps:
- Unification only ever *restricts* a variable (binds it to a structure whose
  permutations are a subgroup of the symmetric group, or to Public). Any
  assignment of the remaining free variables, identity included, satisfies
  every equation, which is what makes the result sound.
- When two terms cannot be made equal structurally (sizes that do not refine,
  unknown sizes), both are pinned to Public: the axis stays in the clear, the
  output stays exact.
- Size-1 terms are always ``Public(1)``; ``Cat`` and ``Kron`` never hold a
  size-1 or nested part of their own kind after normalisation.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np


class Term:
    """Base class of layout terms."""

    size: int | None


@dataclass(eq=False)
class Public(Term):
    size: int | None

    def __repr__(self) -> str:
        return "P" if self.size is None else f"P[{self.size}]"


_ids = itertools.count()


@dataclass(frozen=True)
class PinInfo:
    """Why a variable is the identity: the node and reason, and whether that is
    inherent (spatial or kernel axes) rather than a loss worth reporting."""

    node: str
    op_type: str
    reason: str
    inherent: bool = False
    # met a positional axis: a loss only for a class that reaches a weight other
    # than the node's own operands (a per-position parameter, e.g. a position
    # table or a broadcast scale over width, is positional by nature)
    soft: bool = False
    operands: frozenset = frozenset()


@dataclass(eq=False)
class Var(Term):
    size: int
    ref: Term | None = None
    pin: PinInfo | None = None
    anchored: bool = False  # the class already reaches a weight axis
    uid: int = field(default_factory=lambda: next(_ids))

    def __repr__(self) -> str:
        return f"v{self.uid}[{self.size}]"


@dataclass(eq=False)
class Cat(Term):
    parts: tuple[Term, ...]

    @property
    def size(self) -> int | None:  # type: ignore[override]
        sizes = [p.size for p in self.parts]
        return None if None in sizes else sum(sizes)

    def __repr__(self) -> str:
        return "Cat(" + ", ".join(map(repr, self.parts)) + ")"


@dataclass(eq=False)
class Kron(Term):
    factors: tuple[Term, ...]

    @property
    def size(self) -> int | None:  # type: ignore[override]
        sizes = [f.size for f in self.factors]
        return None if None in sizes else math.prod(sizes)

    def __repr__(self) -> str:
        return "Kron(" + ", ".join(map(repr, self.factors)) + ")"


def fresh(size: int | None) -> Term:
    """A new term for an axis of the given size: secret-capable unless trivial."""
    if size is None or size <= 1:
        return Public(size)
    return Var(size)


def resolve(t: Term) -> Term:
    """Follow variable bindings (with path compression) and normalise structure."""
    if isinstance(t, Var):
        root = t
        while isinstance(root, Var) and root.ref is not None:
            root = root.ref
        while isinstance(t, Var) and t.ref is not None and t.ref is not root:
            t.ref, t = root, t.ref
        t = root
    if isinstance(t, Cat):
        parts = []
        for p in t.parts:
            p = resolve(p)
            if p.size == 0:
                continue
            parts.extend(p.parts if isinstance(p, Cat) else [p])
        if all(isinstance(p, Public) for p in parts):
            return Public(t.size)
        return parts[0] if len(parts) == 1 else Cat(tuple(parts))
    if isinstance(t, Kron):
        factors = []
        for f in t.factors:
            f = resolve(f)
            if f.size == 1:
                continue
            factors.extend(f.factors if isinstance(f, Kron) else [f])
        if all(isinstance(f, Public) for f in factors):
            return Public(t.size)
        return factors[0] if len(factors) == 1 else Kron(tuple(factors))
    return t


def cat(*parts: Term) -> Term:
    return resolve(Cat(tuple(parts)))


def kron(*factors: Term) -> Term:
    return resolve(Kron(tuple(factors)))


def free_vars(t: Term) -> list[Var]:
    """Free (unbound) variables in a term, outer to inner, left to right, once each."""
    out: list[Var] = []
    seen: set[int] = set()

    def walk(x: Term) -> None:
        x = resolve(x)
        if isinstance(x, Var):
            if x.uid not in seen:
                seen.add(x.uid)
                out.append(x)
        elif isinstance(x, Cat):
            for p in x.parts:
                walk(p)
        elif isinstance(x, Kron):
            for f in x.factors:
                walk(f)

    walk(t)
    return out


def anchor(t: Term) -> None:
    """Mark the classes in ``t`` as reaching a weight axis."""
    for v in free_vars(t):
        v.anchored = True


def secret_vars(t: Term) -> list[Var]:
    """Free variables that are not pinned."""
    return [v for v in free_vars(t) if v.pin is None]


def show(t: Term, names: dict[int, str] | None = None) -> str:
    """Human-readable form; ``names`` maps root uids to class names."""
    t = resolve(t)
    if isinstance(t, Public):
        return "P"
    if isinstance(t, Var):
        if t.pin is not None:
            return "P"
        return (names or {}).get(t.uid, f"v{t.uid}") + f"[{t.size}]"
    if isinstance(t, Cat):
        return "cat(" + ", ".join(show(p, names) for p in t.parts) + ")"
    return "kron(" + ", ".join(show(f, names) for f in t.factors) + ")"


class Unifier:
    """Solves layout equations.

    Pinning does not bind a variable to Public: it marks the class with a
    :class:`PinInfo` (kept when classes merge), so that after solving one can
    tell a real loss (a pinned class that touches a weight) from a harmless
    one (spatial axes of activations). ``context()`` names the node whose
    equations are being added.
    """

    def __init__(self, context=lambda: ("", "", frozenset())):
        self.context = context

    # -- pinning -------------------------------------------------------------
    def pin(self, t: Term, reason: str, report: bool = True, info: PinInfo | None = None) -> None:
        """Force every free variable inside ``t`` to be the identity.

        ``report=False`` marks an axis positional by nature; if it already
        reaches a weight other than the node's own operands, that is still a
        loss and is recorded as one (``soft``).
        """
        ctx = self.context()
        node, op = ctx[0], ctx[1]
        operands = ctx[2] if len(ctx) > 2 else frozenset()
        for v in free_vars(t):
            if v.pin is not None:
                continue
            if info is not None:
                v.pin = info
            elif report:
                v.pin = PinInfo(node, op, reason)
            elif v.anchored:
                v.pin = PinInfo(node, op, f"{op}: a weight axis is used positionally here", soft=True,
                                operands=operands)
            else:
                v.pin = PinInfo(node, op, reason, inherent=True)

    # -- unification ---------------------------------------------------------
    def unify(self, a: Term, b: Term, reason: str) -> None:
        a, b = resolve(a), resolve(b)
        if a is b:
            return
        if a.size is None or b.size is None or a.size != b.size:
            # symbolic or mismatched sizes: nothing secret can cross here
            self.pin(a, reason)
            self.pin(b, reason)
            return
        if isinstance(a, Public) or isinstance(b, Public):
            self.pin(b if isinstance(a, Public) else a, reason)
            return
        if isinstance(b, Var) and not isinstance(a, Var):
            a, b = b, a
        if isinstance(a, Var):
            if isinstance(b, Var):
                if a.pin is not None and b.pin is None:
                    a, b = b, a
                if a.pin is not None and b.pin is not None:
                    return  # both the identity already; keep each class's own report
                if b.pin is not None and a.pin is None:
                    # both must be the identity. A class that already reaches a
                    # weight is kept apart and reported as lost *here*, where it
                    # met a pinned axis; a fresh activation axis just joins.
                    if b.pin.inherent and not a.anchored:
                        a.ref = b
                        return
                    if b.pin.inherent:
                        ctx = self.context()
                        node, op, operands = ctx[0], ctx[1], (ctx[2] if len(ctx) > 2 else frozenset())
                        self.pin(a, "", info=PinInfo(node, op, f"{op}: axis meets a positional axis",
                                                     soft=True, operands=operands))
                    else:
                        self.pin(a, "", info=b.pin)
                    return
                b.anchored |= a.anchored
                a.ref = b
            else:
                if a.pin is not None:
                    self.pin(b, reason, info=a.pin)
                if a.anchored:
                    anchor(b)
                a.ref = b
            return
        if isinstance(a, Cat) and isinstance(b, Cat):
            self._unify_cat(a, b, reason)
        elif isinstance(a, Kron) and isinstance(b, Kron):
            self._unify_kron(a, b, reason)
        else:
            k, c = (a, b) if isinstance(a, Kron) else (b, a)
            self._unify_kron_cat(k, c, reason)

    def _unify_cat(self, a: Cat, b: Cat, reason: str) -> None:
        cuts = sorted(set(_cumsum([p.size for p in a.parts]) + _cumsum([p.size for p in b.parts])))
        pa = self._split_blocks(a, cuts, reason)
        pb = self._split_blocks(b, cuts, reason)
        if pa is None or pb is None:
            self.pin(a, reason)
            self.pin(b, reason)
            return
        for x, y in zip(pa, pb):
            self.unify(x, y, reason)

    def _split_blocks(self, c: Cat, cuts: list[int], reason: str) -> list[Term] | None:
        """Split the parts of ``c`` at the absolute offsets ``cuts`` (refining parts)."""
        out: list[Term] = []
        start = 0
        for p in c.parts:
            end = start + p.size
            inner = [x - start for x in cuts if start < x <= end]
            sizes = [y - x for x, y in zip([0] + inner[:-1], inner)]
            if len(sizes) == 1:
                out.append(p)
            else:
                pieces = self.split(p, sizes, reason)
                if pieces is None:
                    return None
                out.extend(pieces)
            start = end
        return out

    def split(self, t: Term, sizes: list[int], reason: str) -> list[Term] | None:
        """Refine ``t`` into ``Cat`` blocks of the given sizes; None if impossible."""
        t = resolve(t)
        if isinstance(t, Public):
            return [Public(s) for s in sizes]
        if isinstance(t, Var):
            pieces = [fresh(s) for s in sizes]
            if t.pin is not None:
                self.pin(Cat(tuple(pieces)), "", info=t.pin)
            if t.anchored:
                anchor(Cat(tuple(pieces)))
            t.ref = Cat(tuple(pieces))
            return pieces
        if isinstance(t, Cat):
            cuts = sorted(set(_cumsum(sizes)) | set(_cumsum([p.size for p in t.parts])))
            blocks = self._split_blocks(t, cuts, reason)
            return None if blocks is None else _group(blocks, sizes, lambda x, y: x + y, 0, cat)
        # Kron(outer, inner...): blocks that are whole multiples of the inner size
        outer, inner = t.factors[0], kron(*t.factors[1:])
        if any(s % inner.size for s in sizes):
            return None
        outer_pieces = self.split(outer, [s // inner.size for s in sizes], reason)
        if outer_pieces is None:
            return None
        return [kron(o, inner) for o in outer_pieces]

    def _unify_kron(self, a: Kron, b: Kron, reason: str) -> None:
        fa, fb = list(a.factors), list(b.factors)
        cuts = sorted(set(_cumprod([f.size for f in fa]) + _cumprod([f.size for f in fb])))
        if any(y % x for x, y in zip(cuts, cuts[1:])):
            self.pin(a, reason)
            self.pin(b, reason)
            return
        ra = self._refine_factors(fa, cuts, reason)
        rb = self._refine_factors(fb, cuts, reason)
        if ra is None or rb is None:
            self.pin(a, reason)
            self.pin(b, reason)
            return
        for x, y in zip(ra, rb):
            self.unify(x, y, reason)

    def _refine_factors(self, factors: list[Term], cuts: list[int], reason: str) -> list[Term] | None:
        out: list[Term] = []
        start = 1
        for f in factors:
            end = start * f.size
            inner = [c for c in cuts if start < c <= end]
            sizes = [y // x for x, y in zip([start] + inner[:-1], inner)]
            if len(sizes) == 1:
                out.append(f)
            else:
                pieces = self.factorize(f, sizes)
                if pieces is None:
                    return None
                out.extend(pieces)
            start = end
        return out

    def factorize(self, t: Term, sizes: list[int]) -> list[Term] | None:
        """Refine ``t`` into ``Kron`` factors of the given sizes; None if impossible."""
        t = resolve(t)
        if isinstance(t, Public):
            return [Public(s) for s in sizes]
        if isinstance(t, Var):
            pieces = [fresh(s) for s in sizes]
            if t.pin is not None:
                self.pin(Kron(tuple(pieces)), "", info=t.pin)
            if t.anchored:
                anchor(Kron(tuple(pieces)))
            t.ref = Kron(tuple(pieces))
            return [resolve(p) for p in pieces]
        if isinstance(t, Kron):
            cuts = sorted(set(_cumprod(sizes)) | set(_cumprod([f.size for f in t.factors])))
            if any(y % x for x, y in zip(cuts, cuts[1:])):
                return None
            refined = self._refine_factors(list(t.factors), cuts, "factorize")
            return None if refined is None else _group(refined, sizes, lambda x, y: x * y, 1, kron)
        return None

    def _unify_kron_cat(self, k: Kron, c: Cat, reason: str) -> None:
        outer, inner = k.factors[0], kron(*k.factors[1:])
        sizes = [p.size for p in c.parts]
        if all(s % inner.size == 0 for s in sizes):
            pieces = self.split(outer, [s // inner.size for s in sizes], reason)
            if pieces is not None:
                for o, p in zip(pieces, c.parts):
                    self.unify(kron(o, inner), p, reason)
                return
        self.pin(k, reason)
        self.pin(c, reason)


def _group(pieces, sizes, combine, unit, build):
    """Regroup consecutive ``pieces`` into terms of the given sizes."""
    out, i = [], 0
    for s in sizes:
        group, total = [], unit
        while total != s:
            group.append(pieces[i])
            total = combine(total, pieces[i].size)
            i += 1
        out.append(build(*group))
    return out


def _cumsum(xs: list[int]) -> list[int]:
    return list(itertools.accumulate(xs))


def _cumprod(xs: list[int]) -> list[int]:
    return list(itertools.accumulate(xs, lambda a, b: a * b))


def materialize(t: Term, perms: dict[int, np.ndarray]) -> np.ndarray:
    """Index array ``p`` of the axis: encrypted = plain.take(p). Unknown roots -> identity."""
    t = resolve(t)
    if isinstance(t, Public):
        return np.arange(t.size, dtype=np.int64)
    if isinstance(t, Var):
        p = None if t.pin is not None else perms.get(t.uid)
        return np.arange(t.size, dtype=np.int64) if p is None else p
    if isinstance(t, Cat):
        out, off = [], 0
        for part in t.parts:
            out.append(materialize(part, perms) + off)
            off += part.size
        return np.concatenate(out)
    idx = np.zeros(1, dtype=np.int64)
    for f in t.factors:
        idx = (idx[:, None] * f.size + materialize(f, perms)[None, :]).reshape(-1)
    return idx


def log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)
