"""Python API: compile, check, and the client/server halves of encrypted inference."""
from __future__ import annotations

import json
import os

import numpy as np

from eeonnx.compiler import pipeline
from eeonnx.server import runtime


def compile(model, out, *, key=None, dims=None, strict=False, force=False, allow_clear=(),
            split="auto", min_key_bits=128.0, split_at=(), allow_weak=(), tokenizer=None,
            server_state=True, quiet=True) -> pipeline.Compilation:
    """Compile ``model`` (path or ModelProto) into the artifact directory ``out``.

    ``key``: path of a key.json to reuse (same key + same model = same artifact).
    ``dims``: {symbol: size} for symbolic dims the analysis needs fixed.
    ``split``: "auto" moves weak boundary layers to the client until every
    crossing content tensor has ``min_key_bits``; "none" keeps the boundary
    at the model's inputs/outputs (weak ones refused unless in ``allow_weak``);
    ``split_at``: tensor names to cut at by hand ("in:NAME" / "out:NAME").
    ``tokenizer``: a Hugging Face tokenizer.json; writes client/tokenizer.json
    whose ids are the encrypted ids.
    ``server_state=False`` treats past/present (KV cache) tensors as ordinary
    inputs/outputs that go through encode/decode (the client holds the cache).
    ``quiet=False`` shows progress while large weights are written.
    Raises eeonnx.errors.EEError subclasses on refusal.
    """
    return pipeline.compile_model(model, os.fspath(out), key=key, dims=dims, strict=strict,
                                  force=force, allow_clear=allow_clear, split_mode=split,
                                  min_key_bits=min_key_bits, split_at=split_at, allow_weak=allow_weak,
                                  tokenizer=tokenizer, server_state=server_state, progress=not quiet)


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

    # -- stateful serving (KV cache kept in the session's memory) ----------------
    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def initial_state(self, pairs: list[dict], batch: int = 1) -> dict:
        """Empty state tensors (cache axis of length 0) as ORT values on the device."""
        import onnxruntime as ort

        from eeonnx.client.verify import NP_TYPES

        types = {i.name: i.type for i in self.session.get_inputs()}
        state = {}
        for p in pairs:
            shape = [0 if k == p["axis"] else (d if isinstance(d, int) else batch)
                     for k, d in enumerate(p["shape"])]
            array = np.zeros(shape, dtype=NP_TYPES[types[p["input"]]])
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
        self.server_inputs = self.manifest["server_inputs"]
        self.server_outputs = self.manifest["server_outputs"]

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

    # -- generation -------------------------------------------------------------
    def token_input(self) -> tuple[str, int]:
        """(token-id input, vocabulary size): the input whose values index a permuted table."""
        ids = [c for c in self.manifest["inputs"] if "value_size" in c]
        if not ids:
            raise ValueError("this model has no token-id input (no input indexes a permuted table)")
        return ids[0]["name"], ids[0]["value_size"]

    def token_io(self) -> tuple[str, str, int]:
        """(token-id input, logits output, vocabulary size), read from the manifest:
        the input whose values index a table, the output whose last axis has its size."""
        name, vocab = self.token_input()
        logits = [c["name"] for c in self.manifest["outputs"] if c["shape"] and c["shape"][-1] == vocab]
        if not logits:
            raise ValueError(f"no output has a last axis of the vocabulary size {vocab}")
        return name, logits[0], vocab

    def input_dtypes(self) -> dict:
        from eeonnx.client.verify import NP_TYPES

        return {i.name: NP_TYPES[i.type] for i in self._enc.get_inputs()}

    def id_map(self) -> np.ndarray:
        """plain token id -> encrypted token id (what encode applies to the id input)."""
        import onnx
        from onnx import numpy_helper

        token_input = self.token_input()[0]
        k = self.input_names.index(token_input)
        enc = onnx.load(os.path.join(self.out_dir, "client", "encode.onnx"))
        for t in enc.graph.initializer:
            if t.name == f"encode{k}_value_map":
                return numpy_helper.to_array(t)
        raise ValueError(f"encode.onnx has no value map for '{token_input}'")

    def plain_tokenizer(self):
        """The client tokenizer (client/tokenizer.json, encrypted ids) wrapped to
        speak plain ids, so it composes with encode/decode and generate."""
        from eeonnx.client.tokenizer import PlainView

        return PlainView(os.path.join(self.out_dir, "client", "tokenizer.json"), self.id_map())

    def generate(self, server, prompt_ids, **kw):
        """Yield plain token ids; see eeonnx.client.generate.generate for the options."""
        from eeonnx.client.generate import generate

        return generate(self, server, prompt_ids, **kw)
