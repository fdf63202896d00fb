"""Python API: compile, check, and the client/server halves of encrypted inference."""
from __future__ import annotations

import json
import os

import numpy as np

from eeonnx import pipeline, runtime


def compile(model, out, *, key=None, dims=None, strict=False, force=False, allow_clear=(),
            quiet=True) -> pipeline.Compilation:
    """Compile ``model`` (path or ModelProto) into the artifact directory ``out``.

    ``key``: path of a key.json to reuse (same key + same model = same artifact).
    ``dims``: {symbol: size} for symbolic dims the analysis needs fixed.
    Raises eeonnx.errors.EEError subclasses on refusal.
    """
    del quiet
    return pipeline.compile_model(model, os.fspath(out), key=key, dims=dims, strict=strict,
                                  force=force, allow_clear=allow_clear)


def check(model, *, dims=None) -> pipeline.Compilation:
    """Analyse ``model`` without writing anything (``.spec()``, ``.pins()``, ``.unsupported``)."""
    return pipeline.analyze(model, dims=dims)


class Server:
    """The untrusted side: an ONNX Runtime session on the server model."""

    def __init__(self, path, providers=None):
        self.session = runtime.session(os.fspath(path), providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(None, feeds)))


class Client:
    """The trusted side: encode inputs for the server, decode what it returns."""

    def __init__(self, out_dir, providers=("CPUExecutionProvider",)):
        client = os.path.join(os.fspath(out_dir), "client")
        self.out_dir = os.fspath(out_dir)
        with open(os.path.join(client, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self._enc = runtime.session(os.path.join(client, "encode.onnx"), list(providers))
        self._dec = runtime.session(os.path.join(client, "decode.onnx"), list(providers))
        self.input_names = [i.name for i in self._enc.get_inputs()]
        self.output_names = [o.name for o in self._dec.get_outputs()]
        self.server_inputs = [c["wire_name"] for c in self.manifest["inputs"]]
        self.server_outputs = [c["wire_name"] for c in self.manifest["outputs"]]

    def encode(self, inputs: dict) -> dict:
        """Original inputs (by name) -> server inputs (by server input name)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        outs = self._enc.run(None, {n: np.asarray(inputs[n]) for n in self.input_names})
        return dict(zip(self.server_inputs, outs))

    def decode(self, outputs: dict) -> dict:
        """Server outputs (by server output name) -> original outputs (by name)."""
        feeds = {i.name: outputs[n] for i, n in zip(self._dec.get_inputs(), self.server_outputs)}
        return dict(zip(self.output_names, self._dec.run(None, feeds)))

    def infer(self, server: Server, inputs: dict) -> dict:
        """encode -> server.run -> decode."""
        return self.decode(server.run(self.encode(inputs)))
