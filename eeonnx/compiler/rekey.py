"""rekey: give an artifact a fresh key by re-folding its weights, without the original model.

At compile time :func:`record` saves, on the client side only
(``client/rekey.json`` and, when some class carries a continuous transform,
``client/rekey.npz``; both 0600), what a re-key needs:

- every secret class: display name, derivation label, size, group and its
  current permutation (the whole ``client/`` directory is key material
  already: encode.onnx holds the same index arrays); a class above the
  permutations also names its transform's type, and the transform's arrays
  (scales, a dense factor, whatever the group's element holds) go to
  ``rekey.npz`` as ``{class}.{field}`` (float64, loaded without pickle);
- per file (``server/model.onnx``, ``client/encode.onnx``,
  ``client/decode.onnx``), per initializer that a class touches (by its name
  in that file: the server's are the opaque names of ``anonymize``), either
  ``fold``: the layout term of each axis (the tensor is the plain one
  transformed along each axis, then taken along each axis by the
  materialized term) with ``exp``: the exponent of each continuous class
  on that tensor (+1: x T, -1: T^-T; absent: permuted only, see
  ``groups``), or ``index``: the tensor *is* an index array,
  ``materialize(term)`` or its inverse (the boundary gathers and id maps),
  or ``map``: the tensor is the boundary's map of an axis on plain indices
  (a scale vector or a matrix: the transforms of the term's classes at
  ``exp``; ``inverse`` on the decode side).

:func:`rekey` draws new permutations (and, for continuous classes, new
elements of the same group, ``groups.redraw``) from a new key and, per
axis, takes the server's tensor by ``q = argsort(p_old)[p_new]``, so
``W.take(p_old).take(q) == W.take(p_new)``. A tensor under a continuous
class is un-permuted, un-folded with the old transforms' inverse maps and
folded with the new ones at the tensor's recorded exponents
(``passes.fold.transform``, the compile's own fold: per-axis maps and maps
that span axes, such as per-head blocks, alike; in effect W'' = fold(W',
T_old^-1 T_new)), in float64, cast once, and permuted by p_new. No analysis and no plain
weights are needed, only the artifact. Index arrays and boundary maps are
rebuilt from their terms, after checking that the old ones match the
record (a modified artifact is refused). The encrypted tokenizer is
re-mapped the same way.

Exactness: a permutation-only artifact is re-keyed bit for bit (the same
values, moved). A continuously transformed tensor is re-rounded: the
re-keyed artifact computes the original function to float rounding, but is
not bit-identical to a fresh compile under the new key (the old server
tensor was already rounded to its dtype, and that rounding is carried
through ``T_old^-1 T_new``), and repeated re-keys accumulate it. Measured
(fp32, ``--transforms max``): the plain weights recovered from the server's
continuously transformed tensors through the record differ from the
original's by at most 5.9e-8 of the tensor's largest value after the
compile, 8.0e-8 after one re-key and 1.6e-7 after five (MLP, BERT, GPT-2
and LLaMA with KV cache; diagonal, linear, orthogonal and per-head
classes); the decoded outputs stay within 1.1e-6 relative
(eecheck) after five re-keys on GPT-2 and LLaMA with a KV cache.

Invariants: the output is written atomically (a temp sibling renamed to
OUT2; nothing half-written); the re-keyed artifact computes the same
function as the old one (to float rounding where transforms are
continuous); no class keeps its old permutation (new ones are drawn from
the new key's secret, uniformly among the others; the labels used are
recorded, so a later re-key starts from the record again); a class above
the permutations whose element is not in the record (an artifact compiled
before rekey supported them, or a group this eeonnx does not know) is
refused with :class:`RekeyError`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler.keys import Key, write_key
from eeonnx.compiler.passes.emit import move_into_place
from eeonnx.errors import EEError

FORMAT = "eeonnx-rekey/1"
RECORD = "rekey.json"
ARRAYS = "rekey.npz"  # the continuous classes' transforms (float64), next to the record
SERVER, ENCODE, DECODE = "server/model.onnx", "client/encode.onnx", "client/decode.onnx"


class RekeyError(EEError):
    """The artifact cannot be re-keyed (no record, a modified file, a transform the record lacks)."""


# -- terms as JSON ---------------------------------------------------------------
def term_json(t: L.Term, names: dict[int, str], sites: dict[int, str] | None = None):
    """{"p": n} public, {"c": name} a class, {"cat": [...]}, {"kron": [...]}; unnamed classes
    are public. A public variable that a rotary pair map sits on (``sites``) is
    ``{"p": n, "site": name}``: still the identity permutation, named so a re-key finds it."""
    t = L.resolve(t)
    if isinstance(t, L.Var):
        if t.pin is None and t.uid in names:
            return {"c": names[t.uid]}
        return {"p": t.size, "site": sites[t.uid]} if sites and t.uid in sites else {"p": t.size}
    if isinstance(t, L.Cat):
        return {"cat": [term_json(p, names, sites) for p in t.parts]}
    if isinstance(t, L.Kron):
        return {"kron": [term_json(f, names, sites) for f in t.factors]}
    return {"p": t.size}


def materialize_json(t, perms: dict[str, np.ndarray], sizes: dict[str, int]) -> np.ndarray:
    """The index array of a JSON term (same convention as layout.materialize)."""
    if "p" in t:
        return np.arange(int(t["p"]), dtype=np.int64)
    if "c" in t:
        return np.asarray(perms[t["c"]], dtype=np.int64)
    if "cat" in t:
        out, off = [], 0
        for part in t["cat"]:
            p = materialize_json(part, perms, sizes)
            out.append(p + off)
            off += p.size
        return np.concatenate(out)
    idx = np.zeros(1, dtype=np.int64)
    for f in t["kron"]:
        p = materialize_json(f, perms, sizes)
        idx = (idx[:, None] * p.size + p[None, :]).reshape(-1)
    return idx


class ClassVars:
    """The record's classes as layout variables: one ``Var`` per class name, shared by every
    term and transform of one re-key, so ``groups.apply_axis``, ``fold.transform`` and
    ``groups.term_map`` apply each class's maps (and a transform that refers to another
    class, such as a per-head map's head, finds it by the same variable)."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes, self.vars, self.names, self.sites = sizes, {}, {}, {}

    def site(self, name: str, size: int | None = None) -> L.Var:
        """The variable a pair map sits on: a class, or a public variable named in the record."""
        if name in self.sizes:
            return self.var(name)
        if name not in self.sites:
            self.sites[name] = L.Var(int(size))
        return self.sites[name]

    def var(self, name: str) -> L.Var:
        if name not in self.vars:
            v = L.Var(int(self.sizes[name]))
            self.vars[name], self.names[v.uid] = v, name
        return self.vars[name]

    def term(self, t) -> L.Term:
        """The layout term of a JSON term."""
        if "site" in t:
            return self.site(t["site"], t["p"])
        if "p" in t:
            return L.Public(t["p"])
        if "c" in t:
            return self.var(t["c"])
        if "cat" in t:
            return L.Cat(tuple(self.term(p) for p in t["cat"]))
        return L.Kron(tuple(self.term(f) for f in t["kron"]))

    def factor(self, exp: dict[str, int], of):
        """factor(var): ``of(name, e)`` for a class with a non-zero exponent in ``exp``, else None."""
        def factor(v):
            n = self.names.get(v.uid)
            return None if n is None or not exp.get(n) else of(n, exp[n])

        return factor


