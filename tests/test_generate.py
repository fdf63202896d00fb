"""Encrypted generation (eeonnx.Client.generate, ``eeonnx generate``) on the transformer fixtures:
the server keeps its KV cache (state pairs read from the graph, listed in manifest.json), and
the tokens equal those of a plain loop on the ORIGINAL model in ONNX Runtime. No torch needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.cli import main as cli_main
from eeonnx.client.generate import sample

FIXTURES = Path(__file__).resolve().parents[1] / "models" / "fixtures"
CPU = ["CPUExecutionProvider"]
VOCAB = 320
KV_MODELS = {"llama_kv.ts.onnx": 2, "gpt2_kv.dynamo.onnx": 4}  # file -> KV heads
PLAIN_MODELS = ["llama.dynamo.onnx", "gpt2.dynamo.onnx"]  # no state: the prefix is recomputed
PROMPT = [5, 17, 42, 99]
N_NEW = 12


# --------------------------------------------------------------------------- the plain reference
class Plain:
    """The original model in ONNX Runtime, fed the Hugging Face way (mask ones, positions arange)."""

    def __init__(self, name: str):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(FIXTURES / name), so, providers=CPU)
        self.inputs = {i.name: i.shape for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.past = [n for n in self.inputs if n.startswith("past_key_values")]

    def step(self, new: list[int], past_len: int, cache: dict | None = None):
        """Logits [1, len(new), V] and the present.* outputs; ``cache`` maps past_* -> array
        (None: an empty cache)."""
        n = len(new)
        feeds = {"input_ids": np.array([new], np.int64),
                 "attention_mask": np.ones((1, past_len + n), np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
        for p in self.past:
            shape = self.inputs[p]
            feeds[p] = cache[p] if cache else np.zeros((1, shape[1], 0, shape[3]), np.float32)
        res = dict(zip(self.outputs, self.sess.run(None, feeds)))
        present = {p: res[p.replace("past_key_values", "present")] for p in self.past}
        return res["logits"], present

    def greedy_recompute(self, prompt, n, choose=None):
        """Every step runs the whole prefix with an empty cache."""
        choose = choose or (lambda logits: int(np.argmax(logits)))
        ids, out = list(prompt), []
        for _ in range(n):
            logits, _ = self.step(ids, 0)
            tok = choose(logits[0, -1])
            out.append(tok)
            ids.append(tok)
        return out

    def greedy_kv(self, prompt, n):
        """Prefill once, then one token per step with the cache the model returned."""
        logits, cache = self.step(list(prompt), 0)
        past, out = len(prompt), []
        for _ in range(n):
            tok = int(np.argmax(logits[0, -1]))
            out.append(tok)
            logits, cache = self.step([tok], past, cache)
            past += 1
        return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    cache = {}

    def get(name: str) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp(name.replace(".", "_")) / "out"
            eeonnx.compile(FIXTURES / name, out)
            cache[name] = out
        return cache[name]

    return get


def _pair(out: Path):
    return eeonnx.Client(out), eeonnx.Server(out / "server" / "model.onnx", providers=CPU)


# --------------------------------------------------------------------------- state in the manifest
@pytest.mark.parametrize("name", sorted(KV_MODELS))
def test_manifest_state_pairs(artifact, name):
    out = artifact(name)
    client, server = _pair(out)
    m = client.manifest
    kv_heads = KV_MODELS[name]
    want = [(f"past_key_values.{i}.{kv}", f"present.{i}.{kv}") for i in range(2) for kv in ("key", "value")]
    assert [(s["input"], s["output"]) for s in m["state"]] == want
    for s in m["state"]:
        assert s["axis"] == 2
        assert s["empty_shape"] == ["batch", kv_heads, 0, 16]
        assert s["dtype"] == "float"
        # state stays on the server: not in the client's encode/decode contract
        assert s["server_input"] not in m["server_inputs"] and s["server_output"] not in m["server_outputs"]
        assert s["server_input"] in server.input_names and s["server_output"] in server.output_names
        assert m["server_names"][s["input"]] == s["server_input"]  # opaque, the manifest maps it
    assert [k for k, v in m["server_names"].items() if v in m["server_outputs"]] == ["logits"]


@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_no_state_without_cache(artifact, name):
    assert eeonnx.Client(artifact(name)).manifest["state"] == []


# --------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("name", sorted(KV_MODELS) + PLAIN_MODELS)
def test_greedy_matches_plain(artifact, name):
    client, server = _pair(artifact(name))
    plain = Plain(name)
    want = plain.greedy_recompute(PROMPT, N_NEW)
    if plain.past:
        assert plain.greedy_kv(PROMPT, N_NEW) == want  # the reference agrees with itself
    got = list(client.generate(server, PROMPT, max_new_tokens=N_NEW))
    assert got == want
    assert all(0 <= t < VOCAB for t in want)
    if name.startswith("llama"):  # (random tied GPT-2 echoes its last token: logits ~ h . wte)
        assert len(set(want)) > 1


def test_generate_stops_at_eos(artifact):
    client, server = _pair(artifact("llama_kv.ts.onnx"))
    want = Plain("llama_kv.ts.onnx").greedy_recompute(PROMPT, N_NEW)
    eos = want[4]
    got = list(client.generate(server, PROMPT, max_new_tokens=N_NEW, eos_ids=[eos]))
    assert got == want[: want.index(eos) + 1]


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", ["llama_kv.ts.onnx", "gpt2.dynamo.onnx"])
def test_sampling_is_seeded(artifact, name):
    client, server = _pair(artifact(name))
    kw = dict(max_new_tokens=N_NEW, temperature=0.8, top_k=40)
    a = list(client.generate(server, PROMPT, seed=0, **kw))
    b = list(client.generate(server, PROMPT, seed=0, **kw))
    c = list(client.generate(server, PROMPT, seed=1, **kw))
    assert a == b
    assert a != c
    # the same draws on the plain model's logits give the same tokens
    rng = np.random.default_rng(0)
    want = Plain(name).greedy_recompute(PROMPT, N_NEW, choose=lambda lg: sample(lg, 0.8, 40, rng))
    assert a == want


# --------------------------------------------------------------------------- command line
def test_cli_generate(artifact):
    out = artifact("llama_kv.ts.onnx")
    want = Plain("llama_kv.ts.onnx").greedy_recompute([1, 2, 3], 5)
    res = CliRunner().invoke(cli_main, ["generate", str(out), "--prompt-ids", "1,2,3", "--max-new-tokens", "5",
                                        "--provider", "cpu"])
    assert res.exit_code == 0, res.output
    assert [int(t) for t in res.stdout.split()] == want


# --------------------------------------------------------------------------- text prompts (client tokenizer)
@pytest.fixture(scope="module")
def text_artifact(tmp_path_factory):
    """llama_kv compiled with the WordPiece fixture tokenizer (both have 320 ids)."""
    pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("llama_kv_tok") / "out"
    eeonnx.compile(FIXTURES / "llama_kv.ts.onnx", out, tokenizer=FIXTURES / "bert.tokenizer.json")
    return out


TEXT = "the quick brown fox"


def test_text_prompt_generate(text_artifact):
    tokenizers = pytest.importorskip("tokenizers")
    plain_tok = tokenizers.Tokenizer.from_file(str(FIXTURES / "bert.tokenizer.json"))
    client, server = _pair(text_artifact)
    view = client.plain_tokenizer()
    ids = plain_tok.encode(TEXT).ids
    assert view.encode(TEXT) == ids
    want = Plain("llama_kv.ts.onnx").greedy_recompute(ids, 8)
    assert list(client.generate(server, view.encode(TEXT), max_new_tokens=8)) == want
    assert view.decode(want) == plain_tok.decode(want)


def test_cli_text_prompt_prints_the_decoded_text(text_artifact):
    tokenizers = pytest.importorskip("tokenizers")
    plain_tok = tokenizers.Tokenizer.from_file(str(FIXTURES / "bert.tokenizer.json"))
    want = Plain("llama_kv.ts.onnx").greedy_recompute(plain_tok.encode(TEXT).ids, 8)
    res = CliRunner().invoke(cli_main, ["generate", str(text_artifact), "--prompt", TEXT, "--max-new-tokens", "8",
                                        "--provider", "cpu"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == plain_tok.decode(want).strip()


# --------------------------------------------------------------------------- verify on a stateful model
def test_cli_verify_kv_model(artifact):
    out = artifact("llama_kv.ts.onnx")
    res = CliRunner().invoke(cli_main, ["verify", str(FIXTURES / "llama_kv.ts.onnx"), str(out), "--trials", "1",
                                        "--dim", "past_sequence=0", "--dim", "total_sequence=2"])
    assert res.exception is None and res.exit_code == 0, res.output


def test_cli_verify_stateless_model(artifact):
    out = artifact("llama.dynamo.onnx")
    res = CliRunner().invoke(cli_main, ["verify", str(FIXTURES / "llama.dynamo.onnx"), str(out), "--trials", "1"])
    assert res.exit_code == 0, res.output
    assert "ok" in res.stdout
