"""Attack 3, linear fit: least squares / orthogonal Procrustes against known weights.

Attacker's knowledge: ``server/model.onnx`` and a reference model: the public
original (``--original``) or the public base a private model was fine-tuned
from (``--base``). No client file, no key.

A continuous secret transform changes every value, so value matching fails,
but each server weight is still a linear image of its reference along each
axis: ``S = (M_0, M_1, ...) . R`` (axis k of S is ``M_k @`` axis k of R, the
other axes flattened). Per server tensor and axis k, with every other axis
either taken as it is (public, or barely transformed) or mapped by a map the
attack already recovered on another tensor (the "pool", tried at both
exponents, M and M^-T, since a class shows as T on one side of a product and
T^-T on the other):

- orthogonal Procrustes with a scale (``M = c Q``, the polar factor of
  ``S_k R_k^T``): the fit for the orthogonal / scaled-orthogonal streams;
- least squares (``M = S_k R_k^+``), kept when it fits clearly better than
  Procrustes and the other axes hold at least ``n + max(4, n // 4)`` values per row (so a
  good fit is not a matter of free parameters): diagonal scales, general
  linear maps, permutations (a permutation is a linear map too).

An axis counts as found (for the attacker, from its own numbers only) when
the relative residual ``||S_k - M R_k|| / ||S_k||`` is below ``ACCEPT`` and
clearly below what the same fit gives for a random reference (Procrustes:
about 1; least squares: ``sqrt(1 - n / rows)``). Found maps go to the pool,
and rounds repeat until nothing new is found or the budget runs out: this
is how a map recovered on one tensor (a positional table, whose other axis
is public) decrypts the same class on every tensor that carries it, without
reading the graph (the pool is matched by axis length, not by linkage).

Pairing: each server tensor is tried against every reference tensor of the
same shape (up to ``PAIR_LIMIT`` of them, else the first ``PAIR_LIMIT``
with the nearest Frobenius norm), and the reference with the lowest
residual wins. Axes longer than ``MAX_N`` and tensors with one axis are
skipped (a vector does not determine an n x n map). numpy only.

Returns ``{"tensors": {server name: {"source", "maps": {axis: M}, "residual":
{axis: r}, "method": {axis: "procrustes" | "lstsq"}}}, "rounds", "seconds",
"complete"}``; ``M`` maps reference slices to server slices along the axis.
"""
from __future__ import annotations

import time

import numpy as np

from eeonnx.audit.view import FLOAT_TYPES

MAX_N = 2048          # longest axis fitted (an n x n map)
PAIR_LIMIT = 16       # reference candidates per server tensor
ACCEPT = 0.35         # relative residual below which the attacker takes a fit
ROUNDS = 6


