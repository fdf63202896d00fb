"""Leakage metrics: numbers for what an observer of the wire can learn.

Every function here takes only what the named observer sees (wire tensors, an
encrypted id stream, public reference data) plus, for the *scoring* helpers,
the ground truth the auditor holds. None of them reads a key or an artifact.
numpy only; nothing here needs scipy.

- :func:`image_wire_correlation`, :func:`image_wire_leakage`: does the first
  principal component of a wire feature map look like the input picture?
- :func:`token_wire_leakage`: do wire vectors of the same token cluster across
  contexts (nearest-neighbour match rate, k-means purity)?
- :func:`frequency_attack`: substitution-cipher analysis of an encrypted
  token-id stream against public reference text (unigram rank, then bigram
  hill climbing); :func:`occurrence_accuracy` and
  :func:`constant_guess_baseline` score it.
"""
from __future__ import annotations

import time

import numpy as np

# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114])


def luminance(image) -> np.ndarray:
    """[3, H, W] (RGB) or [1, H, W] / [H, W] -> [H, W] float64 luminance."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"image must be [C, H, W] or [H, W], got shape {a.shape}")
    if a.shape[0] == 3:
        return np.tensordot(_LUMA, a, axes=(0, 0))
    return a.mean(axis=0)


def resize(plane, shape) -> np.ndarray:
    """Bilinear resize of a 2-D array to ``shape`` (pixel centres aligned)."""
    a = np.asarray(plane, dtype=np.float64)
    for axis, n in enumerate(shape):
        m = a.shape[axis]
        if m == n:
            continue
        pos = (np.arange(n) + 0.5) * m / n - 0.5
        pos = np.clip(pos, 0, m - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, m - 1)
        w = pos - lo
        shape_w = [1, 1]
        shape_w[axis] = n
        w = w.reshape(shape_w)
        a = np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w
    return a


def wire_pc1(wire) -> np.ndarray:
    """First principal component over channels of one sample's wire ``[C, H, W]``:
    an ``[H, W]`` map. Channels are standardized first, so a channel permutation,
    a positive per-channel scale or any orthogonal mixing of channels gives the
    same map (up to sign)."""
    a = np.asarray(wire, dtype=np.float64)
    if a.ndim != 3:
        raise ValueError(f"wire must be one sample [C, H, W], got shape {a.shape}")
    c, h, w = a.shape
    x = a.reshape(c, h * w)
    x = x - x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    x = x[sd[:, 0] > 1e-12] / sd[sd[:, 0] > 1e-12]
    if x.shape[0] == 0:
        return np.zeros((h, w))
    # PCA over channels: the leading right singular vector is the PC1 score map
    if x.shape[0] <= h * w:
        cov = x @ x.T
        vals, vecs = np.linalg.eigh(cov)
        score = vecs[:, -1] @ x
    else:
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        score = vt[0]
    return score.reshape(h, w)


def _pearson(a, b) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(abs((a * b).sum()) / den) if den > 0 else 0.0


def image_wire_correlation(wire, image) -> float:
    """|Pearson| between the wire's first principal component (over channels) and
    the image's luminance, both resized to the smaller of the two resolutions.

    ``wire``: one sample's activations ``[C, H, W]`` as the server sees them;
    ``image``: ``[3 or 1, H0, W0]``. 1.0 means the server sees the picture's
    brightness pattern exactly; an unrelated image gives the baseline."""
    pc = wire_pc1(wire)
    lum = luminance(image)
    shape = (min(pc.shape[0], lum.shape[0]), min(pc.shape[1], lum.shape[1]))
    return _pearson(resize(pc, shape), resize(lum, shape))


def image_wire_leakage(wires, images, baseline_images=None) -> dict:
    """Mean :func:`image_wire_correlation` of each wire with its own input, against
    the mean with unrelated images.

    ``baseline_images``: images unrelated to the wires; when None, every wire is
    compared with the *other* inputs of the set (needs at least two).
    Returns ``{"correlation", "baseline", "excess", "per_image"}``."""
    wires = list(wires)
    images = list(images)
    if len(wires) != len(images) or not wires:
        raise ValueError("need one image per wire, at least one")
    own = [image_wire_correlation(w, im) for w, im in zip(wires, images)]
    base = []
    if baseline_images is not None:
        for w in wires:
            base += [image_wire_correlation(w, b) for b in baseline_images]
    elif len(images) > 1:
        for i, w in enumerate(wires):
            base += [image_wire_correlation(w, im) for j, im in enumerate(images) if j != i]
    corr = float(np.mean(own))
    baseline = float(np.mean(base)) if base else float("nan")
    return {"correlation": corr, "baseline": baseline, "excess": corr - baseline,
            "per_image": [float(x) for x in own]}


# ----------------------------------------------------------------------------
# token wires
# ----------------------------------------------------------------------------
def _kmeans(x, k, rng, iters=30) -> np.ndarray:
    """Plain Lloyd's k-means with k-means++ seeding; returns the labels."""
    n = x.shape[0]
    k = max(1, min(k, n))
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.stack(centres)
    labels = np.zeros(n, dtype=int)
    for _ in range(iters):
        dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
        new = dist.argmin(1)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(0)
    return labels


