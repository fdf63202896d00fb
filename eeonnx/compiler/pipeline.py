"""The compile pipeline: one Compilation carries the model and every analysis result.

    load -> normalize -> check -> propagate -> tie -> keygen -> state -> transforms -> split -> fold -> boundary -> emit

``analyze()`` runs up to transforms (what ``eeonnx check`` shows, nothing written);
``compile()`` runs everything and writes the artifact directory atomically.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from eeonnx import __version__
from eeonnx.compiler import layout as L
from eeonnx.errors import KeyReuseWarning, StrictPinError, UnsupportedOpError
from eeonnx.compiler.keys import Key
from eeonnx.compiler import digest, pairs, structured
from eeonnx.compiler.passes import (boundary, check, emit, fold, keygen, load, normalize, propagate, split, state,
                                    restructure, tie, transforms)


@dataclass
class Compilation:
    model: ir.Model
    key: Key
    source: str = "<memory>"
    allow_clear: tuple[str, ...] = ()
    had_external_data: bool = False
    original_infos: dict = field(default_factory=dict)
    original_nodes: int = 0
    unsupported: list = field(default_factory=list)
    analysis: propagate.Analysis | None = None
    classes: dict = field(default_factory=dict)
    state: list = field(default_factory=list)
    client_state: list = field(default_factory=list)
    split: split.SplitPlan | None = None
    server_proto: onnx.ModelProto | None = None
    server_model: ir.Model | None = None  # the server in the original's structure (restructure.py)
    structure_note: str = ""  # why the server keeps the normalized structure, if it does
    tokenizer: dict | None = None
    losses: list = field(default_factory=list)
    perms: dict = field(default_factory=dict)
    weight_bytes: int = 0
    permuted_bytes: int = 0
    not_rekeyable: str = ""  # set by fold: why `eeonnx rekey` cannot re-fold this artifact
    weight_index: dict = field(default_factory=dict)  # initializer -> per-axis index arrays
    transforms: dict = field(default_factory=dict)  # uid -> groups.Transform (classes above permutations)
    exponents: dict = field(default_factory=dict)  # (value, uid) -> +1/-1 (see groups)
    group_bytes: dict = field(default_factory=dict)  # group name -> weight bytes under it
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    encode_model: onnx.ModelProto | None = None
    decode_model: onnx.ModelProto | None = None
    placement: dict | None = None  # compile --max-leak: the measured cut (eeonnx.compiler.plan)
    model_digest: str = ""  # content digest of the source model (compiler.digest), binds the permutations
    ties: list = field(default_factory=list)  # identical initializers whose classes were unified
    exposed: list = field(default_factory=list)  # classes a public-looking constant gives away: kept identity
    artifact_id: str = field(default_factory=lambda: secrets.token_hex(16))  # random, new per compile
    out: str = ""  # the artifact directory compile wrote
    keep_names: bool = False  # --keep-names: the server model keeps the original names (debugging)
    server_names: dict = field(default_factory=dict)  # original value name -> server name (emit: anonymize)

    # -- views -----------------------------------------------------------------
    def show(self, t: L.Term) -> str:
        t = L.resolve(t)
        names = {uid: c.name for uid, c in self.classes.items()}
        # unanchored variables are the identity: show them as public
        for v in L.free_vars(t):
            if v.uid not in names:
                t = _publicize(t, names)
                break
        return L.show(t, names)

    def spec(self) -> dict[str, list[str]]:
        """initializer -> layout per axis (the PermutationSpec)."""
        out = {}
        inits = dict(propagate.all_initializers(self.model))  # subgraphs' too
        for name in sorted(inits):
            value = inits[name]
            if value in self.analysis.uniform_shared:
                out[name] = ["uniform"] * len(value.const_value.shape)
                continue
            view = self.analysis.storage.get(value)
            if view is not None:  # packed weights: the logical axes, packing noted
                out[name] = view.describe(self.show)
                continue
            terms = self.analysis.known(value)
            out[name] = [self.show(t) for t in terms] if terms is not None else ["?"]
        return out

    @property
    def key_bits(self) -> float:
        return sum(c.bits for c in self.classes.values())

    def _server_io(self, kind: str) -> list[str]:
        """Non-state server inputs/outputs in order (what encode feeds / decode reads)."""
        state = {n for s in self.state for n in (s.input, s.output)}
        if self.server_proto is not None:
            g = self.server_proto.graph
            values = [v.name for v in (g.input if kind == "input" else g.output)]
        else:
            g = self.model.graph
            values = [v.name for v in (g.inputs if kind == "input" else g.outputs)]
        return [self.server_name(n) for n in values if n not in state]

    def server_name(self, name: str) -> str:
        """The server model's name for an original value name (graph I/O, state, initializer):
        the opaque name emit gave it, or the name itself under ``keep_names``."""
        return self.server_names.get(name, name)

    def server_state(self) -> list[dict]:
        """State pairs in the server's names: what server/model.onnx carries as ``eeonnx.state``."""
        return [{"input": self.server_name(s.input), "output": self.server_name(s.output), "axis": s.axis,
                 "dtype": s.dtype, "shape": s.shape, "empty_shape": s.empty_shape()} for s in self.state]

    def group_shares(self) -> dict[str, float]:
        """Share of weight bytes under each group (strongest transform on the tensor;
        "clear": unchanged)."""
        if not self.weight_bytes:
            return {}
        out = {g: round(b / self.weight_bytes, 4) for g, b in sorted(self.group_bytes.items())}
        out["clear"] = round(1 - self.permuted_bytes / self.weight_bytes, 4)
        return out

    def pins(self) -> list[dict]:
        """Weight axes pinned to the identity by some node, one entry per (node, reason)."""
        merged: dict[tuple, dict] = {}
        for info, size, where in self.losses:
            e = merged.setdefault((info.node, info.reason), {
                "node": info.node, "op_type": info.op_type, "reason": info.reason, "axes": []})
            e["axes"].append(f"{where} ({size})")
        return list(merged.values())

    def manifest(self, server_path: str) -> dict:
        def crossing(c):
            return {"name": c.name, "wire_name": self.server_name(c.wire_name), "dtype": c.dtype, "shape": c.shape,
                    "layout": c.layout, "secret_axes": c.secret_axes, "clear": c.clear,
                    **({"value_layout": c.value_layout, "value_size": int(c.value_index.size)}
                       if c.value_index is not None else {}),
                    **({"clear_reason": c.reason} if c.clear else {})}

        return {
            "format": "eeonnx-artifact/1",
            "eeonnx_version": __version__,
            "artifact_id": self.artifact_id,
            "source": os.path.basename(self.source),
            "key_fingerprint": self.key.fingerprint(),
            "server": {"path": "server/model.onnx", "sha256": _sha256(server_path)},
            # original value name -> opaque server name (empty with --keep-names): the only copy
            "server_names": dict(self.server_names),
            "server_inputs": self._server_io("input"),
            "server_outputs": self._server_io("output"),
            "encode": {"inputs": [i.name for i in self.encode_model.graph.input],
                       "outputs": [o.name for o in self.encode_model.graph.output]},
            "decode": {"inputs": [i.name for i in self.decode_model.graph.input],
                       "outputs": [o.name for o in self.decode_model.graph.output]},
            "split": self.split.summary() if self.split is not None else None,
            "inputs": [crossing(c) for c in self.inputs],
            "outputs": [crossing(c) for c in self.outputs],
            "state": [{"input": s.input, "output": s.output,
                       "server_input": self.server_name(s.input), "server_output": self.server_name(s.output),
                       "axis": s.axis, "dtype": s.dtype, "shape": s.shape, "empty_shape": s.empty_shape()}
                      for s in self.state],
            # --client-state: the cache pairs (original names) that pass through encode/decode
            "client_state": [{"input": s.input, "output": s.output, "axis": s.axis, "dtype": s.dtype,
                              "shape": s.shape} for s in self.client_state],
            "classes": [{"name": c.name, "size": c.size, "bits": round(c.bits, 1), "group": c.group,
                         **({"permutation_visible_in": len(c.visible_in)} if c.visible_in else {})}
                        for c in self.classes.values()],
            "key_bits": round(self.key_bits, 1),  # same number, old name (kept for compatibility)
            # log2 of the number of permutations: not a security measure (see `eeonnx audit`)
            "permutation_entropy_bits": round(self.key_bits, 1),
            "coverage": {"weight_bytes": self.weight_bytes, "permuted_bytes": self.permuted_bytes,
                         "share": round(self.permuted_bytes / self.weight_bytes, 4) if self.weight_bytes else 0.0,
                         "groups": self.group_shares()},
            "pins": self.pins(),
            "exposed": self.exposed,
            # rotary pair maps (compiler/pairs.py): one entry per component
            "pairs": [{"size": i["size"], "group": pairs.PAIRS.name, "head": i.get("head"), "tensors": i["tensors"]}
                      for i in getattr(self, "pair_info", [])],
            "tied": self.ties,
            "nodes": {"original": self.original_nodes,
                      "server": len(self.server_proto.graph.node) if self.server_proto is not None
                      else len(self.server_model.graph) if self.server_model is not None
                      else len(self.model.graph)},
            # restructure.py: the server in the original graph's nodes (ORT fuses it alike), or why not
            "server_structure": {"structure": "original" if self.server_model is not None else "normalized",
                                 **({"reason": self.structure_note} if self.server_model is None else {})},
            "key_budget": self.key_budget(),
            "placement": self.placement,
        }

    def key_budget(self) -> dict | None:
        """Token budget of this key (eeonnx.client.budget), for the first input whose ids index
        a table of more than split.STRUCTURE_ROWS rows; None for models without token ids."""
        from eeonnx.client.budget import default_budget

        an = self.analysis
        for v in self.model.graph.inputs:
            if v.dtype is not None and not v.dtype.is_floating_point() and an.has_slot(v):
                term = an.slot(v).root().term
                if term is not None and term.size is not None and term.size > split.STRUCTURE_ROWS:
                    return {"input": v.name, **default_budget()}
        return None


