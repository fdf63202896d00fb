"""The trusted half: encode inputs for the server, decode what it returns, generate."""
from __future__ import annotations

import json
import os

import numpy as np

from eeonnx.client.budget import TokenCounter
from eeonnx.errors import ArtifactDirError, ArtifactMismatchError, InputError, NotALanguageModelError
from eeonnx.server import runtime
from eeonnx.server.session import Server


class Client:
    """The trusted side: encode inputs for the server, decode what it returns."""

    def __init__(self, out_dir, providers=("CPUExecutionProvider",), allow_over_budget: bool = False):
        """``allow_over_budget``: encode past the key's hard token limit (see eeonnx.client.budget)."""
        client = os.path.join(os.fspath(out_dir), "client")
        self.out_dir = os.fspath(out_dir)
        check_artifact_dir(self.out_dir)
        with open(os.path.join(client, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self._enc = runtime.session(os.path.join(client, "encode.onnx"), list(providers))
        self._dec = runtime.session(os.path.join(client, "decode.onnx"), list(providers))
        self.input_names = [i.name for i in self._enc.get_inputs()]
        self.output_names = [o.name for o in self._dec.get_outputs()]
        self.server_inputs = self.manifest["server_inputs"]
        self.server_outputs = self.manifest["server_outputs"]
        self.allow_over_budget = allow_over_budget
        self.budget = TokenCounter(client, self.manifest.get("key_fingerprint", ""), self.manifest.get("key_budget"))
        self._declared = {i.name: (runtime.NP_TYPES.get(i.type), list(i.shape)) for i in self._enc.get_inputs()}

    @property
    def artifact_id(self) -> str | None:
        return self.manifest.get("artifact_id")

    def check_server(self, server) -> None:
        """Refuse a server whose model is not this client's compile (artifact ids differ).

        Works with anything that has an ``artifact_id`` (Server, RemoteServer); a
        client from before artifact ids (no id in the manifest) checks nothing."""
        want = self.artifact_id
        got = getattr(server, "artifact_id", None)
        if want is not None and got != want:
            raise ArtifactMismatchError(
                f"server model has artifact id {got or '(none)'} but the client in {self.out_dir} expects {want}: "
                f"they come from different compiles; use the server/model.onnx written with this client/")

    def state_pairs(self) -> list[dict]:
        """The manifest's state pairs in the server's names (what ``Server.initial_state`` takes)."""
        return [{**s, "input": s.get("server_input", s["input"]), "output": s.get("server_output", s["output"])}
                for s in self.manifest.get("state", [])]

    def encode(self, inputs: dict) -> dict:
        """Original inputs (by name) -> server inputs (by server input name)."""
        feeds = self.conform(inputs)
        budget = self.budget.budget
        if budget is not None and budget.get("input") in feeds:  # counted before anything is sent
            self.budget.charge(int(np.asarray(feeds[budget["input"]]).size), self.allow_over_budget)
        outs = self._enc.run(None, feeds)
        return dict(zip(self.server_inputs, outs))

    def conform(self, inputs: dict) -> dict:
        """The original inputs checked against encode.onnx's declared names, shapes
        and dtypes (lossless conversions applied, see eeonnx.client.inputs)."""
        from eeonnx.client.inputs import conform

        missing = [n for n in self.input_names if n not in inputs]
        unknown = sorted(set(inputs) - set(self.input_names))
        if missing or unknown:
            raise InputError(f"the model's inputs are {self.input_names}; missing {missing}, unknown {unknown}")
        out = {}
        for n in self.input_names:
            dtype, shape = self._declared[n]
            out[n] = conform(n, inputs[n], dtype, shape) if dtype is not None else np.asarray(inputs[n])
        return out

    def decode(self, outputs: dict) -> dict:
        """Server outputs (by server output name) -> original outputs (by name)."""
        feeds = {i.name: outputs[n] for i, n in zip(self._dec.get_inputs(), self.server_outputs)}
        return dict(zip(self.output_names, self._dec.run(None, feeds)))

    def infer(self, server: Server, inputs: dict) -> dict:
        """encode -> server.run -> decode (after checking the server's artifact id); a
        model with server-side state (a KV cache) runs one call from an empty cache
        (batch = dim 0 of the first input)."""
        self.check_server(server)
        encoded = self.encode(inputs)
        pairs = self.state_pairs()
        if not pairs:
            return self.decode(server.run(encoded))
        batch = next(iter(self.conform(inputs).values())).shape[0]
        outputs, _ = server.step(encoded, server.initial_state(pairs, batch=batch))
        return self.decode(outputs)

    # -- generation -------------------------------------------------------------
    def token_input(self) -> tuple[str, int]:
        """(token-id input, vocabulary size): the input whose values index a permuted table."""
        ids = [c for c in self.manifest["inputs"] if "value_size" in c]
        if not ids:
            raise NotALanguageModelError(
                f"{self.out_dir}: no input of this model carries token ids (none indexes a permuted table), "
                "so it cannot generate text; use `eeonnx run` for encoders, CNNs and other models")
        return ids[0]["name"], ids[0]["value_size"]

    def token_io(self) -> tuple[str, str, int]:
        """(token-id input, logits output, vocabulary size), read from the manifest:
        the input whose values index a table, the output whose last axis has its size."""
        name, vocab = self.token_input()
        logits = [c["name"] for c in self.manifest["outputs"] if c["shape"] and c["shape"][-1] == vocab]
        if not logits:
            raise NotALanguageModelError(
                f"{self.out_dir}: no output has a last axis of the vocabulary size {vocab} (no logits), "
                "so it cannot generate text; use `eeonnx run`")
        return name, logits[0], vocab

    def input_dtypes(self) -> dict:
        return {i.name: runtime.NP_TYPES[i.type] for i in self._enc.get_inputs()}

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


def check_artifact_dir(out_dir: str) -> None:
    """Refuse, in one line, a path that is not an artifact directory (OUT with
    client/ and server/), naming the right path when the user gave a part of one."""
    if os.path.isfile(os.path.join(out_dir, "client", "manifest.json")):
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    if os.path.isfile(os.path.join(out_dir, "manifest.json")) or os.path.isfile(os.path.join(out_dir, "model.onnx")):
        raise ArtifactDirError(f"{out_dir} is a part of an artifact; pass the artifact directory {parent} "
                               "(the one holding client/ and server/)")
    raise ArtifactDirError(f"{out_dir} is not an artifact directory (no client/manifest.json); "
                           "pass the -o directory of `eeonnx compile`")
