"""load: read an ONNX model into onnx_ir, external data memory-mapped.

Invariant: on success the result is an ir.Model whose initializers are lazy
(nothing is copied into memory until a pass asks for a tensor's values);
``inline_small_external`` (run by the pipeline right after loading) reads
external-data tensors of at most ``SMALL_EXTERNAL_BYTES`` into memory: ONNX's
C shape inference and constant folding read small constants (Reshape
targets, Slice bounds) from the proto, where an external reference without
its base directory is unreadable; so an external-data model is analysed
exactly like the same model saved inline.
On failure an EEError says what is wrong with the file.
"""
from __future__ import annotations

import os

import onnx
import onnx_ir as ir

from eeonnx.errors import ModelLoadError

SMALL_EXTERNAL_BYTES = 4096  # above onnx_ir's 1000-byte limit for tensors kept in shape-inference protos


def load_model(model: str | os.PathLike | onnx.ModelProto | ir.Model) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        try:
            loaded = ir.serde.deserialize_model(model)
        except Exception as e:  # onnx_ir raises its own errors on invalid graphs
            raise ModelLoadError(f"<ModelProto>: not a valid ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
        return _nonempty(loaded, "<ModelProto>")
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if os.path.getsize(path) == 0:
        raise ModelLoadError(f"{path}: empty file, expected an ONNX model")
    try:
        loaded = ir.load(path)
    except Exception as e:  # protobuf gives many error types for garbage input
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:120]})") from None
    return _nonempty(loaded, path)


def _nonempty(model: ir.Model, where: str) -> ir.Model:
    if len(model.graph) == 0 and not model.graph.outputs:
        raise ModelLoadError(f"{where}: not an ONNX model (it parsed to an empty graph); "
                             "check that the file is a complete .onnx export")
    return model


def inline_small_external(model: ir.Model, limit: int = SMALL_EXTERNAL_BYTES) -> int:
    """Replace external-data initializers of at most ``limit`` bytes by in-memory
    copies (same name, dtype, shape and values); returns how many were replaced."""
    count = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= limit:
            value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
            count += 1
    return count
