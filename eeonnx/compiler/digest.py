"""digest: a content digest of a model, weights included, read as a stream.

The digest binds every derived permutation to one model (keygen puts it in
each class label), so one key on two models, a fine-tune of a base or a
vocabulary grown by a few rows, gives unrelated permutations, while the same
key on the same model reproduces the same artifact.

What it covers: every node (op, domain, inputs, outputs, attributes, in graph
order), the graph's inputs and outputs (names, types), and every initializer
(name, dtype, shape and the bytes of its values). Values are hashed in
``CHUNK``-byte pieces straight from the tensor's buffer: an external-data
tensor is memory-mapped by onnx_ir, so a multi-GB model is read once and never
copied. Names are part of the model (a renamed model is another model).
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir

CHUNK = 1 << 24


def _tensor_bytes(h, tensor: ir.TensorProtocol) -> None:
    a = np.ascontiguousarray(tensor.numpy()).reshape(-1)
    flat = a.view(np.uint8) if a.size else np.zeros(0, np.uint8)
    for start in range(0, flat.size, CHUNK):
        h.update(flat[start:start + CHUNK])


def model_digest(model: ir.Model) -> str:
    """SHA-256 (hex) over the model's structure and every initializer's values."""
    h = hashlib.sha256(b"eeonnx-model/1\0")
    g = model.graph
    for v in list(g.inputs) + list(g.outputs):
        h.update(ir.serde.serialize_value(v).SerializeToString(deterministic=True))
    for node in g:
        h.update(ir.serde.serialize_node(node).SerializeToString(deterministic=True))
    for name, value in g.initializers.items():
        t = value.const_value
        h.update(f"\0init\0{name}\0".encode())
        if t is None:
            continue
        h.update(f"{t.dtype}\0{list(t.shape)}\0".encode())
        _tensor_bytes(h, t)
    return h.hexdigest()
