"""tie: identical weights (up to transpose) share their secret classes.

An exporter may store a tied weight twice (TorchScript GPT-2 keeps the LM
head as a copy of the token embedding, transposed or not). Permuted by
independent classes, the two copies still hold the same rows: the server
matches them and links one class to the other (input ids to output logits)
without any key. So every pair of initializers with equal values, or equal
values after a 2-D transpose, has its axis layouts unified, axis by axis:
the copies get the same permutations, and the classes count once.

Unification only restricts, so the model stays exact; if one copy's axis is
pinned, the other's is pinned with it (a clear copy would give it away), and
the loss is reported with the reason. Tensors whose elements are all equal
are skipped (any permutation leaves them unchanged), as are tensors with no
secret axis on either side, and 1-D tensors: exporters alias equal vectors
(zero biases, unit gains) across roles, and unifying every role that a
vector happens to share would merge unrelated classes (a limit: two equal
learned vectors under independent classes stay independent). Candidates are found by dtype, shape and an
order-independent fingerprint (sum and sum of squares); equality is then
checked exactly, so large weights are read once.

Invariant: leaves the model unchanged; records ``comp.ties``: one entry per
pair, {"tensors": [a, b], "transposed": bool}.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import layout as L


def _fingerprint(a: np.ndarray) -> tuple[float, float]:
    f = a.reshape(-1).astype(np.float64) if a.dtype.kind in "fiub" else None
    if f is None:
        return (float("nan"), float("nan"))
    return float(f.sum()), float(np.dot(f, f))


def _close(x: tuple[float, float], y: tuple[float, float]) -> bool:
    return all(abs(p - q) <= 1e-9 * max(abs(p), abs(q), 1e-30) for p, q in zip(x, y))


class TiePass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        comp, an = self.comp, self.comp.analysis
        groups: dict[tuple, list] = {}
        for name, value in model.graph.initializers.items():
            t = value.const_value
            if t is None or value in an.uniform_shared or t.size < 2 or len(t.shape) < 2:
                continue
            terms = an.known(value)
            if terms is None or len(terms) != len(t.shape):
                continue
            shape = tuple(int(d) for d in t.shape)
            key = (str(t.dtype), tuple(sorted(shape)) if len(shape) == 2 else shape)
            groups.setdefault(key, []).append((name, value, shape, terms))
        ties = []
        for members in groups.values():
            if len(members) < 2:
                continue
            arrays, prints = {}, {}
            for name, value, _shape, _terms in members:
                a = value.const_value.numpy()
                flat = a.reshape(-1)
                if (flat == flat[0]).all():
                    continue
                arrays[name], prints[name] = a, _fingerprint(a)
            live = [m for m in members if m[0] in arrays]
            for i, (na, va, sa, ta) in enumerate(live):
                for nb, vb, sb, tb in live[i + 1:]:
                    if not _close(prints[na], prints[nb]):
                        continue
                    a, b = arrays[na], arrays[nb]
                    pairs = None
                    if sa == sb and np.array_equal(a, b):
                        pairs, transposed = list(zip(ta, tb)), False
                    elif len(sa) == 2 and sa == sb[::-1] and np.array_equal(a, b.T):
                        pairs, transposed = [(ta[0], tb[1]), (ta[1], tb[0])], True
                    if pairs is None:
                        continue
                    if not any(L.free_vars(x) or L.free_vars(y) for x, y in pairs):
                        continue
                    old = an.unifier.context
                    an.unifier.context = lambda na=na, nb=nb: (f"{na} = {nb}", "Tie", frozenset({na, nb}))
                    try:
                        for x, y in pairs:
                            an.unifier.unify(x, y, f"'{na}' and '{nb}' hold the same values "
                                                   f"(tied weights share their classes)")
                    finally:
                        an.unifier.context = old
                    ties.append({"tensors": [na, nb], "transposed": transposed})
        comp.ties = ties
