"""Value layouts: integer tensors whose *values* index a permuted axis.

Token ids index the rows of an embedding table; if the table's row axis is
permuted by p on the server (table_enc = table.take(p)), the ids must be
mapped by the inverse (ids_enc = argsort(p)[ids]) so that
``table_enc[ids_enc] == table[ids]``. Each integer tensor gets a *slot* in a
union-find; a slot is bound to the layout term of the axis its values index,
merged with the slots of tensors its values flow into unchanged (Reshape,
Unsqueeze, Concat, ...), or pinned when an op reads the values as numbers
(arithmetic, comparisons, casts to float, constants). Pinning a bound slot
pins the axis it indexes: positions read as numbers must stay in the clear.
"""
from __future__ import annotations

from eeonnx.compiler import layout as L


class Slot:
    __slots__ = ("parent", "term", "pinned")

    def __init__(self):
        self.parent: Slot | None = None
        self.term: L.Term | None = None
        self.pinned: str | None = None

    def root(self) -> "Slot":
        s = self
        while s.parent is not None:
            s = s.parent
        return s


class ValueSolver:
    def __init__(self, unifier: L.Unifier):
        self.unifier = unifier

    def bind(self, slot: Slot, term: L.Term, reason: str) -> None:
        r = slot.root()
        if r.pinned is not None:
            self.unifier.pin(term, r.pinned)
        elif r.term is None:
            r.term = term
        else:
            self.unifier.unify(r.term, term, reason)

    def merge(self, a: Slot, b: Slot, reason: str) -> None:
        ra, rb = a.root(), b.root()
        if ra is rb:
            return
        rb.parent = ra
        if rb.pinned is not None and ra.pinned is None:
            self.pin(ra, rb.pinned)
        elif ra.pinned is not None and rb.term is not None:
            self.unifier.pin(rb.term, ra.pinned)
        elif rb.term is not None:
            if ra.term is None:
                ra.term = rb.term
            else:
                self.unifier.unify(ra.term, rb.term, reason)

    def pin(self, slot: Slot, reason: str) -> None:
        r = slot.root()
        if r.pinned is None:
            r.pinned = reason
            if r.term is not None:
                self.unifier.pin(r.term, reason)

    @staticmethod
    def secret_term(slot: Slot) -> L.Term | None:
        """The axis term the values index, when they index one and are not pinned."""
        r = slot.root()
        return r.term if r.pinned is None else None
