"""What a new user hits: every mistake below is one line on stderr and exit 2
(no traceback), or, where the input is usable, a warning and the right answer."""
from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from eeonnx.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "cnn.onnx")
MLP = os.path.join(ROOT, "models", "mlp.onnx")
FIX = os.path.join(ROOT, "models", "fixtures")
LLAMA_KV = os.path.join(FIX, "llama_kv.ts.onnx")
CPU = ["CPUExecutionProvider"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.output
    for w in words:
        assert w in errors[0], r.output
    return errors[0]


@pytest.fixture(scope="module")
def cnn_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "out"
    assert cli("compile", CNN, "-o", out, "-q").exit_code == 0
    return out


@pytest.fixture(scope="module")
def kv_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("kv") / "out"
    r = cli("compile", LLAMA_KV, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    return out


def _plain_cnn(x):
    return ort.InferenceSession(CNN, providers=CPU).run(None, {"image": x})[0]


def test_wrong_shape_npy(cnn_out, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros([1, 3, 16, 16], np.float32))
    one_line_error(cli("run", cnn_out, "--input", f"image={tmp_path / 'x.npy'}"),
                   "'image'", "[1, 3, 16, 16]", "[1, 3, 32, 32]")
    np.save(tmp_path / "y.npy", np.zeros([3, 32, 32], np.float32))
    one_line_error(cli("run", cnn_out, "--input", f"image={tmp_path / 'y.npy'}"), "rank 3")


def test_float64_npy_is_rounded_with_a_warning(cnn_out, tmp_path):
    x = np.random.default_rng(0).random([1, 3, 32, 32])  # float64, what np.random.rand gives
    np.save(tmp_path / "x.npy", x)
    r = cli("run", cnn_out, "--input", f"image={tmp_path / 'x.npy'}", "--save", tmp_path / "res")
    assert r.exit_code == 0, r.output
    assert "warning: input 'image': float64 rounded to float32" in r.output
    got = np.load(tmp_path / "res" / "logits.npy")
    np.testing.assert_allclose(got, _plain_cnn(x.astype(np.float32)), rtol=1e-4, atol=1e-5)


def test_float64_beyond_float32_range_is_refused(cnn_out, tmp_path):
    np.save(tmp_path / "x.npy", np.full([1, 3, 32, 32], 1e300))
    one_line_error(cli("run", cnn_out, "--input", f"image={tmp_path / 'x.npy'}"), "float32's range")


def _kv_feeds(tmp_path, ids, dtype):
    n = len(ids)
    files = {"input_ids": np.array([ids], dtype), "attention_mask": np.ones((1, n), np.int64),
             "position_ids": np.arange(n, dtype=np.int64)[None]}
    args = []
    for name, a in files.items():
        np.save(tmp_path / f"{name}.npy", a)
        args += ["--input", f"{name}={tmp_path / (name + '.npy')}"]
    return args


def test_int32_token_ids_work(kv_out, tmp_path):
    ids = [5, 17, 42]
    r = cli("run", kv_out, *_kv_feeds(tmp_path, ids, np.int32), "--save", tmp_path / "res")
    assert r.exit_code == 0, r.output
    plain = ort.InferenceSession(LLAMA_KV, providers=CPU)
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.arange(3, dtype=np.int64)[None]}
    for i in plain.get_inputs():
        if i.name.startswith("past"):
            feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
    want = plain.run(["logits"], feeds)[0]
    np.testing.assert_allclose(np.load(tmp_path / "res" / "logits.npy"), want, rtol=1e-4, atol=1e-5)


def test_float_token_ids_are_refused(kv_out, tmp_path):
    one_line_error(cli("run", kv_out, *_kv_feeds(tmp_path, [1, 2], np.float32)), "'input_ids'", "int64")


def test_client_or_server_dir_instead_of_the_artifact(cnn_out, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros([1, 3, 32, 32], np.float32))
    for part in ("client", "server"):
        line = one_line_error(cli("run", cnn_out / part, "--input", f"image={tmp_path / 'x.npy'}"),
                              "pass the artifact directory")
        assert str(cnn_out) in line
    one_line_error(cli("verify", CNN, tmp_path), "not an artifact directory")


def test_model_and_artifact_that_do_not_belong_together(cnn_out):
    one_line_error(cli("verify", MLP, cnn_out), "do not belong together", "'x'", "'image'")


@pytest.mark.parametrize("prompt", [["--prompt-ids", "1,2"], ["--prompt", "hello"]])
def test_generate_on_a_cnn(cnn_out, prompt):
    one_line_error(cli("generate", cnn_out, *prompt), "cannot generate")


def test_generate_on_an_encoder(tmp_path):
    out = tmp_path / "bert"
    assert cli("compile", os.path.join(FIX, "bert.ts.onnx"), "-o", out, "-q").exit_code == 0
    one_line_error(cli("generate", out, "--prompt-ids", "1,2"), "cannot generate")


def _greedy_plain(prompt, n):
    """The original llama_kv fixture, whole prefix every step, empty cache."""
    sess = ort.InferenceSession(LLAMA_KV, providers=CPU)
    ids = list(prompt)
    for _ in range(n):
        k = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, k), np.int64),
                 "position_ids": np.arange(k, dtype=np.int64)[None]}
        for i in sess.get_inputs():
            if i.name.startswith("past"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        ids.append(int(np.argmax(sess.run(["logits"], feeds)[0][0, -1])))
    return ids[len(prompt):]


def test_generate_with_client_state(tmp_path, kv_out):
    out = tmp_path / "cs"
    r = cli("compile", LLAMA_KV, "-o", out, "-q", "--client-state", "--min-key-bits", "0")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "client" / "manifest.json").read_text())
    assert manifest["state"] == [] and len(manifest["client_state"]) == 4
    want = _greedy_plain([5, 17, 42, 99], 8)
    for artifact in (out, kv_out):  # the client carries the cache / the server keeps it
        r = cli("generate", artifact, "--prompt-ids", "5,17,42,99", "--max-new-tokens", "8")
        assert r.exit_code == 0, r.output
        assert [int(t) for t in r.output.splitlines()[0].split()] == want


