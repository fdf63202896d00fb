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
from eeonnx.errors import ClearBoundaryError
from helpers import CPU
from helpers import assert_close, is_secret, original_names, random_feeds, roundtrip, run_original

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
MLP = os.path.join(MODELS, "mlp.onnx")
CNN = os.path.join(MODELS, "cnn.onnx")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _server_is_the_model_less_client_layers(model, rt):
    """The server runs the original's nodes, less those the split moved to the client."""
    server = onnx.load(os.path.join(rt.out, "server", "model.onnx"))
    split = rt.manifest["split"]
    moved = split["client_prefix_nodes"] + split["client_suffix_nodes"]
    assert len(server.graph.node) == len(model.graph.node) - moved
    assert not Counter(n.op_type for n in server.graph.node) - Counter(n.op_type for n in model.graph.node)
    # every tensor on the wire has the key bits the compile asked for
    assert split["wire_bits"] and min(split["wire_bits"].values()) >= split["min_key_bits"] == 128
    assert set(split["wire_bits"]) == set(original_names(rt.out, rt.manifest["server_inputs"]
                                                         + rt.manifest["server_outputs"]))


@pytest.fixture(scope="module")
def cnn_artifact(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cnn")
    model = onnx.load(CNN)
    rt = roundtrip(model, tmp, full=True, seed=11, split="auto")
    return model, rt


def test_mlp_with_batch_fixed(tmp_path):
    """Default compile (client split, 128-bit wires): the 10-class head moves to decode."""
    model = onnx.load(MLP)
    dims = {"batch": 3}
    rt = roundtrip(model, tmp_path, dims=dims, full=True, split="auto")
    assert rt.decoded["probs"].shape == (3, 10)
    np.testing.assert_allclose(rt.decoded["probs"].sum(axis=1), 1.0, rtol=1e-5)
    _server_is_the_model_less_client_layers(model, rt)
    assert rt.manifest["inputs"][0]["secret_axes"] == [1]   # the 64 features cross the wire
    assert rt.manifest["split"]["client_suffix_nodes"] > 0  # a 10-class output is too weak alone
    assert rt.comp.key_bits > 128
    assert not rt.comp.pins()


def test_mlp_without_split(tmp_path):
    """split="none": the weak 10-class output is refused unless allowed; allowed, the server
    runs the whole model and both boundaries are plain permutations."""
    model = onnx.load(MLP)
    with pytest.raises(ClearBoundaryError) as e:
        eeonnx.compile(model, tmp_path / "refused", dims={"batch": 3}, split="none")
    assert "'probs'" in str(e.value)
    rt = roundtrip(model, tmp_path / "ok", dims={"batch": 3}, full=True, split="none", allow_weak=["probs"])
    assert rt.manifest["outputs"][0]["secret_axes"] == [1]
    server = onnx.load(rt.out / "server" / "model.onnx")
    assert [n.op_type for n in server.graph.node] == [n.op_type for n in model.graph.node]


def test_mlp_with_symbolic_batch(tmp_path):
    """Without dims the batch stays symbolic and public: any batch size runs."""
    model = onnx.load(MLP)
    rt = roundtrip(model, tmp_path, feeds=random_feeds(model, {"batch": 3}), full=True, split="auto")
    client = eeonnx.Client(rt.out)
    server = eeonnx.Server(rt.out / "server" / "model.onnx", providers=CPU)
    for batch in (1, 5):
        feeds = random_feeds(model, {"batch": batch}, seed=batch)
        assert_close(client.infer(server, feeds)["probs"], run_original(model, feeds)[0])
    assert rt.manifest["inputs"][0]["layout"][0] == "P"


def test_cnn_roundtrip(cnn_artifact):
    model, rt = cnn_artifact
    assert rt.decoded["logits"].shape == (1, 10)
    _server_is_the_model_less_client_layers(model, rt)


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
    # I/O: 3 image channels and 10 logits are too weak to cross the wire: the stem and the
    # head run on the client, and what crosses has >= 128 key bits
    assert [c["name"] for c in m["inputs"]] == ["image"] and [c["name"] for c in m["outputs"]] == ["logits"]
    assert m["encode"]["inputs"] == ["image"] and m["decode"]["outputs"] == ["logits"]
    assert len(m["encode"]["outputs"]) == len(m["server_inputs"]) == 1
    assert len(m["decode"]["inputs"]) == len(m["server_outputs"]) == 1
    assert original_names(rt.out, m["server_inputs"]) != ["image"]
    assert original_names(rt.out, m["server_outputs"]) != ["logits"]
    assert all(b >= 128 for b in m["split"]["wire_bits"].values())
    # the server file the manifest names is the one on disk
    assert m["server"]["sha256"] == _sha256(rt.out / "server" / "model.onnx")
    assert m["nodes"]["original"] == len(model.graph.node)
    assert m["nodes"]["server"] == len(model.graph.node) - m["split"]["client_prefix_nodes"] \
        - m["split"]["client_suffix_nodes"]
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
