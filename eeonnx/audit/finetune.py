"""Attack 2, fine-tune alignment: the server model plus a public base model.

Attacker's knowledge: ``server/model.onnx`` and a public base model the private
model was fine-tuned from (same architecture; weights = base + a private delta).
Exact matching fails once values changed, so per tensor:

1. pair each server tensor with a base tensor of the same shape: linear
   assignment (scipy) on the residual after a quick alignment of every
   candidate pair (groups of up to ``PAIR_BY_ALIGNMENT``), else on the distance
   between their sorted values (a permutation-invariant signature);
2. per axis, start from the assignment of permutation-invariant slice
   signatures (sorted values of each slice), then refine by alternating: with
   the other axes' orders fixed, match slices by their full vectors
   (correlation, linear assignment; nearest neighbour on axes over
   ``MAX_ASSIGN``), until nothing changes;
3. for a 2-D tensor whose best permutation still leaves a large residual, a
   Procrustes path: the orthogonal map of axis 0 that best sends the base onto
   the server tensor, for transforms beyond permutations (recorded as
   ``maps``; the scorecard scores permutation classes against the key).

Returns the known-weights format: ``{"tensors": {name: {"source", "axes",
"residual"}}, "unmatched", "seconds", "complete"}``; ``residual`` is
||server - aligned base|| / ||server||.
"""
from __future__ import annotations

import time

import numpy as np

from eeonnx.audit.view import FLOAT_TYPES

MAX_ASSIGN = 4096  # axes longer than this use nearest neighbour, not the Hungarian method
ROUNDS = 12
PAIR_BY_ALIGNMENT = 12  # shape groups up to this size are paired by aligned residuals


def _lsa(cost):
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(cost)[1]


def _slices(a, axis):
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _quantiles(a, k=64):
    s = np.sort(a.ravel().astype(np.float64))
    return s[np.linspace(0, len(s) - 1, k).astype(int)]


def _match(server_rows, base_rows):
    """idx: server row i <-> base row idx[i], maximizing total correlation."""
    sim = server_rows @ base_rows.T
    if sim.shape[0] > MAX_ASSIGN:
        return sim.argmax(1)
    return _lsa(-sim)


def align(s: np.ndarray, b: np.ndarray, rounds: int = ROUNDS, deadline=None) -> list[np.ndarray]:
    """Per-axis index arrays with ``s ~ b.take(idx0, 0).take(idx1, 1)...``."""
    s = s.astype(np.float64)
    b = b.astype(np.float64)
    idx = []
    for k in range(s.ndim):  # start: sorted-slice signatures
        if s.shape[k] == 1:
            idx.append(np.zeros(1, dtype=np.int64))
            continue
        ss, bs = np.sort(_slices(s, k), 1), np.sort(_slices(b, k), 1)
        if s.ndim == 1:
            ss, bs = s[:, None], b[:, None]
        cost = (ss * ss).sum(1)[:, None] - 2 * ss @ bs.T + (bs * bs).sum(1)[None]
        idx.append(cost.argmin(1) if len(ss) > MAX_ASSIGN else _lsa(cost))
    if s.ndim == 1:
        return idx
    for _ in range(rounds):
        changed = False
        for k in range(s.ndim):
            if s.shape[k] == 1 or (deadline is not None and time.monotonic() > deadline):
                continue
            bb = b
            for j in range(s.ndim):
                if j != k:
                    bb = bb.take(idx[j], axis=j)
            new = _match(_slices(s, k), _slices(bb, k))
            if not np.array_equal(new, idx[k]):
                idx[k], changed = new, True
        if not changed:
            break
    return idx


def _residual(s, b, idx) -> float:
    for j, p in enumerate(idx):
        b = b.take(p, axis=j)
    return float(np.linalg.norm(s - b) / max(np.linalg.norm(s), 1e-30))


def procrustes(s: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Orthogonal Q minimizing ||s - Q b|| (axis 0), and the relative residual."""
    u, _, vt = np.linalg.svd(s.astype(np.float64) @ b.astype(np.float64).T)
    q = u @ vt
    return q, float(np.linalg.norm(s - q @ b) / max(np.linalg.norm(s), 1e-30))


def attack(server_weights: dict, base_weights: dict, budget: float | None = None) -> dict:
    t0 = time.monotonic()
    deadline = None if budget is None else t0 + budget
    base = {n: a for n, a in base_weights.items() if a.dtype.type in FLOAT_TYPES and a.size >= 2}
    server = {n: a for n, a in server_weights.items() if a.dtype.type in FLOAT_TYPES and a.size >= 2}
    # 1. pair tensors of the same shape by their sorted values
    pairs, unmatched = {}, []
    shapes = {}
    for n, a in server.items():
        shapes.setdefault(a.shape, ([], []))[0].append(n)
    for n, a in base.items():
        if a.shape in shapes:
            shapes[a.shape][1].append(n)
    for shape, (sn, bn) in shapes.items():
        if not bn:
            unmatched += sn
            continue
        if 1 < len(bn) <= PAIR_BY_ALIGNMENT and len(sn) <= PAIR_BY_ALIGNMENT:
            # few candidates: align every pair and assign by the residual
            cost = np.array([[_residual(server[a].astype(np.float64), base[c].astype(np.float64),
                                        align(server[a], base[c], rounds=4)) for c in bn] for a in sn])
        else:
            qs = np.stack([_quantiles(server[n]) for n in sn])
            qb = np.stack([_quantiles(base[n]) for n in bn])
            cost = ((qs[:, None] - qb[None]) ** 2).sum(-1)
        if len(sn) <= len(bn):
            for i, j in enumerate(_lsa(cost)):
                pairs[sn[i]] = bn[j]
        else:
            for i in range(len(sn)):
                pairs[sn[i]] = bn[int(cost[i].argmin())]
    # 2./3. align each pair
    tensors, complete = {}, True
    for n, src in pairs.items():
        if deadline is not None and time.monotonic() > deadline:
            complete = False
            break
        s, b = server[n], base[src]
        idx = align(s, b, deadline=deadline)
        entry = {"source": src, "axes": idx, "residual": _residual(s.astype(np.float64), b.astype(np.float64), idx)}
        if s.ndim == 2 and entry["residual"] > 0.9 and s.shape[0] <= MAX_ASSIGN:
            q, r = procrustes(s, b)
            if r < entry["residual"]:
                entry["maps"] = {"axis": 0, "orthogonal": q, "residual": r}
        tensors[n] = entry
    return {"tensors": tensors, "unmatched": unmatched, "seconds": time.monotonic() - t0, "complete": complete}