def _purity(labels, truth) -> float:
    total = 0
    for j in np.unique(labels):
        _, counts = np.unique(truth[labels == j], return_counts=True)
        total += counts.max()
    return total / len(truth)


def token_wire_leakage(vectors, token_ids, context_ids, seed=0) -> dict:
    """How well wire vectors identify their token across contexts.

    ``vectors``: ``[N, D]`` what the server receives per token position;
    ``token_ids``: the plain token at each position (ground truth, for scoring);
    ``context_ids``: which sequence each position came from.

    - ``nn_match``: for each vector whose token also occurs in another context,
      the nearest neighbour (cosine) among vectors of *other* contexts carries the
      same token id;
    - ``baseline``: the same rate for a neighbour drawn at random from other
      contexts (chance);
    - ``cluster_purity``: purity of k-means (k = distinct tokens) against the
      token ids, and ``purity_baseline`` the purity of a random assignment of
      the same cluster sizes."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x.reshape(x.shape[0], -1)
    tok = np.asarray(token_ids).ravel()
    ctx = np.asarray(context_ids).ravel()
    if not (len(x) == len(tok) == len(ctx)):
        raise ValueError("vectors, token_ids and context_ids need one entry per position")
    rng = np.random.default_rng(seed)
    xn = x - x.mean(0)
    xn = xn / np.maximum(np.linalg.norm(xn, axis=1, keepdims=True), 1e-12)
    sims = xn @ xn.T
    other = ctx[:, None] != ctx[None, :]
    sims = np.where(other, sims, -np.inf)
    same = tok[:, None] == tok[None, :]
    eligible = (same & other).any(1)
    if not eligible.any():
        nn, base = float("nan"), float("nan")
    else:
        nearest = sims.argmax(1)
        nn = float((tok[nearest] == tok)[eligible].mean())
        base = float(((same & other).sum(1) / np.maximum(other.sum(1), 1))[eligible].mean())
    k = len(np.unique(tok))
    labels = _kmeans(xn, k, rng)
    purity = _purity(labels, tok)
    shuffled = rng.permutation(labels)
    return {"nn_match": nn, "baseline": base, "cluster_purity": float(purity),
            "purity_baseline": float(_purity(shuffled, tok)), "positions": int(len(tok))}


# ----------------------------------------------------------------------------
# frequency analysis of an encrypted token-id stream
# ----------------------------------------------------------------------------
def _counts(ids, vocab_size) -> np.ndarray:
    return np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=vocab_size)[:vocab_size]


def _bigrams(ids, index, k) -> np.ndarray:
    """k x k counts of consecutive pairs, ids mapped through ``index`` (-1 = dropped)."""
    a = index[np.asarray(ids[:-1])]
    b = index[np.asarray(ids[1:])]
    keep = (a >= 0) & (b >= 0)
    m = np.zeros((k, k))
    np.add.at(m, (a[keep], b[keep]), 1)
    return m


def frequency_attack(cipher_ids, reference_ids, vocab_size, top=None, sweeps=30,
                     smoothing=0.3, time_budget=None, seed=0) -> np.ndarray:
    """Guess the plain id of every cipher id of a deterministic substitution.

    The observer has the encrypted id stream ``cipher_ids`` (what the server
    receives) and public reference text tokenized with the public tokenizer
    ``reference_ids``. Steps:

    1. unigram rank: the k-th most frequent cipher id is guessed to be the k-th
       most frequent reference id;
    2. bigram hill climbing over the ``top`` most frequent cipher ids (default:
       those seen at least 3 times, between 100 and 600; rarer ids carry too
       few bigrams to place and only make the climb overfit): the
       assignment to ``top + top // 2`` reference candidates maximizing
       ``sum C[a,b] log P_ref(g(a), g(b)) + sum n_a log P_ref(g(a))`` (the
       reference bigram distribution interpolated with the product of
       unigrams), by best-swap moves per cipher id, for up to ``sweeps``
       sweeps or ``time_budget`` seconds.

    Returns ``guess`` of length ``vocab_size``: ``guess[c]`` the guessed plain id
    of cipher id ``c`` (a permutation of ``range(vocab_size)``)."""
    t0 = time.monotonic()
    cipher = np.asarray(cipher_ids, dtype=np.int64).ravel()
    ref = np.asarray(reference_ids, dtype=np.int64).ravel()
    cc = _counts(cipher, vocab_size)
    rc = _counts(ref, vocab_size)
    rng = np.random.default_rng(seed)
    tie = rng.random(vocab_size) * 1e-3  # random tie-break, no bias towards low ids
    c_order = np.argsort(-(cc + tie), kind="stable")
    r_order = np.argsort(-(rc + tie), kind="stable")
    guess = np.empty(vocab_size, dtype=np.int64)
    guess[c_order] = r_order  # unigram rank
    if top is None:
        top = int(np.clip((cc >= 3).sum(), 100, 600))
    k = int(min(top, (cc > 0).sum()))
    if k < 2 or len(cipher) < 2 or len(ref) < 2:
        return guess
    m = int(min(vocab_size, k + k // 2))
    # cipher side: k real symbols padded with m - k dummies (a swap with a dummy
    # is a move to an unused reference candidate)
    cidx = np.full(vocab_size, -1, dtype=np.int64)
    cidx[c_order[:k]] = np.arange(k)
    C = np.zeros((m, m))
    C[:k, :k] = _bigrams(cipher, cidx, k)
    n = np.zeros(m)
    n[:k] = cc[c_order[:k]]
    # reference side: m candidates
    ridx = np.full(vocab_size, -1, dtype=np.int64)
    ridx[r_order[:m]] = np.arange(m)
    R = _bigrams(ref, ridx, m)
    pu = (rc[r_order[:m]] + 0.5) / (len(ref) + 0.5 * m)
    pj = R / max(R.sum(), 1.0)
    L = np.log((1 - smoothing) * pj + smoothing * np.outer(pu, pu) + 1e-12)
    lpu = np.log(pu)
    u = np.arange(m)  # cipher slot -> reference candidate (starts at the rank guess)
    deadline = None if time_budget is None else t0 + time_budget
    # two starts (the rank guess, and linear-assignment rounds from it), each
    # climbed; keep the assignment with the higher score (the attacker can compute it)
    half = None if deadline is None else t0 + time_budget / 2
    best_u, best = None, -np.inf
    for start, until in ((u, half), (None, deadline)):
        if start is None:
            start = _assignment_rounds(C, L, n, lpu, np.arange(m), rounds=sweeps, deadline=until)
        cand, score = _climb(C, L, n, lpu, start.copy(), k, sweeps, until)
        if score > best:
            best_u, best = cand, score
    u = best_u
    guess = guess.copy()
    real = c_order[:k]
    guess[real] = r_order[u[:k]]
    # the candidates freed by moves go to the cipher ids that are not in the top
    used = set(guess[real].tolist())
    rest = [p for p in r_order if p not in used]
    guess[c_order[k:]] = rest
    return guess


def _assignment_rounds(C, L, n, lpu, u, rounds, deadline):
    """Re-assign every cipher slot at once: with the others' assignment fixed, the
    score of slot a taking candidate p is linear, so the best joint move is a
    linear assignment (scipy's Hungarian solver; skipped without scipy)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return u
    best_u, best = u, (C * L[np.ix_(u, u)]).sum() + (n * lpu[u]).sum()
    seen = set()
    for _ in range(rounds):
        if deadline is not None and time.monotonic() > deadline:
            break
        gain = C @ L[:, u].T + C.T @ L[u, :] + n[:, None] * lpu[None, :]
        _, u = linear_sum_assignment(gain, maximize=True)
        score = (C * L[np.ix_(u, u)]).sum() + (n * lpu[u]).sum()
        if score > best:
            best_u, best = u, score
        if u.tobytes() in seen:
            break  # a fixed point or a cycle
        seen.add(u.tobytes())
    return best_u.copy()


def _climb(C, L, n, lpu, u, k, sweeps, deadline):
    """Best-swap hill climbing: for each real cipher slot a in turn, the swap with
    the slot b that raises the score most, until a sweep changes nothing."""
    LG = L[np.ix_(u, u)]  # L[u(x), u(y)], kept in step with u
    lu = lpu[u]
    Ct = C.T.copy()
    rd = (C * LG).sum(1)  # rd[x] = C[x] . LG[x]
    cd = (C * LG).sum(0)  # cd[y] = C[:, y] . LG[:, y]
    for _ in range(sweeps):
        improved = False
        for a in range(k):
            if deadline is not None and time.monotonic() > deadline:
                return u, _score(C, L, n, lpu, u)
            d = _swap_deltas(a, C, Ct, LG, n, lu, rd, cd)
            d[a] = 0.0
            b = int(d.argmax())
            if d[b] <= 1e-9:
                continue
            improved = True
            ab, ba = [a, b], [b, a]
            # rows x not in {a, b} see columns a, b swap; columns y likewise rows
            rd += (C[:, a] - C[:, b]) * (LG[:, b] - LG[:, a])
            cd += (C[a] - C[b]) * (LG[b] - LG[a])
            u[ab] = u[ba]
            lu[ab] = lu[ba]
            LG[ab] = LG[ba]
            LG[:, ab] = LG[:, ba]
            rd[ab] = (C[ab] * LG[ab]).sum(1)
            cd[ab] = (C[:, ab] * LG[:, ab]).sum(0)
        if not improved:
            break
    return u, _score(C, L, n, lpu, u)


def _score(C, L, n, lpu, u) -> float:
    return float((C * L[np.ix_(u, u)]).sum() + (n * lpu[u]).sum())


def _swap_deltas(a, C, Ct, LG, n, lu, rd=None, cd=None) -> np.ndarray:
    """Score change of swapping the assignments of slot ``a`` and every slot ``b``.

    Score = sum_xy C[x,y] LG[x,y] + sum_x n[x] lu[x], where LG[x,y] = L[u(x), u(y)]
    and lu[x] = log P(u(x)). Swapping a and b swaps rows and columns a, b of LG."""
    # rows a, b over all columns y: sum_y (C[a,y]-C[b,y]) (LG[b,y]-LG[a,y])
    ca, la = C[a], LG[a]
    if rd is None:
        rd = (C * LG).sum(1)
        cd = (C * LG).sum(0)
    rows = LG @ ca - rd[a] - rd + C @ la
    # columns a, b over all rows x: sum_x (C[x,a]-C[x,b]) (LG[x,b]-LG[x,a])
    cta, lta = Ct[a], LG[:, a]
    LGt = LG.T
    cols = LGt @ cta - cd[a] - cd + Ct @ lta
    # the four entries in rows and columns {a, b} were counted wrongly above: redo them
    b = np.arange(len(n))
    Caa, Cab, Cba, Cbb = C[a, a], C[a, b], C[b, a], C[b, b]
    Laa, Lab, Lba, Lbb = LG[a, a], LG[a, b], LG[b, a], LG[b, b]
    # what rows counted for y in {a, b}:
    rows_s = (Caa - Cba) * (Lba - Laa) + (Cab - Cbb) * (Lbb - Lab)
    cols_s = (Caa - Cab) * (Lab - Laa) + (Cba - Cbb) * (Lbb - Lba)
    old = Caa * Laa + Cab * Lab + Cba * Lba + Cbb * Lbb
    new = Caa * Lbb + Cab * Lba + Cba * Lab + Cbb * Laa
    uni = (n[a] - n) * (lu - lu[a])
    return rows - rows_s + cols - cols_s + (new - old) + uni


def occurrence_accuracy(guess, cipher_ids, plain_ids) -> float:
    """Share of token occurrences whose plain id the guess gets right (scoring)."""
    cipher = np.asarray(cipher_ids).ravel()
    plain = np.asarray(plain_ids).ravel()
    return float((np.asarray(guess)[cipher] == plain).mean()) if len(plain) else float("nan")


def constant_guess_baseline(plain_ids) -> float:
    """Share of occurrences the best constant guess gets: every token guessed to be
    the stream's most frequent plain token (an upper bound for any guess that does
    not look at the stream)."""
    plain = np.asarray(plain_ids, dtype=np.int64).ravel()
    return float(np.bincount(plain).max() / len(plain)) if len(plain) else float("nan")