def transform_record(name: str, tr, names: dict[int, str]) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON description, arrays) of a class's transform, generically over its dataclass
    fields: arrays go to rekey.npz as ``{name}.{field}``; the fields the type lists in
    ``class_refs`` hold another class's uid and are written as that class's name; the group
    by name; private fields (``_cache``) are skipped; anything else (ints, strings) as JSON."""
    cls = type(tr)
    refs = set(getattr(cls, "class_refs", ()))
    meta = {"type": f"{cls.__module__}:{cls.__qualname__}", "arrays": [], "params": {}, "classes": {}}
    if getattr(tr, "group", None) is not None:
        meta["group"] = tr.group.name
    arrays = {}
    for f in dataclasses.fields(tr):
        v = getattr(tr, f.name)
        if f.name == "group" or f.name.startswith("_"):
            continue
        if f.name in refs and v is not None:
            meta["classes"][f.name] = names[v]
        elif isinstance(v, np.ndarray):
            meta["arrays"].append(f.name)
            arrays[f"{name}.{f.name}"] = np.asarray(v, dtype=np.float64 if v.dtype.kind == "f" else v.dtype)
        else:
            meta["params"][f.name] = v.tolist() if isinstance(v, np.generic) else v
    return meta, arrays


def _transform_type(name: str, spec: str):
    import importlib

    module, _, qual = str(spec).partition(":")
    if not module.startswith("eeonnx.compiler") or not qual:
        raise RekeyError(f"class {name}: transform type '{spec}' is not one of eeonnx's")
    try:
        return importlib.import_module(module), getattr(importlib.import_module(module), qual)
    except (ImportError, AttributeError):
        raise RekeyError(f"class {name}: transform type '{spec}' is unknown to this eeonnx") from None


def _group(name: str, group: str, module) -> G.Group:
    try:
        return G.group_named(group)
    except KeyError:
        pass
    for v in vars(module).values():  # a group defined next to its transform (structured.py)
        if isinstance(v, G.Group) and v.name == group:
            return v
    raise RekeyError(f"class {name}: group '{group}' is unknown to this eeonnx")


def restore_transform(name: str, meta: dict, arrays, classes: ClassVars):
    """The class's transform from its record (the inverse of :func:`transform_record`)."""
    module, cls = _transform_type(name, meta.get("type"))
    kw = dict(meta.get("params", {}))
    for field in meta.get("arrays", []):
        key = f"{name}.{field}"
        if arrays is None or key not in arrays:
            raise RekeyError(f"client/{ARRAYS}: '{key}' is missing (modified artifact?)")
        kw[field] = np.asarray(arrays[key])
    for field, other in meta.get("classes", {}).items():
        if other not in classes.sizes:
            raise RekeyError(f"class {name}: its transform refers to class '{other}', which the record lacks")
        kw[field] = classes.var(other).uid
    if "group" in meta:
        kw["group"] = _group(name, meta["group"], module)
    return cls(**kw)


