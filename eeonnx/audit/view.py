"""What an attacker holds: the server model (and public models), never client files.

:class:`ServerView` opens ``OUT/server/model.onnx`` and nothing else under OUT;
:func:`load_weights` reads the initializers (and Constant-node tensors) of any
public ONNX model the attacker is granted (``--original``, ``--base``).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from eeonnx.errors import EEError

FLOAT_TYPES = (np.float16, np.float32, np.float64)


def load_weights(model) -> dict[str, np.ndarray]:
    """name -> array for every initializer and Constant-node tensor of ``model``
    (a path or a ModelProto); external data is loaded next to the file."""
    if not isinstance(model, onnx.ModelProto):
        if not os.path.isfile(os.fspath(model)):
            raise AuditError(f"{model}: model file not found")
        try:
            model = onnx.load(os.fspath(model))
        except Exception as e:  # noqa: BLE001 - onnx raises several kinds
            raise AuditError(f"{model}: not an ONNX model ({type(e).__name__})") from None
    proto = model
    out = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t is not None:
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


class ServerView:
    """The untrusted server's knowledge: its model file. Reads ``server/`` only."""

    def __init__(self, out_dir):
        self.out_dir = os.fspath(out_dir)
        self.path = os.path.join(self.out_dir, "server", "model.onnx")
        if not os.path.exists(self.path):
            raise AuditError(f"{self.out_dir}: no server/model.onnx (not an eeonnx artifact directory)")
        self.proto = onnx.load(self.path)
        self.weights = load_weights(self.proto)
        self.inputs = [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in self.proto.graph.input
                       if i.name not in self.weights]
        self.outputs = [(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in self.proto.graph.output]
        self.metadata = {p.key: p.value for p in self.proto.metadata_props}

    def float_weights(self, min_size: int = 2) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.weights.items()
                if v.dtype.type in FLOAT_TYPES and v.size >= min_size}


def _dims(v) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim]


class AuditError(EEError):
    """The audit cannot run on these inputs (not an artifact, a missing model or text)."""
