"""What a server may serve: server models found in the given paths, by artifact id.

Each path is a server model file (``*.onnx``) or a directory of them (a
``server/`` directory, or a directory of such directories, searched
recursively). A model is addressed by the artifact id in its own metadata
(``metadata_props["eeonnx.artifact_id"]``); its server-side state pairs come
from ``metadata_props["eeonnx.state"]``. Nothing else is read.

Invariant: a directory that holds client files is refused as a whole, before
anything is served: a ``client`` directory anywhere below it, or any
``.json`` file (a server directory holds only ONNX models and their external
data; keys, manifests and tokenizers are JSON and belong on the client).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from eeonnx.errors import EEError


class CatalogError(EEError):
    """A path cannot be served (client files in it, no artifact id, duplicate ids, unreadable)."""


@dataclass
class Entry:
    """One servable model: its id, file, I/O (OIP datatypes, shapes with -1 for symbolic dims)
    without the state tensors, and its state pairs."""

    artifact_id: str
    path: str
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    state: list[dict] = field(default_factory=list)

    def metadata(self) -> dict:
        """The OIP model metadata reply (state tensors are the server's business and not listed)."""
        return {"name": self.artifact_id, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": self.inputs, "outputs": self.outputs,
                "parameters": {"eeonnx.state": json.dumps(self.state)}}


def _client_files(root: str) -> list[str]:
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        bad += [os.path.join(dirpath, d) for d in dirnames if d == "client"]
        bad += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(".json")]
    return sorted(bad)


def model_files(path: str) -> list[str]:
    """The .onnx files a path names; refuses directories with client files."""
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".onnx"):
            raise CatalogError(f"{path}: not an .onnx file")
        return [path]
    if not os.path.isdir(path):
        raise CatalogError(f"{path}: no such file or directory")
    bad = _client_files(path)
    if bad:
        raise CatalogError(
            f"{path}: refusing to serve a directory that holds client files ({bad[0]}"
            f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}): the client directory holds the key; "
            f"serve only the server/ directory (e.g. eeonnx serve out/server)")
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".onnx"))
    if not found:
        raise CatalogError(f"{path}: no .onnx model in this directory")
    return found


# ONNX element types (TensorProto.DataType values) -> OIP datatypes
_ONNX_DATATYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                   9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}


def _value_info(v) -> dict:
    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return {"name": v.name, "datatype": _ONNX_DATATYPES.get(t.elem_type, f"onnx:{t.elem_type}"), "shape": dims}


def read_entry(path: str) -> Entry:
    """The catalog entry of one server model (graph and metadata only; weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # any parse failure: not a model we can serve
        raise CatalogError(f"{path}: cannot read the model: {e}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    aid = meta.get("eeonnx.artifact_id")
    if not aid:
        raise CatalogError(f"{path}: no eeonnx.artifact_id in the model's metadata: not a server model written "
                           f"by eeonnx compile (recompile with this version)")
    try:
        state = json.loads(meta.get("eeonnx.state", "[]"))
    except ValueError:
        raise CatalogError(f"{path}: eeonnx.state metadata is not JSON") from None
    inits = {t.name for t in model.graph.initializer}
    state_in = {s["input"] for s in state}
    state_out = {s["output"] for s in state}
    inputs = [_value_info(v) for v in model.graph.input if v.name not in inits and v.name not in state_in]
    outputs = [_value_info(v) for v in model.graph.output if v.name not in state_out]
    return Entry(aid, os.path.abspath(path), inputs, outputs, state)


def scan(paths) -> dict[str, Entry]:
    """artifact id -> Entry for every model under ``paths``; refuses duplicates and client files."""
    files = [f for p in paths for f in model_files(p)]
    out: dict[str, Entry] = {}
    for f in files:
        e = read_entry(f)
        if e.artifact_id in out and out[e.artifact_id].path != e.path:
            raise CatalogError(f"{f}: artifact id {e.artifact_id} is also the id of {out[e.artifact_id].path}")
        out[e.artifact_id] = e
    return out