def _classes_in(t, out: set[str]) -> set[str]:
    if "c" in t:
        out.add(t["c"])
    for part in t.get("cat", []) + t.get("kron", []):
        _classes_in(part, out)
    return out


# -- the record, at compile time ---------------------------------------------------------
def record(comp) -> dict:
    """The re-key record of a finished compilation (after boundary; see the module docstring)."""
    return _record(comp)[0]


def _record(comp) -> tuple[dict, dict[str, np.ndarray]]:
    an = comp.analysis
    names = {uid: c.name for uid, c in comp.classes.items()}
    transforms = getattr(comp, "transforms", {}) or {}
    exps: dict = {}  # tensor -> {class name: exponent} (continuous classes, non-zero only)
    for (key, uid), e in (getattr(comp, "exponents", {}) or {}).items():
        if uid in names and e:
            exps.setdefault(key, {})[names[uid]] = int(e)
    classes, arrays, pairs = [], {}, []
    for uid, c in comp.classes.items():
        entry = {"name": c.name, "label": c.label, "size": int(c.size),
                 "group": getattr(c, "group", "permutation"),
                 "perm": [int(i) for i in comp.perms.get(uid, np.arange(c.size))]}
        if uid in transforms:
            entry["transform"], a = transform_record(c.name, transforms[uid], names)
            arrays.update(a)
        classes.append(entry)
    files: dict[str, dict] = {SERVER: {}, ENCODE: {}, DECODE: {}}
    in_file = {
        SERVER: {t.name for t in comp.server_proto.graph.initializer} if comp.server_proto is not None
        else set(comp.model.graph.initializers),
        ENCODE: {t.name for t in comp.encode_model.graph.initializer},
        DECODE: {t.name for t in comp.decode_model.graph.initializer},
    }
    # rotary pair maps (compiler/pairs.py): one transform per component, beside the classes
    pair_maps = getattr(comp, "pair_maps", {}) or {}
    components, sites = {}, {}
    for info in getattr(comp, "pair_info", []) or []:
        components[info["root"]] = name = f"pairs{len(components)}"
    for maps in pair_maps.values():
        for f, _e, tr, root in maps:
            if f not in names and f not in sites:
                sites[f] = f"site{len(sites)}"
            if root in components and components[root] not in (p["name"] for p in pairs):
                meta, a = transform_record(components[root], tr, names)
                info = next(i for i in comp.pair_info if i["root"] == root)
                pairs.append({"name": components[root], "label": info["label"], "size": int(info["size"]),
                              "transform": meta})
                arrays.update(a)
    for name in comp.weight_index:
        value = comp.model.graph.initializers[name]
        entry = {"fold": [term_json(t, names, sites) for t in an.known(value)]}
        if exps.get(value):
            entry["exp"] = exps[value]
        on = [{"site": names.get(f) or sites[f], "e": int(e), "of": components[root]}
              for f, e, _tr, root in pair_maps.get(value, []) if root in components and e]
        if on:
            entry["pairs"] = on
        for f, held in in_file.items():
            if name in held:  # the server file's tensors under their (opaque) server names
                files[f][comp.server_name(name) if f == SERVER else name] = entry
    by_name = {v.name: v for v in list(comp.model.graph.inputs) + list(comp.model.graph.outputs)}
    for kind, items, f in (("encode", comp.inputs, ENCODE), ("decode", comp.outputs, DECODE)):
        for i, c in enumerate(items):
            v = by_name.get(c.name)
            if v is None:
                continue
            terms = an.known(v) or []
            for axis, p in enumerate(c.index):
                if p is not None:
                    files[f][f"{kind}{i}_perm_axis{axis}"] = {"index": term_json(terms[axis], names),
                                                              "inverse": kind == "decode"}
            for axis, m in enumerate(c.inverse_maps if kind == "decode" else c.maps):
                if m is not None:
                    files[f][f"{kind}{i}_map_axis{axis}"] = {"map": term_json(terms[axis], names),
                                                             "exp": exps.get(v, {}), "inverse": kind == "decode"}
            if c.value_index is not None:
                vt = an.values.secret_term(an.slot(v))
                files[f][f"{kind}{i}_value_map"] = {"index": term_json(vt, names), "inverse": kind == "encode"}
    out = {"format": FORMAT, "classes": classes, "files": files}
    if pairs:
        out["pairs"] = pairs
    if getattr(comp, "not_rekeyable", ""):
        out["not_rekeyable"] = comp.not_rekeyable
    return out, arrays


