"""Open Inference Protocol v2 (KServe v2 / Triton HTTP) tensors <-> numpy, both directions.

Shared by the serving app (``eeonnx.server.serve``) and the remote client
(``eeonnx.client.remote``); it knows nothing of keys or models.

A request or response body is a JSON document, optionally followed by raw
tensor bytes (the *binary tensor data extension*): then the HTTP header
``Inference-Header-Content-Length`` gives the JSON part's length, each binary
tensor carries ``"parameters": {"binary_data_size": N}`` instead of
``"data"``, and the blobs follow the JSON in the order of the tensors that
have one, little-endian, row-major.

Invariants: ``decode_*(encode_*(x)) == x`` bit for bit for every supported
dtype, in JSON and binary form; anything malformed raises
:class:`ProtocolError` (a ValueError) with a message fit for a 400 reply,
never a partial result.
"""
from __future__ import annotations

import json
import math

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
"""HTTP header: byte length of the JSON part when binary tensors follow it."""

# OIP datatype names <-> numpy dtypes (BYTES, i.e. strings, is not supported)
DATATYPES = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
_NAMES = {dt: name for name, dt in DATATYPES.items()}

# ONNX Runtime type strings -> OIP datatypes (model metadata)
ORT_DATATYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}


class ProtocolError(ValueError):
    """A body that does not follow the protocol (the server answers 400 with this message)."""


def datatype_of(array: np.ndarray) -> str:
    try:
        return _NAMES[np.dtype(array.dtype)]
    except KeyError:
        raise ProtocolError(f"dtype {array.dtype} has no Open Inference Protocol datatype") from None


def dtype_of(datatype: str) -> np.dtype:
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise ProtocolError(f"unsupported datatype {datatype!r}; supported: {', '.join(DATATYPES)}") from None


# --------------------------------------------------------------------------- one tensor
def tensor_json(name: str, array: np.ndarray, binary: bool) -> tuple[dict, bytes | None]:
    """The JSON entry for one tensor and, in binary form, its blob."""
    array = np.asarray(array)
    entry = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array)}
    if binary:
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        entry["parameters"] = {"binary_data_size": len(blob)}
        return entry, blob
    entry["data"] = array.reshape(-1).tolist()
    return entry, None