def _slices(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _apply(a: np.ndarray, axis: int, m: np.ndarray) -> np.ndarray:
    """``a`` with axis ``axis`` mapped by ``m`` (slices along the axis: m @ slices)."""
    return np.moveaxis(np.tensordot(m, np.moveaxis(a, axis, 0), axes=(1, 0)), 0, axis)


def _rel(s, m, r) -> float:
    return float(np.linalg.norm(s - m @ r) / max(np.linalg.norm(s), 1e-30))


def fit_axis(s0: np.ndarray, r0: np.ndarray):
    """Best map M with s0 ~ M @ r0 (n x rows each): (M, residual, method), or None
    when neither fit is clearly better than a random reference would give."""
    n, rows = s0.shape
    if rows < n or not np.isfinite(s0).all() or not np.isfinite(r0).all():
        return None
    u, sv, vt = np.linalg.svd(s0 @ r0.T)
    q = u @ vt
    c = float(sv.sum() / max((r0 * r0).sum(), 1e-30))  # the scale of c Q
    best = (c * q, _rel(s0, c * q, r0), "procrustes")
    if rows >= n + max(4, n // 4):
        m = np.linalg.lstsq(r0.T, s0.T, rcond=None)[0].T
        r = _rel(s0, m, r0)
        null = np.sqrt(1.0 - n / rows)
        if r < 0.5 * null and r < 0.5 * best[1]:
            best = (m, r, "lstsq")
    return best if best[1] < ACCEPT else None


def _candidates(n: int, pool: list[np.ndarray]):
    """Maps of size n the attacker may try on an axis: none, each pool map, its inverse transpose."""
    yield None
    for m in pool:
        if m.shape[0] == n:
            yield m
            try:
                yield np.linalg.inv(m).T
            except np.linalg.LinAlgError:
                pass


def _pool_add(pool: list[np.ndarray], m: np.ndarray) -> None:
    for p in pool:
        if p.shape == m.shape and np.linalg.norm(p - m) <= 0.05 * np.linalg.norm(p):
            return
    pool.append(m)


def _pairs(server: dict, reference: dict) -> dict[str, list[str]]:
    by_shape: dict[tuple, list[str]] = {}
    for n, a in reference.items():
        by_shape.setdefault(a.shape, []).append(n)
    out = {}
    for n, a in server.items():
        cands = by_shape.get(a.shape, [])
        if len(cands) > PAIR_LIMIT:
            norm = np.linalg.norm(a)
            cands = sorted(cands, key=lambda c: abs(np.linalg.norm(reference[c]) - norm))[:PAIR_LIMIT]
        if cands:
            out[n] = cands
    return out


def attack(server_weights: dict, reference_weights: dict, budget: float | None = None) -> dict:
    t0 = time.monotonic()
    deadline = None if budget is None else t0 + budget
    keep = lambda a: a.dtype.type in FLOAT_TYPES and a.ndim >= 2 and a.size >= 4  # noqa: E731
    server = {n: a.astype(np.float64) for n, a in server_weights.items() if keep(a)}
    reference = {n: a.astype(np.float64) for n, a in reference_weights.items() if keep(a)}
    pairs = _pairs(server, reference)
    found: dict[str, dict] = {}
    pool: list[np.ndarray] = []
    complete, rounds = True, 0
    for rounds in range(1, ROUNDS + 1):
        new = False
        for name, cands in pairs.items():
            s = server[name]
            entry = found.get(name)
            for k in range(s.ndim):
                if entry is not None and k in entry["maps"]:
                    continue
                if s.shape[k] < 2 or s.shape[k] > MAX_N:
                    continue
                if deadline is not None and time.monotonic() > deadline:
                    complete = False
                    break
                s0 = _slices(s, k)
                best = None
                sources = [entry["source"]] if entry is not None else cands
                for src in sources:
                    r = reference[src]
                    if entry is not None:  # the tensor's axes found so far map the reference
                        for j, m in entry["maps"].items():
                            r = _apply(r, j, m)
                    others = [j for j in range(s.ndim) if j != k and (entry is None or j not in entry["maps"])]
                    tries = [(None, None)] + [(j, m) for j in others if s.shape[j] <= MAX_N
                                              for m in _candidates(s.shape[j], pool) if m is not None]
                    for j, m in tries:
                        rr = r if m is None else _apply(r, j, m)
                        fit = fit_axis(s0, _slices(rr, k))
                        if fit is not None and (best is None or fit[1] < best[1][1]):
                            best = (src, fit, j, m)
                    if deadline is not None and time.monotonic() > deadline:
                        break
                if best is None:
                    continue
                src, (m, res, method), j, mj = best
                if entry is None:
                    entry = found[name] = {"source": src, "maps": {}, "residual": {}, "method": {}}
                entry["maps"][k], entry["residual"][k], entry["method"][k] = m, res, method
                _pool_add(pool, m)
                if mj is not None:  # the pool map that made the fit is this tensor's axis j
                    entry["maps"][j], entry["residual"][j], entry["method"][j] = mj, res, "pool"
                new = True
            if not complete:
                break
        if not new or not complete:
            break
    return {"tensors": found, "rounds": rounds, "seconds": time.monotonic() - t0, "complete": complete}