def write_record(comp, client_dir: str) -> None:
    rec, arrays = _record(comp)
    _write_json(os.path.join(client_dir, RECORD), rec)
    if arrays:
        _write_arrays(os.path.join(client_dir, ARRAYS), arrays)


def _write_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.chmod(path, 0o600)


# -- re-keying -----------------------------------------------------------------------
def _write_json(path: str, data) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1 if path.endswith("manifest.json") else None)
        f.write("\n")
    os.chmod(path, 0o600)


def _draw(key: Key, cls: dict) -> tuple[str, np.ndarray]:
    """A fresh permutation for the class, uniform over the n! - 1 permutations other than
    its old one (argsort of SHAKE-256(secret || label || attempt) words, rejection of the old)."""
    old = np.asarray(cls["perm"], dtype=np.int64)
    n = cls["size"]
    base = cls["label"].split("|rekey", 1)[0]
    for attempt in range(64):
        label = f"{base}|rekey{attempt}"
        h = hashlib.shake_256(key.secret + b"\0rekey\0" + label.encode())
        p = np.argsort(np.frombuffer(h.digest(8 * n), dtype="<u8"), kind="stable").astype(np.int64)
        if n <= 1 or not np.array_equal(p, old):
            return label, p
    raise RekeyError(f"class {cls['name']}: no fresh permutation in 64 draws")  # pragma: no cover


