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


MAP_THRESHOLD = 0.1  # a map counts as recovered when ||M - T||_F / ||T||_F is below this


def score_linear(recovery: dict, truth: GroundTruth, server_weights: dict,
                 threshold: float = MAP_THRESHOLD) -> dict:
    """Score a per-tensor, per-axis map recovery (the linear-fit attack) against the key.

    Per server initializer axis that carries a secret class, the relative error
    ``||M - T||_F / ||T||_F`` of the recovered map M against the true axis map T
    (:meth:`GroundTruth.axis_map`: the class's recorded element at the tensor's
    exponent, rows taken by its permutation; a missing map scores error 1). A class
    scores its best axis (as :func:`score_alignment` does: the attacker that decrypts
    one tensor of a class decrypts the class; merged Kron/Cat axes score each of their
    classes); it counts as recovered below ``threshold``. Returns ``{"errors": {class:
    best error}, "classes_recovered", "classes_scored", "continuous_recovered",
    "continuous_scored", "weights_rebuilt": share of secret weight bytes whose every
    secret axis was recovered, "tensors_scored", "axes_unscored": axes whose true map
    the record cannot give per axis, "threshold"}``."""
    errors: dict[str, float] = {}
    bytes_total = bytes_ok = scored = unscored = 0
    for name, entry in truth.terms.items():
        s = server_weights.get(name)
        if s is None or "fold" not in entry or s.ndim < 1:
            continue
        rec = recovery["tensors"].get(name)
        all_ok, any_axis = True, False
        for axis in range(s.ndim):
            classes = truth.axis_classes(name, axis)
            if not classes:
                continue  # public axis
            any_axis = True
            t = truth.axis_map(name, axis)
            if t is None:
                unscored += 1
                all_ok = False
                continue
            m = None if rec is None else rec["maps"].get(axis)
            err = 1.0 if m is None or m.shape != t.shape else \
                float(np.linalg.norm(m - t) / max(np.linalg.norm(t), 1e-30))
            all_ok &= err < threshold
            for c in classes:
                errors[c] = min(errors.get(c, np.inf), err)
        if any_axis:
            scored += 1
            bytes_total += s.nbytes
            bytes_ok += s.nbytes if all_ok else 0
    cont = set(truth.continuous())
    ok = [c for c, e in errors.items() if e < threshold]
    return {"errors": errors,
            "classes_recovered": len(ok) / len(errors) if errors else None,
            "classes_scored": len(errors),
            "continuous_recovered": (sum(c in cont for c in ok) / sum(c in cont for c in errors)
                                     if any(c in cont for c in errors) else None),
            "continuous_scored": sum(c in cont for c in errors),
            "weights_rebuilt": bytes_ok / bytes_total if bytes_total else None,
            "tensors_scored": scored, "axes_unscored": unscored, "threshold": threshold}
