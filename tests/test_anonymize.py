"""Opaque names in the server model (compiler/passes/anonymize.py).

By default no original name of a node, initializer, value, graph input or output
(subgraphs included) reaches server/model.onnx; the manifest maps them; the server
model still computes the original function; ``--keep-names`` keeps them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.audit import structure
from eeonnx.audit.view import ServerView
from eeonnx.cli import main
from eeonnx.client.verify import verify
from eeonnx.compiler.rekey import rekey
from models.make_control_flow import merged_decoder

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "models" / "fixtures"
OPAQUE = re.compile(r"[xywtng]\d+")  # anonymize's vocabulary: a letter and a counter
A = onnx.AttributeProto


def _graphs(g: onnx.GraphProto):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == A.GRAPH:
                yield from _graphs(a.g)
            for sub in a.graphs:
                yield from _graphs(sub)


def _original_names(model: onnx.ModelProto) -> set[str]:
    """Every node, initializer, value, graph input/output and subgraph name of the original."""
    out = set()
    for g in _graphs(model.graph):
        out |= {g.name} if g is not model.graph else set()
        out |= {v.name for v in list(g.input) + list(g.output) + list(g.value_info)}
        out |= {t.name for t in g.initializer}
        for n in g.node:
            out |= {n.name, *n.input, *n.output}
    out.add(model.graph.name)
    return {n for n in out if n}


def _public_strings(model: onnx.ModelProto) -> set[str]:
    """Strings of the original that are structure, not names: op types, domains, attribute
    names and string values, symbolic dim names. An original name that is a substring of
    one of them is in the server file because the op is."""
    out = {"eeonnx.artifact_id", "eeonnx.state", "server", "input", "output", "axis", "dtype", "shape",
           "empty_shape", "float"}
    for g in _graphs(model.graph):
        for n in g.node:
            out |= {n.op_type, n.domain}
            for a in n.attribute:
                out.add(a.name)
                if a.type == A.STRING:
                    out.add(a.s.decode("utf-8", "replace"))
        for v in list(g.input) + list(g.output) + list(g.value_info):
            out |= {d.dim_param for d in v.type.tensor_type.shape.dim if d.dim_param}
    out |= {o.domain for o in model.opset_import}
    return {s for s in out if s}


def _text_of(path: Path) -> bytes:
    """The server file's bytes less the weight data (raw tensor bytes could hold any 4-byte
    string by chance): every name, string, attribute and metadata entry is still there."""
    m = onnx.load(path)

    def strip(t):
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            t.ClearField(f)

    for g in _graphs(m.graph):
        for t in g.initializer:
            strip(t)
        for n in g.node:
            for a in n.attribute:
                if a.type == A.TENSOR:
                    strip(a.t)
    return m.SerializeToString()


def _merged(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cf") / "merged.onnx"
    onnx.save(merged_decoder(str(FIXTURES / "llama_kv.ts.onnx")), path)
    return path


MODELS = {  # CNN, BERT, a KV-cache decoder, control flow (If branches reading outer weights), dynamo metadata
    "cnn": lambda f: ROOT / "models" / "cnn.onnx",
    "bert": lambda f: FIXTURES / "bert.ts.onnx",
    "llama_kv": lambda f: FIXTURES / "llama_kv.ts.onnx",
    "control_flow": _merged,
    "llama_dynamo": lambda f: FIXTURES / "llama.dynamo.onnx",
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            src = MODELS[name](tmp_path_factory)
            out = tmp_path_factory.mktemp(name) / "out"
            eeonnx.compile(src, out)  # the default options
            cache[name] = src, out
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_original_name_reaches_the_server(artifacts, name):
    src, out = artifacts(name)
    original = onnx.load(src)
    server_path = out / "server" / "model.onnx"
    text = _text_of(server_path)
    public = _public_strings(original)
    names = {n for n in _original_names(original) if len(n) >= 4 and not OPAQUE.fullmatch(n)
             and not any(n in s for s in public)}
    assert len(names) > 20, names  # the check has something to find
    leaked = sorted(n for n in names if n.encode() in text)
    assert not leaked, f"{len(leaked)} original names in the server file, e.g. {leaked[:5]}"

    served = onnx.load(server_path)
    assert {p.key for p in served.metadata_props} == {"eeonnx.artifact_id", "eeonnx.state"}
    for g in _graphs(served.graph):  # every name is opaque, nothing else names the source
        assert g is served.graph or OPAQUE.fullmatch(g.name), g.name
        values = [v.name for v in list(g.input) + list(g.output) + list(g.value_info)]
        values += [t.name for t in g.initializer] + [x for n in g.node for x in list(n.input) + list(n.output)]
        assert all(OPAQUE.fullmatch(v) for v in values if v), [v for v in values if v and not OPAQUE.fullmatch(v)]
        assert all(OPAQUE.fullmatch(n.name) for n in g.node)
        assert not g.metadata_props and not any(n.metadata_props or n.doc_string for n in g.node)
        assert not any(v.metadata_props for v in list(g.value_info) + list(g.initializer))
    assert served.graph.name == "server"
    assert not [e for e in structure.metadata_exposures(ServerView(out))], "the audit still finds names"

    # the manifest holds the map: one-to-one, onto every server value name
    manifest = json.loads((out / "client" / "manifest.json").read_text())
    mapping = manifest["server_names"]
    assert len(set(mapping.values())) == len(mapping)
    in_file = {v for g in _graphs(served.graph) for v in
               [t.name for t in g.initializer] + [x for n in g.node for x in list(n.input) + list(n.output)] if v}
    assert in_file <= set(mapping.values())
    assert manifest["server_inputs"] == [i.name for i in served.graph.input
                                         if i.name not in {s["server_input"] for s in manifest["state"]}]
    state = json.loads({p.key: p.value for p in served.metadata_props}["eeonnx.state"])
    assert [(s["input"], s["output"]) for s in state] == \
        [(s["server_input"], s["server_output"]) for s in manifest["state"]]
    for s in manifest["state"]:  # state pairs: original names in the manifest, opaque on the server
        assert mapping[s["input"]] == s["server_input"] and mapping[s["output"]] == s["server_output"]
        assert s["server_input"] in {i.name for i in served.graph.input}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_renamed_server_computes_the_original(artifacts, name):
    src, out = artifacts(name)
    checks = verify(src, out, trials=1)
    assert checks and all(c.ok for c in checks.values()), checks


def test_generation_with_the_cache_on_a_renamed_server(artifacts):
    """The KV cache travels under the server's opaque names (Server.step binds them)."""
    import numpy as np
    import onnxruntime as ort

    src, out = artifacts("control_flow")
    client = eeonnx.Client(out)
    server = eeonnx.Server(out / "server" / "model.onnx", providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    ids, want = [3, 14, 15], []
    for _ in range(4):  # greedy on the plain model, recomputing the prefix
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                 "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        for i in plain.get_inputs():
            if i.name.startswith("past"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in plain.get_inputs()}}
        ids.append(int(np.argmax(plain.run(["logits"], feeds)[0][0, -1])))
        want.append(ids[-1])
    assert list(client.generate(server, [3, 14, 15], max_new_tokens=4)) == want


