"""fold: permute every initializer along each axis by its materialized layout.

Invariant: afterwards, for every initializer W and axis a with index array
p_a, ``W_server = W.take(p_0, 0).take(p_1, 1)...``; no node is added, removed
or changed. Permuted tensors are lazy: the original (possibly memory-mapped
external data) is read when the model is saved, one tensor at a time.
Fills ``comp.weight_bytes`` and ``comp.permuted_bytes``.
"""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from eeonnx.compiler import layout as L


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


def permuted(tensor: ir.TensorProtocol, index: list[np.ndarray | None]) -> ir.TensorProtocol:
    def load() -> ir.TensorProtocol:
        array = tensor.numpy()
        for axis, p in enumerate(index):
            if p is not None:
                array = np.take(array, p, axis=axis)
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
        for name, value in model.graph.initializers.items():
            tensor = value.const_value
            if tensor is None:
                continue
            total += tensor.nbytes
            terms = an.known(value) if value not in an.uniform_shared else None
            if terms is None:
                continue  # unknown shape, or uniform: no permutation changes it
            index = axis_perms(terms, perms)
            if all(p is None for p in index):
                continue
            self.comp.weight_index[name] = index
            moved += tensor.nbytes
            value.const_value = permuted(tensor, index)
        self.comp.weight_bytes, self.comp.permuted_bytes = total, moved
        return ir.passes.PassResult(model, modified=bool(moved))
