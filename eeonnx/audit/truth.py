"""The auditor's ground truth, read from the client side after an attack returned.

Only :mod:`eeonnx.audit.score` and the scorecard use this module; no attack
imports it (``tests/test_audit.py`` runs the attacks on a copy of OUT with
``client/`` removed). The truth is the compile's own record
(``client/rekey.json``: every class's permutation and each server
initializer's per-axis layout term) and ``client/manifest.json``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from eeonnx.compiler.rekey import materialize_json


class GroundTruth:
    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        client = os.path.join(self.out_dir, "client")
        with open(os.path.join(client, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        path = os.path.join(client, "rekey.json")
        self.record = {"classes": [], "files": {}}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.record = json.load(f)
        self.classes = {c["name"]: c for c in self.record["classes"]}
        # every class with a recorded permutation is scored on it; for a class of a
        # larger group (permutation x scales) that is the permutation part of its key
        self.perms = {n: np.asarray(c["perm"], dtype=np.int64) for n, c in self.classes.items() if "perm" in c}
        self.sizes = {n: int(c["size"]) for n, c in self.classes.items()}
        self.terms = self.record["files"].get("server/model.onnx", {})

    def axis_index(self, name: str, axis: int):
        """Index array p of a server initializer's axis (server = plain.take(p, axis)),
        or None when the axis is public or its class is not a permutation."""
        entry = self.terms.get(name)
        if entry is None or "fold" not in entry or axis >= len(entry["fold"]):
            return None
        term = entry["fold"][axis]
        if "p" in term or any(c not in self.perms for c in _classes(term)):
            return None
        return materialize_json(term, self.perms, self.sizes)

    def axis_classes(self, name: str, axis: int) -> list[str]:
        """Every class in the axis's term (one for a plain class axis, several under Kron/Cat)."""
        entry = self.terms.get(name)
        if entry is None or axis >= len(entry.get("fold", [])):
            return []
        return _classes(entry["fold"][axis])

    def axis_class(self, name: str, axis: int):
        """The class name when the axis is exactly one class, else None."""
        entry = self.terms.get(name)
        if entry is None or axis >= len(entry.get("fold", [])):
            return None
        return entry["fold"][axis].get("c")

    def plain(self, name: str, server_tensor: np.ndarray) -> np.ndarray:
        """The plain tensor behind a server initializer (undo each permuted axis)."""
        out = server_tensor
        for axis in range(server_tensor.ndim):
            p = self.axis_index(name, axis)
            if p is not None:
                out = out.take(np.argsort(p), axis=axis)
        return out

    def axis_map(self, name: str, axis: int):
        """The true map T of a server initializer's axis, in the linear-fit attack's
        convention (slices along the axis: ``server_k = T @ plain_k``): the class's
        recorded transform at the tensor's exponent (``client/rekey.npz``), then the
        rotary pair maps whose site is on the axis, rows taken by the permutation; the
        identity for a public axis. None when the record
        cannot give it per axis (a map spanning axes, or a transform it lacks)."""
        entry = self.terms.get(name)
        if entry is None or "fold" not in entry or axis >= len(entry["fold"]):
            return None
        term = entry["fold"][axis]
        p = materialize_json(term, self.perms, self.sizes) if all(c in self.perms for c in _classes(term)) else None
        if p is None:
            return None
        from eeonnx.compiler import groups as G

        exp = {n: int(e) for n, e in entry.get("exp", {}).items() if e}
        cv, tr = self._transforms()
        if any(n not in tr for n in exp if n in _classes(term)):
            return None
        try:
            m = G.term_map(cv.term(term), cv.factor(exp, lambda n, e: tr[n].factor(e)))
        except Exception:  # noqa: BLE001 - a per-head map whose head is on another axis
            return None
        n = len(p)
        if m is None:
            m = np.eye(n)
        elif m.ndim == 1:
            m = np.diag(m)
        elif m.ndim != 2:
            return None
        # rotary pair maps (folded after the class maps) whose site is on this axis
        for pr in entry.get("pairs", []):
            if pr["site"] not in _names(term):
                continue
            if pr["of"] not in tr:
                return None
            from eeonnx.compiler import layout as L
            from eeonnx.compiler import pairs as P

            try:
                f = cv.site(pr["site"], _site_size(term, pr["site"])).uid
                m = m @ P.apply(np.eye(n), [L.Public(n), cv.term(term)], f, tr[pr["of"]].blocks(pr["e"]),
                                tr[pr["of"]].head)
            except Exception:  # noqa: BLE001 - a pair map this axis alone does not hold
                return None
        return m.T[p]

    def continuous(self) -> list[str]:
        """Classes whose group is above the permutations."""
        return [n for n, c in self.classes.items() if c.get("group", "permutation") != "permutation"]

    def _transforms(self):
        if getattr(self, "_tr", None) is None:
            from eeonnx.compiler.rekey import ClassVars, RekeyError, load_transforms

            cv = ClassVars(self.sizes)
            try:
                tr = load_transforms(self.out_dir, self.record, cv)
            except RekeyError:
                tr = {}
            self._tr = (cv, tr)
        return self._tr

    def vocabulary(self):
        """(token input, class name, vocabulary size) of the token-id input, or None."""
        for c in self.manifest.get("inputs", []):
            if "value_size" in c and c.get("value_layout"):
                name = c["value_layout"].split("[")[0]
                if name in self.perms:
                    return c["name"], name, int(c["value_size"])
        return None

    def secret_classes(self) -> list[str]:
        return list(self.classes)


def _names(term) -> set[str]:
    """Class names and pair-site names in a JSON term."""
    out = {term[k] for k in ("c", "site") if k in term}
    for part in term.get("cat", []) + term.get("kron", []):
        out |= _names(part)
    return out


def _site_size(term, name):
    if term.get("site") == name or term.get("c") == name:
        return term.get("p")
    for part in term.get("cat", []) + term.get("kron", []):
        got = _site_size(part, name)
        if got is not None:
            return got
    return None


def _classes(term) -> list[str]:
    if "c" in term:
        return [term["c"]]
    out = []
    for part in term.get("cat", []) + term.get("kron", []):
        out += _classes(part)
    return out
