"""The command line as a user drives it: exit codes, one-line errors, written files."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from eeonnx.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "cnn.onnx")
MLP = os.path.join(ROOT, "models", "mlp.onnx")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def cnn_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cnn"
    r = run("compile", CNN, "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_help_teaches_every_command():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("compile", "check", "verify", "run", "generate", "bench"):
        assert cmd in r.output
        sub = run(cmd, "--help")
        assert sub.exit_code == 0 and "Example" in sub.output, cmd


def test_compile_summary_and_files(cnn_out):
    for f in ("server/model.onnx", "client/encode.onnx", "client/decode.onnx", "client/key.json",
              "client/manifest.json"):
        assert (cnn_out / f).is_file(), f
    assert stat.S_IMODE(os.stat(cnn_out / "client" / "key.json").st_mode) == 0o600


def test_compile_prints_classes_bits_coverage_and_wire(tmp_path):
    r = run("compile", CNN, "-o", tmp_path / "o")
    assert r.exit_code == 0
    assert "permutation entropy" in r.output and "secret axis classes" in r.output
    assert "key space" not in r.output and "key bits" not in r.output  # entropy is not presented as security
    assert "weights under a secret permutation" in r.output
    assert "wire stem.conv_out: permutation entropy" in r.output  # per wire tensor
    assert "structural exposures" in r.output and "eeonnx audit" in r.output


def test_existing_output_needs_force(cnn_out):
    before = sorted(p.name for p in cnn_out.iterdir())
    r = CliRunner().invoke(main, ["compile", CNN, "-o", str(cnn_out)])
    assert r.exit_code == 2 and "--force" in r.output
    assert sorted(p.name for p in cnn_out.iterdir()) == before


def test_verify_ok_and_mismatch(cnn_out, tmp_path):
    r = run("verify", CNN, cnn_out, "--trials", 2)
    assert r.exit_code == 0 and "ok" in r.output
    # the artifact of another model does not verify against this one
    other = tmp_path / "mlp"
    assert run("compile", MLP, "-o", other).exit_code == 0
    r = CliRunner().invoke(main, ["verify", CNN, str(other)])
    assert r.exit_code != 0


def test_run_saves_decoded_outputs(cnn_out, tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("run", cnn_out, "--input", f"image={tmp_path / 'x.npy'}", "--save", tmp_path / "res")
    assert r.exit_code == 0, r.output
    import onnxruntime as ort

    want = ort.InferenceSession(CNN, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    got = np.load(tmp_path / "res" / "logits.npy")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_run_rejects_unknown_input(cnn_out, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    r = CliRunner().invoke(main, ["run", str(cnn_out), "--input", f"nope={tmp_path / 'x.npy'}"])
    assert r.exit_code == 2 and "image" in r.output


def test_check_json_and_spec():
    r = run("check", CNN, "--json", "--spec")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert rep["compilable"] and rep["key_bits"] > 128
    assert rep["spec"]["stem.conv.weight"][2:] == ["P", "P"]  # kernel axes are positional
    assert rep["split"]["wire_bits"] and min(rep["split"]["wire_bits"].values()) >= 128


def test_bench_json_reports_ratio_and_client_cost(cnn_out):
    r = run("bench", CNN, cnn_out, "--iters", 3, "--json")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert rep["ratio_median"] > 0 and rep["client_ms"] >= 0
    assert {"median_ms", "p90_ms"} <= set(rep["plain"]) and {"median_ms", "p90_ms"} <= set(rep["server"])


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", os.urandom(256)])
def test_bad_files_are_one_line_errors(tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    r = CliRunner().invoke(main, ["compile", str(bad), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_bad_dim_option_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(main, ["compile", MLP, "-o", str(tmp_path / "o"), "--dim", "batch"])
    assert r.exit_code == 2 and "NAME=SIZE" in r.output