def test_bench_kv_model_with_default_dims(kv_out):
    r = cli("bench", LLAMA_KV, kv_out, "--iters", "3")
    assert r.exit_code == 0, r.output
    assert "server/plain" in r.output and "end to end" in r.output and "on the wire per request" in r.output


def test_bench_json_has_end_to_end_and_wire_bytes(cnn_out):
    r = cli("bench", CNN, cnn_out, "--iters", "3", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):r.output.rindex("}") + 1])
    # the server receives the client prefix's output and returns the suffix's input
    m = json.loads((cnn_out / "client" / "manifest.json").read_text())
    assert data["wire_bytes"]["request"] > 0 and data["wire_bytes"]["response"] > 0
    assert m["split"] is not None
    lo, hi = data["ratio_interval"]
    assert lo <= data["ratio_median"] <= hi
    assert data["end_to_end"]["median_ms"] > 0


def test_debug_before_and_after_the_subcommand(cnn_out, tmp_path):
    from eeonnx.errors import InputError

    np.save(tmp_path / "x.npy", np.zeros([1, 3, 16, 16], np.float32))
    args = ["run", str(cnn_out), "--input", f"image={tmp_path / 'x.npy'}"]
    for argv in (["--debug"] + args, args + ["--debug"]):
        r = CliRunner().invoke(main, argv)
        assert isinstance(r.exception, InputError), r.output  # the traceback is shown, not swallowed


def test_tokenizer_smaller_than_the_vocabulary_warns(tmp_path):
    pytest.importorskip("tokenizers")
    data = json.loads(open(os.path.join(FIX, "bert.tokenizer.json"), encoding="utf-8").read())
    data["model"]["vocab"] = {t: i for t, i in data["model"]["vocab"].items() if i < 200}
    small = tmp_path / "small.json"
    small.write_text(json.dumps(data))
    r = cli("compile", LLAMA_KV, "-o", tmp_path / "out", "-q", "--tokenizer", small)
    assert r.exit_code == 0, r.output
    assert "warning: --tokenizer" in r.output and "200 distinct ids" in r.output and "320 rows" in r.output
    r = cli("compile", LLAMA_KV, "-o", tmp_path / "out2", "-q", "--tokenizer",
            os.path.join(FIX, "bert.tokenizer.json"))
    assert r.exit_code == 0 and "warning" not in r.output, r.output


def test_bench_provider_cuda_without_cuda_is_an_error(cnn_out, tmp_path):
    from eeonnx.server import runtime

    if runtime.cuda_usable():
        pytest.skip("CUDA works here")
    one_line_error(cli("bench", CNN, cnn_out, "--provider", "cuda", "--iters", "1"), "--provider cuda")
    np.save(tmp_path / "x.npy", np.zeros([1, 3, 32, 32], np.float32))
    one_line_error(cli("run", cnn_out, "--input", f"image={tmp_path / 'x.npy'}", "--provider", "cuda"),
                   "--provider cuda")
