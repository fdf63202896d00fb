"""The untrusted half: an ONNX Runtime session on the server model.

Invariant: nothing here reads a key or a client file; the only inputs are the
server model and the tensors the client sends (see tests/test_trust_boundary.py).
What the server knows about its artifact (its id, its state pairs) comes from
the server model's own metadata: ``eeonnx.artifact_id`` and ``eeonnx.state``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from eeonnx.server import runtime


class Server:
    """The untrusted side: an ONNX Runtime session on the server model."""

    def __init__(self, path, providers=None):
        self.session = runtime.session(os.fspath(path), providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.artifact_id: str | None = meta.get("eeonnx.artifact_id")
        """The compile's random id (None for a model eeonnx did not write)."""
        self.state_pairs: list[dict] = json.loads(meta.get("eeonnx.state", "[]"))
        """Server-side state pairs in this model's names: input, output, axis, dtype, shape, empty_shape."""

    def run(self, feeds: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    # -- stateful serving (KV cache kept in the session's memory) ----------------
    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def initial_state(self, pairs: list[dict], batch: int = 1) -> dict:
        """Empty state tensors (cache axis of length 0) as ORT values on the device."""
        import onnxruntime as ort

        types = {i.name: i.type for i in self.session.get_inputs()}
        state = {}
        for p in pairs:
            shape = [0 if k == p["axis"] else (d if isinstance(d, int) else batch)
                     for k, d in enumerate(p["shape"])]
            array = np.zeros(shape, dtype=runtime.NP_TYPES[types[p["input"]]])
            state[p["input"]] = ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)
        self._state_out = {p["output"]: p["input"] for p in pairs}
        return state

    def step(self, feeds: dict, state: dict) -> tuple[dict, dict]:
        """One call with state: returns (outputs without state, next state).

        State travels as ORT values bound in place (I/O binding): on CUDA the
        cache never leaves the device, on CPU it is never copied into numpy."""
        if not state:
            return self.run(feeds), state
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in state.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device if name in self._state_out else "cpu")
        self.session.run_with_iobinding(binding)
        values = dict(zip(self.output_names, binding.get_outputs()))
        outputs = {n: v.numpy() for n, v in values.items() if n not in self._state_out}
        return outputs, {self._state_out[n]: v for n, v in values.items() if n in self._state_out}