def _publicize(t: L.Term, names: dict[int, str]) -> L.Term:
    t = L.resolve(t)
    if isinstance(t, L.Var):
        return t if t.uid in names else L.Public(t.size)
    if isinstance(t, L.Cat):
        return L.cat(*[_publicize(p, names) for p in t.parts])
    if isinstance(t, L.Kron):
        return L.kron(*[_publicize(f, names) for f in t.factors])
    return t


def _client_tokenizer(comp: Compilation, path: str) -> dict:
    """The tokenizer JSON with encrypted ids (validated now, written by emit)."""
    import json

    from eeonnx.compiler.tokenizer import TokenizerMapError, encrypt_tokenizer_json

    ids = [c for c in comp.inputs if c.value_index is not None]
    if not ids:
        raise TokenizerMapError("--tokenizer: no model input carries token ids (none indexes a permuted table)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise TokenizerMapError(f"--tokenizer {path}: cannot read it ({e})") from None
    encrypted, summary = encrypt_tokenizer_json(data, np.argsort(ids[0].value_index), source=path)
    if summary["ids_used"] < summary["embedding_rows"]:
        import warnings

        from eeonnx.errors import EEWarning

        warnings.warn(f"--tokenizer {path} produces {summary['ids_used']} distinct ids but the model's vocabulary "
                      f"has {summary['embedding_rows']} rows: {summary['embedding_rows'] - summary['ids_used']} "
                      "can never come from text (a padded vocabulary, or a tokenizer of another model?)",
                      EEWarning, stacklevel=2)
    return encrypted


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _uses_external_data(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def analyze(model, *, key: Key | None = None, dims=None, allow_clear=(), server_state=True,
            transforms_mode: str = "max", allow_rounding: bool = False) -> Compilation:
    """Load, normalize, check and solve layouts; derive permutations and (with
    ``transforms_mode="max"``) each class's largest exact group. Writes nothing."""
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<memory>"
    m = load.load_model(model)
    comp = Compilation(model=m, key=key or Key.generate(), source=source, allow_clear=tuple(allow_clear))
    comp.had_external_data = _uses_external_data(m)
    load.inline_small_external(m)  # shape inference sees it exactly as the inline model
    comp.model_digest = digest.model_digest(m)  # before normalize: --dim does not change it
    comp.original_nodes = len(m.graph)
    comp.original_infos = boundary.value_infos(m)
    normalize.NormalizePass(dims)(m)
    check.CheckPass(comp)(m)
    propagate.PropagatePass(comp)(m)
    tie.TiePass(comp)(m)
    keygen.KeygenPass(comp)(m)
    if server_state:
        state.StatePass(comp)(m)
    else:  # the same pairs, carried by the client through encode/decode (generate feeds them back)
        comp.client_state = state.find_state(m)
    transforms.TransformsPass(comp, transforms_mode, allow_rounding)(m)
    return comp


def compile_model(model, out: str, *, key=None, dims=None, strict=False, force=False,
                  allow_clear=(), split_mode="auto", min_key_bits=128.0, split_at=(), allow_weak=(),
                  tokenizer=None, server_state=True, progress=False, transforms_mode="max",
                  allow_rounding=False, max_leak=None, images=None, text=(), keep_names=False) -> Compilation:
    """Compile ``model`` into the artifact directory ``out``; see the module docstring.

    ``max_leak``: place the client split at the cheapest cut whose measured leakage
    (eeonnx.compiler.plan, on ``images`` / ``text`` or bundled samples) is at most this.
    ``keep_names``: the server model keeps the original names (debugging; tells the server
    which model it runs)."""
    emit.check_target(out, force)
    k = Key.load(key) if isinstance(key, (str, os.PathLike)) else key
    original = _pristine(model)
    comp = analyze(model, key=k, dims=dims, allow_clear=allow_clear, server_state=server_state,
                   transforms_mode=transforms_mode, allow_rounding=allow_rounding)
    comp.keep_names = keep_names
    if comp.key.record_model(comp.model_digest) and k is not None:
        warnings.warn(f"--key {key if isinstance(key, (str, os.PathLike)) else '(given)'} was used on other "
                      f"model(s) before: permutations are bound to each model, so they are unrelated, but "
                      f"one key for many models is one secret to lose; prefer a fresh key per model",
                      KeyReuseWarning, stacklevel=3)
    if comp.unsupported:
        node, why = comp.unsupported[0]
        more = f" (and {len(comp.unsupported) - 1} more; see `eeonnx check`)" if len(comp.unsupported) > 1 else ""
        raise UnsupportedOpError(node.name or "?", node.op_type, node.domain, why + more)
    if strict and comp.pins():
        p = comp.pins()[0]
        raise StrictPinError(f"--strict: node '{p['node']}' pins an axis: {p['reason']}")
    if max_leak is not None:
        from eeonnx.compiler import plan

        if split_mode != "auto":
            raise split.SplitError("--max-leak places the split itself: use it with --split auto")
        weak = tuple(allow_weak) + tuple(allow_clear)
        rows, cal = plan.measure(comp, min_key_bits, images=images, text=tuple(text),
                                 tokenizer=os.fspath(tokenizer) if tokenizer else None, allow_weak=weak)
        placement = plan.choose(comp, rows, max_leak, min_key_bits, weak)
        split_at = tuple(split_at) + tuple(placement.specs)
        comp.placement = placement.summary(cal)
    comp.split = split.plan_split(comp, comp.model, split_mode, min_key_bits, tuple(split_at),
                                  tuple(allow_weak) + tuple(allow_clear))
    split.drop_client_only_classes(comp, comp.model, comp.split)
    wires = comp.split.wire_in + comp.split.wire_out if comp.split else ()
    structured.settle_wires(comp, comp.model, wires)
    pairs.settle_wires(comp, comp.model, wires)
    before = {name: id(v.const_value) for name, v in comp.model.graph.initializers.items()}
    fold.FoldPass(comp)(comp.model)
    changed = [name for name, v in comp.model.graph.initializers.items() if id(v.const_value) != before.get(name)]
    boundary.BoundaryPass(comp)(comp.model)
    if tokenizer is not None:
        comp.tokenizer = _client_tokenizer(comp, os.fspath(tokenizer))
    if original is not None:
        comp.server_model, comp.structure_note = restructure.original_server(comp, original, changed)
    else:
        comp.structure_note = "an in-memory ir.Model (no pristine copy)"
    emit.emit(comp, out, force, progress=progress)
    comp.out = out
    return comp


def _pristine(model) -> ir.Model | None:
    """A second, untouched load of the original (lazy tensors: cheap), for restructure."""
    if isinstance(model, ir.Model):
        return None
    m = load.load_model(model)
    load.inline_small_external(m)
    return m