def test_keep_names_keeps_them_and_the_audit_says_so(tmp_path):
    src = ROOT / "models" / "cnn.onnx"
    r = CliRunner().invoke(main, ["compile", str(src), "-o", str(tmp_path / "kept"), "--keep-names"])
    assert r.exit_code == 0, r.output
    assert "names:" in r.output  # the compile summary reports the names it kept
    kept = onnx.load(tmp_path / "kept" / "server" / "model.onnx")
    original = {t.name for t in onnx.load(src).graph.initializer}
    assert {t.name for t in kept.graph.initializer} <= original
    assert json.loads((tmp_path / "kept" / "client" / "manifest.json").read_text())["server_names"] == {}
    assert any(e["kind"] == "names" for e in structure.metadata_exposures(ServerView(tmp_path / "kept")))
    checks = verify(src, tmp_path / "kept", trials=1)
    assert all(c.ok for c in checks.values()), checks
    r = CliRunner().invoke(main, ["compile", str(src), "-o", str(tmp_path / "opaque")])
    assert r.exit_code == 0 and "names:" not in r.output, r.output


def test_keep_names_is_documented_as_a_debugging_aid():
    r = CliRunner().invoke(main, ["compile", "--help"])
    assert "--keep-names" in r.output and "Debugging aid" in r.output and "which model" in r.output


def test_rekey_keeps_the_names_opaque(artifacts, tmp_path):
    src, out = artifacts("bert")
    rekey(out, tmp_path / "re")
    before, after = (onnx.load(d / "server" / "model.onnx", load_external_data=False) for d in (out, tmp_path / "re"))
    assert [t.name for t in after.graph.initializer] == [t.name for t in before.graph.initializer]
    assert [n.name for n in after.graph.node] == [n.name for n in before.graph.node]
    m1, m2 = (json.loads((d / "client" / "manifest.json").read_text()) for d in (out, tmp_path / "re"))
    assert m2["server_names"] == m1["server_names"] and m2["server_inputs"] == m1["server_inputs"]
    checks = verify(src, tmp_path / "re", trials=1)
    assert all(c.ok for c in checks.values()), checks
