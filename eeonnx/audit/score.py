"""Scoring: compare what an attack returned with the ground truth (the key).

Called only after the attack returned. Transform-agnostic where it can be: a
recovered axis counts position by position (the recovered index equals the
key's, or points at an identical plain slice, which is the same answer), and
a tensor counts as rebuilt when every permuted axis was recovered.
"""
from __future__ import annotations

import numpy as np

from eeonnx.audit.truth import GroundTruth


def _axis_correct(idx, p, plain, axis) -> np.ndarray:
    """Per position: the recovered index is right (or names an identical plain slice)."""
    ok = np.asarray(idx) == p
    if not ok.all():
        flat = np.moveaxis(plain, axis, 0).reshape(plain.shape[axis], -1)
        for i in np.nonzero(~ok)[0]:
            ok[i] = np.array_equal(flat[idx[i]], flat[p[i]])
    return ok


def _uniform_along(plain, axis) -> bool:
    flat = np.moveaxis(plain, axis, 0).reshape(plain.shape[axis], -1)
    return bool(np.all(flat == flat[:1]))


def score_alignment(recovery: dict, truth: GroundTruth, server_weights: dict) -> dict:
    """Score a per-tensor, per-axis recovery (known-weights or fine-tune attack).

    Returns ``{"classes": {name: share of positions recovered}, "classes_recovered":
    fully recovered / total scored, "vocabulary": share of vocabulary ids recovered
    (None if no token input), "weights_rebuilt": share of permuted weight bytes with
    every axis recovered, "tensors_scored": int}``."""
    per_class: dict[str, float] = {}
    bytes_total = bytes_ok = 0
    scored = 0
    for name, entry in truth.terms.items():
        s = server_weights.get(name)
        if s is None or "fold" not in entry:
            continue
        plain = truth.plain(name, s)
        rec = recovery["tensors"].get(name)
        all_ok, any_axis = True, False
        for axis in range(s.ndim):
            p = truth.axis_index(name, axis)
            if p is None or _uniform_along(plain, axis):
                continue  # public, or every slice equal: nothing to recover
            any_axis = True
            idx = None if rec is None or axis >= len(rec["axes"]) else rec["axes"][axis]
            share = 0.0 if idx is None or len(idx) != len(p) else float(_axis_correct(idx, p, plain, axis).mean())
            all_ok &= share == 1.0
            # a plain class axis scores its class; a merged axis (Kron/Cat) scores each of
            # its classes with the share of the whole axis (a lower bound)
            for c in truth.axis_classes(name, axis):
                per_class[c] = max(per_class.get(c, 0.0), share)
        if any_axis:
            scored += 1
            bytes_total += s.nbytes
            bytes_ok += s.nbytes if all_ok else 0
    vocab = truth.vocabulary()
    vocab_share = per_class.get(vocab[1]) if vocab else None
    full = sum(v == 1.0 for v in per_class.values())
    return {"classes": per_class,
            "classes_recovered": full / len(per_class) if per_class else None,
            "classes_scored": len(per_class),
            "vocabulary": vocab_share,
            "vocabulary_size": vocab[2] if vocab else None,
            "weights_rebuilt": bytes_ok / bytes_total if bytes_total else None,
            "tensors_scored": scored}
