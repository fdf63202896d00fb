"""Export the server half as a Triton Inference Server model repository.

``export(model_path, repo)`` writes ``repo/<name>/config.pbtxt`` and
``repo/<name>/1/model.onnx`` (plus the model's external data files, nothing
else): the onnxruntime backend, every non-state input and output with its
type and dims (-1 for symbolic ones), ``max_batch_size: 0`` (the model's own
batch axis is listed), and, for a model with server state, a
``sequence_batching`` block with one implicit state entry per KV pair (its
input/output names, type, dims, and a zero initial state with the cache
axis empty and the other symbolic dims 1: a batch of one sequence).

Invariant: the text parses as Triton's ``inference.ModelConfig``
(``tritonclient.grpc.model_config_pb2``) when tritonclient is installed;
``validate`` does that and is run before anything is written.
"""
from __future__ import annotations

import os
import shutil

from eeonnx.server.serve.catalog import CatalogError, read_entry

# OIP datatype -> Triton DataType enum name
TRITON_TYPES = {"BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
                "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64"}
# ONNX Runtime / ONNX type words used in eeonnx.state -> OIP datatype
_STATE_TYPES = {"float": "FP32", "float32": "FP32", "float16": "FP16", "double": "FP64", "float64": "FP64",
                "int64": "INT64", "int32": "INT32", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}


def _type(datatype: str, what: str) -> str:
    try:
        return TRITON_TYPES[datatype]
    except KeyError:
        raise CatalogError(f"{what}: datatype {datatype} has no Triton type") from None


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(shape) -> str:
    return "[ " + ", ".join(str(d if isinstance(d, int) and d >= 0 else -1) for d in shape) + " ]"


def _tensor(t: dict, what: str) -> str:
    name = t["name"]
    return f'  {{ name: {_q(name)} data_type: {_type(t["datatype"], f"{what} {name}")} dims: {_dims(t["shape"])} }}'


def config_text(entry, name: str, idle_us: int = 600_000_000) -> str:
    """config.pbtxt for one catalog entry."""
    lines = [f"name: {_q(name)}", 'backend: "onnxruntime"', "max_batch_size: 0",
             "input [", ",\n".join(_tensor(t, "input") for t in entry.inputs), "]",
             "output [", ",\n".join(_tensor(t, "output") for t in entry.outputs), "]"]
    if entry.state:
        states = []
        for s in entry.state:
            dt = _type(_STATE_TYPES.get(str(s.get("dtype", "float")).lower(), str(s.get("dtype"))),
                       f"state {s['input']}")
            dims = [d if isinstance(d, int) else -1 for d in s["shape"]]
            init = [0 if k == s["axis"] else (d if isinstance(d, int) else 1) for k, d in enumerate(s["shape"])]
            states.append(
                f'    {{ input_name: {_q(s["input"])} output_name: {_q(s["output"])} data_type: {dt} dims: {_dims(dims)}\n'
                f'      initial_state: {{ name: "empty" data_type: {dt} dims: {_dims(init)} zero_data: true }} }}')
        lines += ["sequence_batching {", f"  max_sequence_idle_microseconds: {idle_us}",
                  "  state [", ",\n".join(states), "  ]", "}"]
    return "\n".join(lines) + "\n"


def can_validate() -> bool:
    """Whether Triton's ModelConfig protobuf (tritonclient[grpc]) is installed."""
    try:
        from google.protobuf import text_format  # noqa: F401
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def validate(text: str):
    """Parse ``text`` as Triton's ModelConfig; returns the message, raises CatalogError if it does not parse.
    Returns None when tritonclient (the protobuf definitions) is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise CatalogError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from None


def _external_files(path: str) -> list[str]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    found = set()
    for t in list(m.graph.initializer):
        for kv in t.external_data:
            if kv.key == "location":
                found.add(kv.value)
    return sorted(found)


def server_model(artifact: str) -> str:
    """server/model.onnx from an artifact directory, a server/ directory or the model file."""
    for p in (artifact, os.path.join(artifact, "model.onnx"), os.path.join(artifact, "server", "model.onnx")):
        if os.path.isfile(p):
            return p
    raise CatalogError(f"{artifact}: no server model (expected ARTIFACT/server/model.onnx)")


def export(artifact: str, repo: str, name: str | None = None, force: bool = False) -> str:
    """Write the Triton model directory; returns its path. Nothing is written if validation fails."""
    path = server_model(artifact)
    entry = read_entry(path)
    name = name or f"eeonnx-{entry.artifact_id}"
    text = config_text(entry, name)
    validate(text)
    target = os.path.join(repo, name)
    if os.path.exists(target) and os.listdir(target) and not force:
        raise CatalogError(f"{target} exists and is not empty (use --force to replace it)")
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "1"))
    shutil.copyfile(path, os.path.join(tmp, "1", "model.onnx"))
    src = os.path.dirname(path)
    for rel in _external_files(path):
        dst = os.path.join(tmp, "1", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), dst)
    with open(os.path.join(tmp, "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(text)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
