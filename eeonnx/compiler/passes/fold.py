"""fold: transform every initializer along each axis by its class maps, then permute.

Invariant: afterwards, for every initializer W and axis a with index array
p_a, ``W_server = W.take(p_0, 0).take(p_1, 1)...``; where classes carry a
continuous transform (``comp.transforms``, exponents ``comp.exponents``),
W is first multiplied along each axis by the maps ``groups.apply_axis``
gives, computed in float64 and cast to W's dtype once; a norm gain moved
into its consumers (``comp.prefold``, rules/norm_groups.GainFold: gain ->
ones, bias / gain, consumer weight rows * gain) is applied to the plain
float64 values before those maps. No node is added,
removed or changed. Transformed tensors are lazy: the original (possibly
memory-mapped external data) is read when the model is saved, one tensor
at a time. Fills ``comp.weight_bytes``, ``comp.permuted_bytes`` and
``comp.group_bytes`` (group name -> bytes of initializers whose strongest
transform is that group; "permutation" = permuted only).

An initializer with a storage view (packed sub-byte weights, see
compiler/storage.py) is permuted on its logical axes and repacked instead:
``logical(W_server) = logical(W).take(p_0, 0)...``; the ops that read such
weights have no group statement, so their classes are permutations only.
Initializers of subgraphs (If/Loop/Scan bodies) are folded like the others.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler import storage as S
from eeonnx.compiler import pairs as P
from eeonnx.compiler import structured
from eeonnx.compiler.passes.propagate import all_initializers
from eeonnx.compiler.rules.norm_groups import apply_prefold


def axis_perms(terms: list[L.Term], perms: dict[int, np.ndarray]) -> list[np.ndarray | None]:
    """Index array per axis, None where the axis is the identity."""
    out = []
    for t in terms:
        t = L.resolve(t)
        if isinstance(t, L.Public):
            out.append(None)
            continue
        p = L.materialize(t, perms)
        out.append(None if np.array_equal(p, np.arange(p.size)) else p)
    return out


def transform(array: np.ndarray, terms: list[L.Term], factor) -> np.ndarray:
    """``array`` (float64, plain indices) under the continuous maps ``factor(var)`` gives
    for its layout ``terms``: each axis's maps (``groups.apply_axis``), then maps that
    span axes (per-head blocks, ``structured.apply``). All of them commute, so the same
    call with the inverse factors undoes it; ``eeonnx rekey`` re-folds with exactly this
    function (old inverse, then new), so a group folded here is re-keyed alike."""
    for axis, t in enumerate(terms):
        array = G.apply_axis(array, axis, t, factor)
    return structured.apply(array, terms, factor)  # per-head blocks across axes


def permuted(tensor: ir.TensorProtocol, index: list[np.ndarray | None], terms=None, factor=None,
             prefold=None, post=None) -> ir.TensorProtocol:
    """Lazy ``tensor`` permuted by ``index``; with ``factor``, first transformed
    along each axis, with ``prefold`` (a moved gain's ops, rules/norm_groups)
    rewritten before that and ``post`` (array -> array: pair maps, compiler/pairs)
    after it (float64, one cast at the end)."""

    def load() -> ir.TensorProtocol:
        array = tensor.numpy()
        if factor is not None or prefold or post is not None:
            dtype = array.dtype
            array = array.astype(np.float64)
            if prefold:
                array = apply_prefold(array, prefold)
            if factor is not None:
                array = transform(array, terms, factor)
            if post is not None:
                array = post(array)
            array = array.astype(dtype)
        for axis, p in enumerate(index):
            if p is not None:
                array = np.take(array, p, axis=axis)
        return ir.Tensor(np.ascontiguousarray(array), dtype=tensor.dtype, name=tensor.name)

    return ir.LazyTensor(load, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)


def repacked(tensor: ir.TensorProtocol, view: S.StorageView, index: list[np.ndarray | None]) -> ir.TensorProtocol:
    """Lazy storage-level transform: unpack, permute the logical axes, pack back."""
    def load() -> ir.TensorProtocol:
        array = S.apply(tensor.numpy(), view, index)
        return ir.Tensor(np.ascontiguousarray(array), dtype=tensor.dtype, name=tensor.name)

    return ir.LazyTensor(load, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)


class FoldPass(ir.passes.InPlacePass):
    def __init__(self, comp):
        super().__init__()
        self.comp = comp

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        an, perms = self.comp.analysis, self.comp.perms
        total = moved = 0
        self.comp.weight_index = {}
        self.comp.group_bytes = {}
        self.comp.not_rekeyable = ""
        top = set(model.graph.initializers)
        for name, value in all_initializers(model):
            tensor = value.const_value
            if tensor is None:
                continue
            total += tensor.nbytes
            view = an.storage.get(value)
            if view is not None:
                index = axis_perms(view.terms, perms)
                if any(p is not None for p in index):
                    self.comp.not_rekeyable = f"'{name}' is a packed weight, repacked at compile time"
                    moved += tensor.nbytes
                    self.comp.group_bytes[G.PERMUTATION.name] = \
                        self.comp.group_bytes.get(G.PERMUTATION.name, 0) + tensor.nbytes
                    value.const_value = repacked(tensor, view, index)
                continue
            terms = an.known(value) if value not in an.uniform_shared else None
            if terms is None:
                continue  # unknown shape, or uniform: no permutation changes it
            index = axis_perms(terms, perms)
            group = strongest(self.comp, value, terms)
            prefold = getattr(self.comp, "prefold", {}).get(value)
            has_pairs = bool(P.value_maps(self.comp, value))
            if has_pairs and (group is None or group.rank < P.PAIRS.rank):
                group = P.PAIRS
            if all(p is None for p in index) and group is None and not prefold:
                continue
            if name in top:
                self.comp.weight_index[name] = index
            else:
                self.comp.not_rekeyable = f"'{name}' lives in a subgraph"
            moved += tensor.nbytes
            name_of = (group or G.PERMUTATION).name
            self.comp.group_bytes[name_of] = self.comp.group_bytes.get(name_of, 0) + tensor.nbytes
            factor = G.value_factor(self.comp, value) if group is not None else None
            post = None
            if has_pairs:
                post = (lambda v, t: (lambda a: P.transform(self.comp, v, a, t)))(value, terms)
            value.const_value = permuted(tensor, index, terms, factor, prefold, post)
        self.comp.weight_bytes, self.comp.permuted_bytes = total, moved
        return ir.passes.PassResult(model, modified=bool(moved))


def strongest(comp, value, terms) -> G.Group | None:
    """The largest group among the continuous transforms applied to ``value``, or None."""
    out = None
    factor = G.value_factor(comp, value)
    for t in terms:
        for v in L.free_vars(t):
            if factor(v) is not None:
                g = comp.transforms[v.uid].group
                out = g if out is None or g.rank > out.rank else out
    return out
