"""Golden end-to-end checks on the committed demo models (models/mlp.onnx, models/cnn.onnx)."""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter

import numpy as np
import onnx
import pytest

import eeonnx
from helpers import CPU
from helpers import assert_close, is_secret, random_feeds, roundtrip, run_original

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MLP = os.path.join(MODELS, "mlp.onnx")
CNN = os.path.join(MODELS, "cnn.onnx")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _same_ops_as_original(model, out):
    server = onnx.load(os.path.join(out, "server", "model.onnx"))
    assert len(server.graph.node) == len(model.graph.node)
    assert Counter(n.op_type for n in server.graph.node) == Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def cnn_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    model = onnx.load(CNN)
    rt = roundtrip(model, tmp, full=True, seed=11)
    return model, rt


def test_mlp_with_batch_fixed(tmp_path):
    model = onnx.load(MLP)
    dims = {"batch": 3}
    rt = roundtrip(model, tmp_path, dims=dims, full=True)
    assert rt.decoded["probs"].shape == (3, 10)
    np.testing.assert_allclose(rt.decoded["probs"].sum(axis=1), 1.0, rtol=1e-5)
    _same_ops_as_original(model, rt.out)
    m = rt.manifest
    assert m["outputs"][0]["secret_axes"] == [1]  # the 10 classes
    assert m["inputs"][0]["secret_axes"] == [1]   # the 64 features
    assert rt.comp.key_bits > 128
    assert not rt.comp.pins()


def test_mlp_with_symbolic_batch(tmp_path):
    """Without dims the batch stays symbolic and public: any batch size runs."""
    model = onnx.load(MLP)
    rt = roundtrip(model, tmp_path, feeds=random_feeds(model, {"batch": 3}), full=True)
    client = eeonnx.Client(rt.out)
    server = eeonnx.Server(rt.out / "server" / "model.onnx", providers=CPU)
    for batch in (1, 5):
        feeds = random_feeds(model, {"batch": batch}, seed=batch)
        assert_close(client.infer(server, feeds)["probs"], run_original(model, feeds)[0])
    assert rt.manifest["inputs"][0]["layout"][0] == "P"


def test_cnn_roundtrip(cnn_artifact):
    model, rt = cnn_artifact
    assert rt.decoded["logits"].shape == (1, 10)
    _same_ops_as_original(model, rt.out)


def test_cnn_more_inputs(cnn_artifact):
    model, rt = cnn_artifact
    client = eeonnx.Client(rt.out)
    server = eeonnx.Server(rt.out / "server" / "model.onnx", providers=CPU)
    rng = np.random.default_rng(5)
    for _ in range(3):
        feeds = {"image": rng.random([1, 3, 32, 32], dtype=np.float32)}  # image-like, in [0, 1)
        assert_close(client.infer(server, feeds)["logits"], run_original(model, feeds)[0])


def test_cnn_manifest(cnn_artifact):
    model, rt = cnn_artifact
    m = rt.manifest
    comp = rt.comp
    # classes: listed with sizes and bits, consistent with the compilation
    assert m["classes"], m
    assert len(m["classes"]) == len(comp.classes)
    for c in m["classes"]:
        assert c["size"] > 1
        assert c["bits"] == pytest.approx(np.log2(float(np.prod(np.arange(1, c["size"] + 1, dtype=np.float64)))),
                                          abs=0.1)
    assert m["key_bits"] == pytest.approx(sum(c["bits"] for c in m["classes"]), abs=0.5)
    assert m["key_bits"] > 128 and comp.key_bits > 128
    # coverage: nearly all weight bytes are permuted
    cov = m["coverage"]
    assert 0 < cov["permuted_bytes"] <= cov["weight_bytes"]
    assert cov["share"] > 0.9
    assert cov["share"] == pytest.approx(cov["permuted_bytes"] / cov["weight_bytes"], abs=1e-4)
    orig_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert cov["weight_bytes"] == orig_bytes
    # I/O: the image's channels and the logits are secret
    assert m["inputs"][0]["name"] == "image" and m["inputs"][0]["secret_axes"] == [1]
    assert m["outputs"][0]["name"] == "logits" and m["outputs"][0]["secret_axes"] == [1]
    assert not m["inputs"][0]["clear"] and not m["outputs"][0]["clear"]
    # the server file the manifest names is the one on disk
    assert m["server"]["sha256"] == _sha256(rt.out / "server" / "model.onnx")
    assert m["nodes"]["original"] == len(model.graph.node) == m["nodes"]["server"]
    assert m["key_fingerprint"] == comp.key.fingerprint()
    with open(rt.out / "client" / "key.json", encoding="utf-8") as f:
        assert json.load(f)["secret"] not in json.dumps(m)


def test_cnn_spec_structure(cnn_artifact):
    """The spec names a secret class on every conv's output channels, and the channel
    shuffle / concat / depthwise structure shows up as Kron / Cat layouts."""
    _model, rt = cnn_artifact
    spec = rt.comp.spec()
    conv_weights = [n for n, axes in spec.items() if len(axes) == 4]
    assert conv_weights
    for name in conv_weights:
        assert is_secret(spec[name][0]), (name, spec[name])
    layouts = {a for axes in spec.values() for a in axes}
    # the channel shuffle: some axis is kron(A, B) and another kron(B, A)
    krons = [re.fullmatch(r"kron\((c\d+\[\d+\]), (c\d+\[\d+\])\)", a) for a in layouts]
    pairs = {(m.group(1), m.group(2)) for m in krons if m}
    assert any((b, a) in pairs for a, b in pairs), spec
    # the DenseNet-style concat: the depthwise conv sees cat(old channels, new channels)
    assert any(a.startswith("cat(") for a in layouts), spec
