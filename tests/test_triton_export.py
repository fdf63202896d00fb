"""``eeonnx export-triton``: the config parses as Triton's ModelConfig protobuf (from tritonclient),
lists the server model's inputs and outputs with ONNX Runtime's types, and has one implicit
sequence state per KV pair of the manifest; the repository holds only the server model."""
from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32",
                 "tensor(bool)": "TYPE_BOOL", "tensor(float16)": "TYPE_FP16"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = {}
    for name, path in (("kv", ROOT / "models/fixtures/gpt2_kv.dynamo.onnx"), ("cnn", ROOT / "models/cnn.onnx")):
        out[name] = tmp_path_factory.mktemp(name) / "out"
        eeonnx.compile(path, out[name])
    return out


def _parse(text: str):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("which", ["kv", "cnn"])
def test_export_matches_the_server_model(artifacts, tmp_path, which):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")

    out = artifacts[which]
    res = CliRunner().invoke(cli_main, ["export-triton", str(out), "--repo", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "client" / "manifest.json").read_text())
    model_dir = tmp_path / "repo" / f"eeonnx-{manifest['artifact_id']}"
    assert sorted(p.name for p in model_dir.rglob("*") if p.is_file()) == ["config.pbtxt", "model.onnx"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == (out / "server" / "model.onnx").read_bytes()
    cfg = _parse((model_dir / "config.pbtxt").read_text())
    assert cfg.backend == "onnxruntime" and cfg.max_batch_size == 0 and cfg.name == model_dir.name

    sess = ort.InferenceSession(str(out / "server" / "model.onnx"), providers=["CPUExecutionProvider"])
    state = manifest["state"]
    state_in = {s["server_input"] for s in state}
    state_out = {s["server_output"] for s in state}
    want_in = {i.name: ORT_TO_TRITON[i.type] for i in sess.get_inputs() if i.name not in state_in}
    want_out = {o.name: ORT_TO_TRITON[o.type] for o in sess.get_outputs() if o.name not in state_out}
    tname = cfg.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type.values_by_number
    assert {i.name: tname[i.data_type].name for i in cfg.input} == want_in
    assert {o.name: tname[o.data_type].name for o in cfg.output} == want_out
    for i in cfg.input:
        ort_shape = next(x.shape for x in sess.get_inputs() if x.name == i.name)
        assert list(i.dims) == [d if isinstance(d, int) else -1 for d in ort_shape]

    got_state = {(s.input_name, s.output_name) for s in cfg.sequence_batching.state}
    assert got_state == {(s["server_input"], s["server_output"]) for s in state}
    assert cfg.HasField("sequence_batching") == bool(state)
    for s in cfg.sequence_batching.state:
        m = next(x for x in state if x["server_input"] == s.input_name)
        assert s.initial_state[0].zero_data
        assert list(s.initial_state[0].dims)[m["axis"]] == 0  # the cache starts empty
        assert len(s.dims) == len(m["shape"])
    if which == "kv":
        assert len(cfg.sequence_batching.state) == 4


def test_export_refuses_a_non_empty_target_and_a_missing_model(artifacts, tmp_path):
    out = artifacts["cnn"]
    args = ["export-triton", str(out), "--repo", str(tmp_path), "--name", "m"]
    assert CliRunner().invoke(cli_main, args).exit_code == 0
    res = CliRunner().invoke(cli_main, args)
    assert res.exit_code == 2 and "--force" in res.output
    assert CliRunner().invoke(cli_main, args + ["--force"]).exit_code == 0
    res = CliRunner().invoke(cli_main, ["export-triton", str(tmp_path), "--repo", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no server model" in res.output


def test_config_text_escapes_names(artifacts):
    from eeonnx.server.serve import catalog, triton

    entry = catalog.read_entry(str(artifacts["cnn"] / "server" / "model.onnx"))
    entry.inputs[0]["name"] = 'a "quoted" \\ name'
    cfg = _parse(triton.config_text(entry, "m"))
    assert cfg.input[0].name == 'a "quoted" \\ name'
