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

When the rows are too few for one dense least-squares fit and Procrustes does
not fit, a block fit: per-head maps are block permutations with dense blocks,
each server block is fitted to each reference block by least squares and
blocks are assigned by residual (block sizes tried: the divisors of n).

When neither fits for a 2-D weight (its other axis is an unknown permutation,
e.g. a head order), a Gram-matrix fit: ``S S^T = M R R^T M^T`` does not see a
permutation (or any orthogonal map) of the other axis, so a scaled
orthogonal M follows from the eigenvectors (signs from third moments), and is
kept only when the other axis then fits through it (a dense fit, or a
permutation by linear assignment when that axis is too long for a dense map;
residual below ``ACCEPT``).

When a round finds nothing new, weights no fit has touched get a
scaled-permutation fit on their first two axes (``diag(d) P`` on both, the
diagonal groups of ReLU hidden units and CNN channels): centred log|.| is the
same tensor up to the permutations, the scales follow from the log ratios,
the one scalar that can move between the two axes is fixed by a vector (a
bias, a norm's scale) that carries one of the classes; the maps go to the
pool and the rounds go on.

Pairing: each server tensor is tried against every reference tensor of the
same shape (up to ``PAIR_LIMIT`` of them, else the first ``PAIR_LIMIT``
with the nearest Frobenius norm), and the reference with the lowest
residual wins. Axes longer than ``MAX_N`` and tensors with one axis are
skipped (a vector does not determine an n x n map). numpy only.

Returns ``{"tensors": {server name: {"source", "maps": {axis: M}, "residual":
{axis: r}, "method": {axis: "procrustes" | "lstsq" | "pool" | "gram" | "gram-other"}}}, "rounds", "seconds",
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
EARLY = 0.05          # a fit this close ends the search over candidates for the axis


def _slices(a: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _apply(a: np.ndarray, axis: int, m: np.ndarray) -> np.ndarray:
    """``a`` with axis ``axis`` mapped by ``m`` (slices along the axis: m @ slices)."""
    return np.moveaxis(np.tensordot(m, np.moveaxis(a, axis, 0), axes=(1, 0)), 0, axis)


def _rel(s, m, r) -> float:
    return float(np.linalg.norm(s - m @ r) / max(np.linalg.norm(s), 1e-30))


def fit_axis(s0: np.ndarray, r0: np.ndarray):
    """Best map M with s0 ~ M @ r0 (n x rows each): (M, residual, method), or None
    when no fit is clearly better than a random reference would give. Of the fits
    that apply (Procrustes, then the block fit, then dense least squares: fewer
    parameters first), the first whose residual is within 1.5x of the best wins."""
    n, rows = s0.shape
    if not np.isfinite(s0).all() or not np.isfinite(r0).all():
        return None
    fits = []
    if rows >= n:
        u, sv, vt = np.linalg.svd(s0 @ r0.T)
        q = u @ vt
        c = float(sv.sum() / max((r0 * r0).sum(), 1e-30))  # the scale of c Q
        fits.append((c * q, _rel(s0, c * q, r0), "procrustes"))
    if not fits or fits[0][1] > 1e-6:
        blocks = fit_blocks(s0, r0)
        if blocks is not None:
            fits.append(blocks)
    if rows >= n + max(4, n // 4):
        m = np.linalg.lstsq(r0.T, s0.T, rcond=None)[0].T
        r = _rel(s0, m, r0)
        if r < 0.5 * np.sqrt(1.0 - n / rows):  # clearly below a random reference's residual
            fits.append((m, r, "lstsq"))
    fits = [f for f in fits if f[1] < ACCEPT]
    if not fits:
        return None
    floor = min(f[1] for f in fits)
    return next(f for f in fits if f[1] <= 1.5 * floor + 1e-9)


def fit_blocks(s0: np.ndarray, r0: np.ndarray):
    """A block-permutation map with dense blocks (per-head linear maps: head h of the
    server is A_h times head pi(h) of the reference) for an axis too long for one
    dense least-squares fit: for each block size b >= 2 dividing n (2 <= n / b <= 64, rows >=
    b + max(2, b // 4)), every server block is fitted by least squares to every
    reference block, blocks are assigned by residual, and the smallest block size
    whose residual is within 1.5x of the best wins. (M, residual, "blocks") or None."""
    from scipy.optimize import linear_sum_assignment

    n, rows = s0.shape
    best = []
    for b in range(2, n // 2 + 1):
        if n % b or rows < b + max(2, b // 4) or (n // b) > 64:
            continue
        h = n // b
        sb, rb = s0.reshape(h, b, rows), r0.reshape(h, b, rows)
        basis = np.linalg.qr(np.swapaxes(rb, 1, 2))[0]              # h x rows x b: each block's row space
        coef = np.matmul(sb[:, None], basis[None])                  # h x h x b x b
        cost = (sb * sb).sum((1, 2))[:, None] - (coef * coef).sum((2, 3))  # least-squares residual^2
        pi = linear_sum_assignment(cost)[1]
        fits = np.matmul(sb, np.linalg.pinv(rb[pi]))
        m = np.zeros((n, n))
        for i, j in enumerate(pi):
            m[i * b:(i + 1) * b, j * b:(j + 1) * b] = fits[i]
        best.append((b, m, _rel(s0, m, r0)))
        if best[-1][2] < EARLY:
            break  # the smallest block size that fits: larger ones only add parameters
    if not best:
        return None
    floor = min(r for _, _, r in best)
    b, m, r = next(x for x in best if x[2] <= 1.5 * floor + 1e-9)
    return (m, r, "blocks") if r < ACCEPT else None


def fit_gram(s0: np.ndarray, r0: np.ndarray):
    """A scaled orthogonal M with s0 ~ M @ r0 @ X for an unknown *permutation* X of the
    columns: the Gram matrices ``s0 s0^T = M (r0 r0^T) M^T`` do not see X, so M = c U_s D
    U_r^T from their eigenvectors (eigenvalues sorted, c^2 from the traces), the signs D
    from the columns' third moments in the eigenbases (a permutation of the columns
    keeps them). Returns (M, spectral mismatch) or None; the caller checks M by fitting
    the other axis through it."""
    n, rows = s0.shape
    if rows < n or not np.isfinite(s0).all():
        return None
    gs, gr = s0 @ s0.T, r0 @ r0.T
    c2 = float(np.trace(gs) / max(np.trace(gr), 1e-30))
    ls, us = np.linalg.eigh(gs)
    lr, ur = np.linalg.eigh(gr)
    mismatch = float(np.linalg.norm(ls - c2 * lr) / max(np.linalg.norm(ls), 1e-30))
    if mismatch > ACCEPT:
        return None
    d = np.sign(((us.T @ s0) ** 3).sum(1) * ((ur.T @ r0) ** 3).sum(1))
    d[d == 0] = 1.0
    return np.sqrt(c2) * (us * d) @ ur.T, mismatch


def fit_permutation(s0: np.ndarray, r0: np.ndarray):
    """The permutation matrix P best sending r0's rows onto s0's (correlation, linear
    assignment): for an axis with more entries than the other axes hold values, where
    no dense map is determined. (P, residual) or None above ``ACCEPT``."""
    from scipy.optimize import linear_sum_assignment

    n = s0.shape[0]
    if n > MAX_N:
        return None
    idx = linear_sum_assignment(-(s0 @ r0.T))[1]
    m = np.zeros((n, n))
    m[np.arange(n), idx] = 1.0
    res = float(np.linalg.norm(s0 - r0[idx]) / max(np.linalg.norm(s0), 1e-30))
    return (m, res, "permutation") if res < ACCEPT else None


def fit_scaled_permutations(s: np.ndarray, r: np.ndarray, axes=(0, 1)):
    """Per axis in ``axes``, a scaled permutation M_k = diag(d_k) P_k with s ~ r mapped
    by every M_k (the other axes as they are): on log|.|, the scales are additive
    offsets per slice, so centring log|s| and log|r| along both axes leaves the same
    tensor up to the permutations, which :func:`finetune.align` finds; the scales are
    then the mean log ratio per slice (split between the two axes up to one scalar,
    which :func:`_calibrate` fixes from a vector), the signs the majority of sign
    agreements. Returns ({axis: M}, residual) or None above ``ACCEPT``."""
    from eeonnx.audit.finetune import align

    a, b = axes
    if s.shape[a] > MAX_N or s.shape[b] > MAX_N or min(s.shape[a], s.shape[b]) < 2:
        return None
    tiny = 1e-12 * max(np.abs(s).max(), np.abs(r).max(), 1e-30)
    ls, lr = np.log(np.abs(s) + tiny), np.log(np.abs(r) + tiny)
    rest = lambda k: tuple(i for i in range(s.ndim) if i != k)  # noqa: E731

    def centred(x):
        return x - x.mean(axis=rest(a), keepdims=True) - x.mean(axis=rest(b), keepdims=True) + x.mean()

    idx = align(centred(ls), centred(lr), rounds=6)
    if any(not np.array_equal(idx[k], np.arange(s.shape[k])) for k in rest(a) if k != b):
        return None  # a public axis came back permuted: not this structure
    rp = r
    for k in (a, b):
        rp = rp.take(idx[k], axis=k)
        lr = lr.take(idx[k], axis=k)
    delta = ls - lr
    mean = delta.mean()
    u = delta.mean(axis=rest(a)) - mean / 2
    v = delta.mean(axis=rest(b)) - mean / 2
    agree = np.sign(s) * np.sign(rp)
    tau = np.sign(np.moveaxis(agree, b, 0).reshape(s.shape[b], -1).sum(1) + 0.5)
    sigma = np.sign(np.tensordot(np.moveaxis(agree, (a, b), (0, 1)).reshape(s.shape[a], s.shape[b], -1).sum(-1),
                                 tau, axes=(1, 0)) + 0.5)
    maps = {}
    for k, scale in ((a, sigma * np.exp(u)), (b, tau * np.exp(v))):
        m = np.zeros((s.shape[k], s.shape[k]))
        m[np.arange(s.shape[k]), idx[k]] = scale
        maps[k] = m
    fit = _apply(_apply(r, a, maps[a]), b, maps[b])
    res = float(np.linalg.norm(s - fit) / max(np.linalg.norm(s), 1e-30))
    return (maps, res) if res < ACCEPT else None


def _calibrate(maps: dict, vectors: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """Fix the scalar a scaled-permutation pair leaves open (``c M_a``, ``M_b / c``):
    find a (server, reference) vector pair with ``v = lam * d^e * w[p]`` (e = +-1: a
    bias or a norm's scale carrying the class) on either axis; True when fixed."""
    for k, m in maps.items():
        n = m.shape[0]
        p, d = np.abs(m).argmax(1), m[np.arange(n), np.abs(m).argmax(1)]
        for v, w in vectors:
            if v.shape[0] != n:
                continue
            for e in (1, -1):
                pred = d ** e * w[p]
                ok = np.abs(pred) > 1e-6 * max(np.abs(pred).max(), 1e-30)
                if ok.sum() < max(2, n // 2):
                    continue
                ratio = v[ok] / pred[ok]
                lam = float(np.median(ratio))
                if lam > 0 and np.std(ratio) < 0.05 * abs(lam):
                    f = lam ** (1.0 / e)
                    for j in maps:
                        maps[j] = maps[j] * (f if j == k else 1.0 / f)
                    return True
    return False


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


def _scaled_pass(server, reference, pairs, found, pool, vectors, deadline) -> bool:
    """Scaled permutations on both secret axes of each weight no fit has touched."""
    new = False
    for name, cands in pairs.items():
        if name in found or (deadline is not None and time.monotonic() > deadline):
            continue
        s = server[name]
        axes = tuple(sorted(k for k in range(s.ndim) if s.shape[k] > 1)[:2])
        if len(axes) < 2:
            continue
        best = None
        for src in cands:
            fit = fit_scaled_permutations(s, reference[src], axes)
            if fit is not None and (best is None or fit[1] < best[1][1]):
                best = (src, fit)
        if best is None:
            continue
        src, (maps, res) = best
        _calibrate(maps, vectors)
        found[name] = {"source": src, "maps": maps, "residual": {k: res for k in maps},
                       "method": {k: "scaled-permutation" for k in maps}}
        for m in maps.values():
            _pool_add(pool, m)
        new = True
    return new


def attack(server_weights: dict, reference_weights: dict, budget: float | None = None) -> dict:
    t0 = time.monotonic()
    deadline = None if budget is None else t0 + budget
    keep = lambda a: a.dtype.type in FLOAT_TYPES and a.ndim >= 2 and a.size >= 4  # noqa: E731
    server = {n: a.astype(np.float64) for n, a in server_weights.items() if keep(a)}
    reference = {n: a.astype(np.float64) for n, a in reference_weights.items() if keep(a)}
    pairs = _pairs(server, reference)
    vectors = [(v.astype(np.float64), w.astype(np.float64)) for v in server_weights.values()
               if v.dtype.type in FLOAT_TYPES and v.ndim == 1 and v.size >= 2
               for w in reference_weights.values() if w.dtype.type in FLOAT_TYPES and w.shape == v.shape]
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
                            if fit[1] < EARLY:
                                break
                    if best is not None and best[1][1] < EARLY:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        break
                gram = best is None and s.ndim == 2
                if gram:  # the other axis may be an unknown permutation: fit through the Gram matrix
                    j = 1 - k
                    for src in sources:
                        r = reference[src]
                        g = fit_gram(s0, _slices(r, k)) if s.shape[j] <= MAX_N else None
                        if g is None:
                            continue
                        sj, rj = _slices(s, j), _slices(_apply(r, k, g[0]), j)
                        other = fit_axis(sj, rj) or fit_permutation(sj, rj)
                        if other is not None and (best is None or other[1] < best[1][1]):
                            best = (src, (g[0], other[1], "gram"), j, other[0])
                if best is None:
                    continue
                src, (m, res, method), j, mj = best
                if entry is None:
                    entry = found[name] = {"source": src, "maps": {}, "residual": {}, "method": {}}
                entry["maps"][k], entry["residual"][k], entry["method"][k] = m, res, method
                _pool_add(pool, m)
                if mj is not None:  # the pool map (or the Gram fit's other axis) is this tensor's axis j
                    entry["maps"][j], entry["residual"][j] = mj, res
                    entry["method"][j] = "pool" if method != "gram" else "gram-other"
                    if method == "gram":
                        _pool_add(pool, mj)
                new = True
            if not complete:
                break
        if not new and complete:
            new = _scaled_pass(server, reference, pairs, found, pool, vectors, deadline)
        if not new or not complete:
            break
    return {"tensors": found, "rounds": rounds, "seconds": time.monotonic() - t0, "complete": complete}