def load_record(out: str) -> dict:
    path = os.path.join(out, "client", RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise RekeyError(f"{path}: no re-key record (the artifact predates `eeonnx rekey`; recompile it)") from None
    except (OSError, ValueError) as e:
        raise RekeyError(f"{path}: unreadable re-key record ({e})") from None
    if rec.get("format") != FORMAT:
        raise RekeyError(f"{path}: not a re-key record (expected \"format\": \"{FORMAT}\")")
    if rec.get("not_rekeyable"):
        raise RekeyError(f"{path}: this artifact cannot be re-keyed from its record "
                         f"({rec['not_rekeyable']}); recompile with a new key instead")
    odd = [c for c in rec["classes"] if c.get("group", "permutation") != "permutation" and "transform" not in c]
    if odd:
        raise RekeyError(f"class {odd[0]['name']} is a '{odd[0]['group']}' transform whose element the record "
                         "does not hold (compiled before rekey supported it?); recompile with a new key instead")
    return rec


def load_transforms(out: str, rec: dict, classes: ClassVars) -> dict:
    """Class name -> its current transform, for the classes above the permutations, and
    pair component name -> its pair transform."""
    todo = [c for c in rec["classes"] if "transform" in c] + list(rec.get("pairs", []))
    if not todo:
        return {}
    path = os.path.join(out, "client", ARRAYS)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise RekeyError(f"{path}: missing (the re-key record names continuous transforms)") from None
    except (OSError, ValueError) as e:
        raise RekeyError(f"{path}: unreadable ({e})") from None
    return {c["name"]: restore_transform(c["name"], c["transform"], arrays, classes) for c in todo}


def _tensor_index(t, inverse: bool, perms, sizes) -> np.ndarray:
    p = materialize_json(t, perms, sizes)
    return np.argsort(p) if inverse else p


class Keys:
    """What one re-key needs: classes as variables, old and new permutations and transforms."""

    def __init__(self, classes: ClassVars, old: dict, new: dict, told: dict, tnew: dict):
        self.classes, self.old, self.new, self.told, self.tnew = classes, old, new, told, tnew

    def exps(self, entry: dict) -> dict[str, int]:
        return {n: int(e) for n, e in entry.get("exp", {}).items() if e and n in self.told}

    def boundary_map(self, entry: dict, transforms: dict) -> np.ndarray | None:
        """A boundary map entry's vector or matrix under ``transforms``."""
        term = self.classes.term(entry["map"])
        of = lambda n, e: transforms[n].factor(e, entry["inverse"])  # noqa: E731
        return G.term_map(term, self.classes.factor(self.exps(entry), of))

    def refold(self, array: np.ndarray, entry: dict, rel: str, name: str) -> np.ndarray:
        """The tensor under the new key (see the module docstring)."""
        sizes = self.classes.sizes
        index = []
        for axis, term in enumerate(entry["fold"]):
            p_old, p_new = (materialize_json(term, perms, sizes) for perms in (self.old, self.new))
            if p_old.size != array.shape[axis]:
                raise RekeyError(f"{rel}: '{name}' axis {axis} has size {array.shape[axis]}, "
                                 f"the record says {p_old.size}")
            index.append((p_old, p_new))
        exp = self.exps(entry)
        terms = [self.classes.term(t) for t in entry["fold"]]  # names the pair sites too
        pairs = [(self.classes.site(p["site"]).uid, p["e"], p["of"]) for p in entry.get("pairs", [])]
        if not exp and not pairs:  # permutations only: the same values, moved
            fresh = array
            for axis, (p_old, p_new) in enumerate(index):
                if not np.array_equal(p_old, p_new):
                    fresh = np.take(fresh, np.argsort(p_old)[p_new], axis=axis)
            return fresh
        from eeonnx.compiler import pairs as P
        from eeonnx.compiler.passes.fold import transform

        fresh = array.astype(np.float64)
        for axis, (p_old, _) in enumerate(index):
            fresh = np.take(fresh, np.argsort(p_old), axis=axis)
        # the compile folded class maps, then pair maps: undo in reverse, redo in order
        for f, e, of in pairs:
            fresh = P.apply(fresh, terms, f, self.told[of].blocks(e, inverse=True), self.told[of].head)
        fresh = transform(fresh, terms, self.classes.factor(exp, lambda n, e: self.told[n].factor(e, True)))
        fresh = transform(fresh, terms, self.classes.factor(exp, lambda n, e: self.tnew[n].factor(e)))
        for f, e, of in pairs:
            fresh = P.apply(fresh, terms, f, self.tnew[of].blocks(e), self.tnew[of].head)
        for axis, (_, p_new) in enumerate(index):
            fresh = np.take(fresh, p_new, axis=axis)
        return fresh.astype(array.dtype)


def _rekey_file(path: str, entries: dict, keys: Keys, rel: str) -> onnx.ModelProto:
    old, new, sizes = keys.old, keys.new, keys.classes.sizes
    model = onnx.load(path)
    present = {t.name: t for t in model.graph.initializer}
    # a server in the original's structure (restructure.py) may hold a changed tensor as the
    # value of the Constant node that produces it
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for a in node.attribute:
                if a.name == "value" and node.output[0] not in present:
                    present[node.output[0]] = a.t
    for name, entry in entries.items():
        t = present.get(name)
        if t is None:
            raise RekeyError(f"{rel}: initializer '{name}' of the re-key record is missing (modified artifact?)")
        array = numpy_helper.to_array(t)
        if "index" in entry:
            want = _tensor_index(entry["index"], entry["inverse"], old, sizes)
            if array.shape != want.shape or not np.array_equal(array.astype(np.int64), want):
                raise RekeyError(f"{rel}: '{name}' does not match the re-key record (modified artifact?)")
            fresh = _tensor_index(entry["index"], entry["inverse"], new, sizes).astype(array.dtype)
        elif "map" in entry:
            want = keys.boundary_map(entry, keys.told)
            if want is None or want.size != array.size or not np.allclose(
                    array.astype(np.float64).reshape(want.shape), want, rtol=1e-5,
                    atol=1e-6 * float(np.abs(want).max())):
                raise RekeyError(f"{rel}: '{name}' does not match the re-key record (modified artifact?)")
            fresh = keys.boundary_map(entry, keys.tnew).reshape(array.shape).astype(array.dtype)
        else:
            fresh = keys.refold(array, entry, rel, name)
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(fresh), t.name))
    return model