def _shape(entry: dict, name: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ProtocolError(f"tensor '{name}': 'shape' must be a list of non-negative integers, got {shape!r}")
    return tuple(shape)


def tensor_from_json(entry, blobs: "_Blobs") -> tuple[str, np.ndarray]:
    """(name, array) from one JSON tensor entry; binary data is taken from ``blobs`` in order."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("each tensor must be an object with a string 'name'")
    name = entry["name"]
    shape = _shape(entry, name)
    dtype = dtype_of(entry.get("datatype"))
    count = math.prod(shape)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"tensor '{name}': 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in entry:
            raise ProtocolError(f"tensor '{name}': both 'data' and binary_data_size")
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(f"tensor '{name}': binary_data_size {size!r} does not match shape {list(shape)} "
                                f"of {entry['datatype']} ({count * dtype.itemsize} bytes)")
        blob = blobs.take(size, name)
        return name, np.frombuffer(blob, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(shape)
    if "data" not in entry:
        raise ProtocolError(f"tensor '{name}': no 'data' and no binary_data_size")
    try:
        array = _numbers(entry["data"], dtype, entry["datatype"])
    except (ValueError, TypeError) as e:
        raise ProtocolError(f"tensor '{name}': 'data' must be a (nested) list of numbers: {e}") from None
    if array.size != count:
        raise ProtocolError(f"tensor '{name}': {array.size} values for shape {list(shape)} ({count} expected)")
    return name, array.reshape(shape)


def _numbers(data, dtype: np.dtype, datatype: str) -> np.ndarray:
    """JSON numbers -> a flat array of ``dtype``; integers must be integers and in range."""
    if dtype.kind in "iub":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(v, (int, bool)) for v in flat):
            raise ValueError(f"{datatype} takes integers")
        if dtype.kind in "iu" and flat.size:
            info = np.iinfo(dtype)
            if min(flat) < info.min or max(flat) > info.max:
                raise ValueError(f"values out of range for {datatype}")
        return np.array(flat.tolist(), dtype=dtype)
    flat = np.asarray(data)
    if flat.size == 0:
        return flat.astype(dtype).reshape(-1)
    if flat.dtype.kind not in "biuf":
        raise ValueError("not numbers")
    return flat.reshape(-1).astype(dtype)


class _Blobs:
    """The binary part of a body, consumed front to back."""

    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def take(self, size: int, name: str) -> bytes:
        if self.pos + size > len(self.data):
            raise ProtocolError(f"tensor '{name}': body ends before its {size} bytes of binary data")
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} bytes after the last binary tensor")


# --------------------------------------------------------------------------- whole bodies
def _split(body: bytes, header_length) -> tuple[dict, _Blobs]:
    if header_length is None:
        json_part, rest = body, b""
    else:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
        json_part, rest = body[:n], body[n:]
    try:
        doc = json.loads(bytes(json_part))
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the JSON body must be an object")
    return doc, _Blobs(memoryview(rest))


def _assemble(doc: dict, blobs: list[bytes]) -> tuple[bytes, dict]:
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def _tensors(doc: dict, key: str, blobs: _Blobs) -> dict[str, np.ndarray]:
    entries = doc.get(key)
    if not isinstance(entries, list):
        raise ProtocolError(f"'{key}' must be a list of tensors")
    out = {}
    for e in entries:
        name, array = tensor_from_json(e, blobs)
        if name in out:
            raise ProtocolError(f"tensor '{name}' appears twice")
        out[name] = array
    blobs.finish()
    return out


def _parameters(doc: dict) -> dict:
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    return params


def encode_request(feeds: dict, *, binary: bool = True, outputs=None, binary_outputs: bool = True,
                   request_id: str | None = None, parameters: dict | None = None) -> tuple[bytes, dict]:
    """An infer request body and its headers. ``outputs``: names to return (None: all)."""
    doc: dict = {}
    if request_id is not None:
        doc["id"] = request_id
    entries, blobs = [], []
    for name, value in feeds.items():
        entry, blob = tensor_json(name, value, binary)
        entries.append(entry)
        if blob is not None:
            blobs.append(blob)
    doc["inputs"] = entries
    params = dict(parameters or {})
    if outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_outputs}} for n in outputs]
    else:
        params["binary_data_output"] = binary_outputs
    if params:
        doc["parameters"] = params
    return _assemble(doc, blobs)


class Request:
    """A decoded infer request: ``inputs`` (name -> array), the requested ``outputs``
    (name -> wants binary; None = all, with ``binary_default``), ``id``, ``parameters``."""

    def __init__(self, body: bytes, header_length=None):
        doc, blobs = _split(body, header_length)
        self.id = doc.get("id")
        if self.id is not None and not isinstance(self.id, str):
            raise ProtocolError("'id' must be a string")
        self.parameters = _parameters(doc)
        self.inputs = _tensors(doc, "inputs", blobs)
        self.binary_default = bool(self.parameters.get("binary_data_output", False))
        self.outputs: dict[str, bool] | None = None
        if doc.get("outputs") is not None:
            if not isinstance(doc["outputs"], list):
                raise ProtocolError("'outputs' must be a list")
            self.outputs = {}
            for o in doc["outputs"]:
                if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                    raise ProtocolError("each requested output must be an object with a string 'name'")
                p = o.get("parameters") or {}
                if not isinstance(p, dict):
                    raise ProtocolError(f"output '{o['name']}': 'parameters' must be an object")
                self.outputs[o["name"]] = bool(p.get("binary_data", self.binary_default))


def decode_request(body: bytes, header_length=None) -> Request:
    return Request(body, header_length)


def encode_response(model_name: str, outputs: dict, *, binary=False, request_id: str | None = None,
                    parameters: dict | None = None) -> tuple[bytes, dict]:
    """An infer response body and headers. ``binary``: a bool for all outputs, or name -> bool."""
    doc: dict = {"model_name": model_name, "model_version": "1"}
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    entries, blobs = [], []
    for name, value in outputs.items():
        as_binary = binary.get(name, False) if isinstance(binary, dict) else bool(binary)
        entry, blob = tensor_json(name, value, as_binary)
        entries.append(entry)
        if blob is not None:
            blobs.append(blob)
    doc["outputs"] = entries
    return _assemble(doc, blobs)


class Response:
    """A decoded infer response: ``outputs`` (name -> array), ``model_name``, ``id``, ``parameters``."""

    def __init__(self, body: bytes, header_length=None):
        doc, blobs = _split(body, header_length)
        if "error" in doc and "outputs" not in doc:
            raise ProtocolError(str(doc["error"]))
        self.model_name = doc.get("model_name")
        self.id = doc.get("id")
        self.parameters = _parameters(doc)
        self.outputs = _tensors(doc, "outputs", blobs)


def decode_response(body: bytes, header_length=None) -> Response:
    """The decoded response; an error body (``{"error": ...}``) raises ProtocolError with its message."""
    return Response(body, header_length)
