"""Artifact ids: every compile stamps a random id into the server model's metadata and the
manifest; a client refuses a server model of another compile with one clear line (exit 2 in
the CLI) instead of decoding garbage. The server reads its id and state pairs from its own
model file only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.cli import main
from eeonnx.errors import ArtifactMismatchError
from helpers import G, compile_plain

FIXTURES = Path(__file__).resolve().parents[1] / "models" / "fixtures"
CPU = ["CPUExecutionProvider"]


def small_model():
    g = G(seed=3)
    g.input("x", [1, 8])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("fc1.w", [8, 16])])])
    g.node("MatMul", [h, g.w("fc2.w", [16, 8])], "y")
    g.output("y")
    return g.build()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two compiles of the same model under different keys."""
    root = tmp_path_factory.mktemp("ids")
    src = root / "model.onnx"
    onnx.save(small_model(), src)
    compile_plain(src, root / "a")
    compile_plain(src, root / "b")
    return src, root / "a", root / "b"


def _props(path) -> dict:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_server_model_carries_only_the_id_and_the_state(pair):
    _, a, b = pair
    props = _props(a / "server" / "model.onnx")
    assert set(props) == {"eeonnx.artifact_id", "eeonnx.state"}
    ident = props["eeonnx.artifact_id"]
    assert len(ident) == 32 and int(ident, 16) >= 0  # 128 bits, hex
    assert json.loads(props["eeonnx.state"]) == []
    manifest = json.loads((a / "client" / "manifest.json").read_text())
    assert manifest["artifact_id"] == ident
    assert _props(b / "server" / "model.onnx")["eeonnx.artifact_id"] != ident  # new per compile
    m = onnx.load(a / "server" / "model.onnx")
    assert not m.producer_name and not m.producer_version and not m.doc_string and not m.graph.doc_string


def test_server_exposes_id_and_state_from_its_model(pair):
    _, a, _ = pair
    server = eeonnx.Server(a / "server" / "model.onnx", providers=CPU)
    assert server.artifact_id == _props(a / "server" / "model.onnx")["eeonnx.artifact_id"]
    assert server.state_pairs == []


def test_state_pairs_in_metadata_name_the_servers_tensors(tmp_path):
    out = tmp_path / "kv"
    compile_plain(FIXTURES / "llama_kv.ts.onnx", out)
    server = eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    manifest = json.loads((out / "client" / "manifest.json").read_text())
    assert server.state_pairs, "the KV fixture has state pairs"
    assert len(server.state_pairs) == len(manifest["state"])
    for s, m in zip(server.state_pairs, manifest["state"]):
        assert s["input"] == m["server_input"] and s["output"] == m["server_output"]
        assert s["input"] in server.input_names and s["output"] in server.output_names
        assert s["axis"] == m["axis"] and s["empty_shape"][s["axis"]] == 0


def test_mismatched_pair_is_refused(pair):
    _, a, b = pair
    client = eeonnx.Client(a)
    wrong = eeonnx.Server(b / "server" / "model.onnx", providers=CPU)
    x = {"x": np.ones((1, 8), np.float32)}
    with pytest.raises(ArtifactMismatchError) as e:
        client.infer(wrong, x)
    assert "\n" not in str(e.value) and "artifact id" in str(e.value)
    # the matching server works
    right = eeonnx.Server(a / "server" / "model.onnx", providers=CPU)
    assert client.infer(right, x)["y"].shape == (1, 8)


def test_cli_mismatch_exits_2_with_one_line(pair, tmp_path):
    src, a, b = pair
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "server" / "model.onnx", mixed / "server" / "model.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    runner = CliRunner()
    for args in (["run", mixed, "--input", f"x={tmp_path / 'x.npy'}", "--provider", "cpu"],
                 ["verify", src, mixed]):
        r = runner.invoke(main, [str(x) for x in args])
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "artifact id" in lines[0], r.output


def test_cli_generate_mismatch_exits_2(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    compile_plain(FIXTURES / "gpt2_kv.dynamo.onnx", a)
    compile_plain(FIXTURES / "gpt2_kv.dynamo.onnx", b)
    shutil.copy(b / "server" / "model.onnx", a / "server" / "model.onnx")
    r = CliRunner().invoke(main, ["generate", str(a), "--prompt-ids", "1,2,3", "--max-new-tokens", "2",
                                  "--provider", "cpu"])
    assert r.exit_code == 2 and "artifact id" in r.output, r.output


def test_every_client_file_is_private(tmp_path):
    import os
    import stat

    out = tmp_path / "o"
    compile_plain(FIXTURES / "gpt2.dynamo.onnx", out, tokenizer=FIXTURES / "gpt2.tokenizer.json")
    client = out / "client"
    assert stat.S_IMODE(os.stat(client).st_mode) == 0o700
    names = sorted(p.name for p in client.iterdir())
    for required in ("encode.onnx", "decode.onnx", "tokenizer.json", "manifest.json", "key.json"):
        assert required in names, names
    for p in client.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(os.stat(p).st_mode) == want, (p.name, oct(stat.S_IMODE(os.stat(p).st_mode)))


def test_compile_help_says_the_client_directory_is_the_secret():
    r = CliRunner().invoke(main, ["compile", "--help"])
    assert "whole client/ directory is the secret" in " ".join(r.output.split())


@pytest.mark.parametrize("split", ["none", "auto"])
def test_server_model_drops_graph_name_and_node_doc_strings(tmp_path, split):
    """Exporters write the model's name into the graph name and source paths or stack
    traces into node doc strings; none of it reaches the server (split or not)."""
    m = onnx.load(FIXTURES / "llama.dynamo.onnx")
    m.graph.name = "my-private-llama"
    for node in m.graph.node:
        node.doc_string = "File /home/alice/private_model.py, line 42"
    src = tmp_path / "model.onnx"
    onnx.save(m, src)
    out = tmp_path / "out"
    eeonnx.compile(src, out, split=split)
    served = onnx.load(out / "server" / "model.onnx")
    assert served.graph.name != "my-private-llama"
    assert not any(n.doc_string for n in served.graph.node)
    assert b"alice" not in (out / "server" / "model.onnx").read_bytes()