def rekey(out: str, out2: str, *, key: Key | None = None, force: bool = False) -> dict:
    """Re-key the artifact ``out`` into ``out2``; returns a summary (classes, tensors, fingerprints)."""
    from eeonnx.compiler.passes.emit import check_target

    out, out2 = os.fspath(out), os.fspath(out2)
    if os.path.abspath(out) == os.path.abspath(out2):
        raise RekeyError(f"{out2}: write the re-keyed artifact to a new directory (the old one stays valid)")
    check_target(out2, force)
    rec = load_record(out)
    with open(os.path.join(out, "client", "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    new_key = key or Key.generate()
    sizes = {c["name"]: c["size"] for c in rec["classes"]}
    old = {c["name"]: np.asarray(c["perm"], dtype=np.int64) for c in rec["classes"]}
    cv = ClassVars(sizes)
    told = load_transforms(out, rec, cv)
    names = {v.uid: n for n, v in cv.vars.items()}
    tnew, arrays = {}, {}
    new, classes = {}, []
    for c in rec["classes"]:
        label, p = _draw(new_key, c)
        new[c["name"]] = p
        entry = {**c, "label": label, "perm": [int(i) for i in p]}
        if c["name"] in told:
            tnew[c["name"]] = G.redraw(new_key, label, told[c["name"]])
            entry["transform"], a = transform_record(c["name"], tnew[c["name"]], names)
            arrays.update(a)
        classes.append(entry)
    pair_components = []
    for c in rec.get("pairs", []):
        label = c["label"].split("|rekey", 1)[0] + "|rekey"
        tnew[c["name"]] = G.redraw(new_key, label, told[c["name"]])
        meta, a = transform_record(c["name"], tnew[c["name"]], names)
        pair_components.append({**c, "label": label, "transform": meta})
        arrays.update(a)
    keys = Keys(cv, old, new, told, tnew)

    parent = os.path.dirname(os.path.abspath(out2)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".eeonnx-rekey-", dir=parent)
    try:
        shutil.copytree(out, os.path.join(tmp, "a"), ignore=shutil.ignore_patterns("budget.json", "*.lock"))
        root = os.path.join(tmp, "a")
        artifact_id = secrets.token_hex(16)
        tensors = 0
        for rel, entries in rec["files"].items():
            path = os.path.join(out, rel)
            model = _rekey_file(path, entries, keys, rel)
            tensors += len(entries)
            if rel == SERVER:
                for prop in model.metadata_props:
                    if prop.key == "eeonnx.artifact_id":
                        prop.value = artifact_id
                external = os.path.exists(os.path.join(out, "server", "model.onnx.data"))
                dst = os.path.join(root, rel)
                if external:
                    os.remove(os.path.join(root, "server", "model.onnx.data"))
                onnx.save(model, dst, save_as_external_data=external, location="model.onnx.data")
            else:
                _save_private(model, os.path.join(root, rel))
        tok = os.path.join(out, "client", "tokenizer.json")
        if os.path.exists(tok):
            _rekey_tokenizer(tok, os.path.join(root, "client", "tokenizer.json"), rec, manifest, old, new, sizes)
        write_key(new_key, os.path.join(root, "client", "key.json"))
        _write_json(os.path.join(root, "client", RECORD), {**rec, "classes": classes,
                                                           **({"pairs": pair_components} if pair_components else {})})
        if arrays:
            _write_arrays(os.path.join(root, "client", ARRAYS), arrays)
        from eeonnx.compiler.pipeline import _sha256

        manifest["key_fingerprint"] = new_key.fingerprint()
        manifest["server"]["sha256"] = _sha256(os.path.join(root, SERVER))
        if "artifact_id" in manifest:
            manifest["artifact_id"] = artifact_id
        manifest["rekeyed_from"] = rec_fingerprint = _old_fingerprint(out)
        _write_json(os.path.join(root, "client", "manifest.json"), manifest)
        move_into_place(root, out2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"classes": len(classes), "tensors": tensors, "old_key": rec_fingerprint,
            "new_key": new_key.fingerprint(), "out": out2}


def _old_fingerprint(out: str) -> str:
    return Key.load(os.path.join(out, "client", "key.json")).fingerprint()


def _save_private(model: onnx.ModelProto, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(model.SerializeToString())
    os.chmod(path, 0o600)


def _rekey_tokenizer(src: str, dst: str, rec: dict, manifest: dict, old, new, sizes) -> None:
    """Encrypted tokenizer ids e_old = m_old[plain] become m_new[plain] = m_new[argsort(m_old)][e_old]."""
    from eeonnx.compiler.tokenizer import encrypt_tokenizer_json

    maps = [e for e in rec["files"][ENCODE].values() if "index" in e and e["inverse"]]
    if not maps:
        raise RekeyError("client/tokenizer.json exists but no id map is in the re-key record")
    m_old = _tensor_index(maps[0]["index"], True, old, sizes)
    m_new = _tensor_index(maps[0]["index"], True, new, sizes)
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    encrypted, _ = encrypt_tokenizer_json(data, m_new[np.argsort(m_old)], source=src)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(encrypted, f, ensure_ascii=False)
