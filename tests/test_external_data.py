"""External-data models (torch's dynamo exporter writes model.onnx.data) compile,
verify and run exactly like the same model saved inline, and every artifact
graph is self-contained: no tensor points at a file its directory lacks."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from eeonnx.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(ROOT, "models", "cnn.onnx")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _centered_cnn() -> onnx.ModelProto:
    """models/cnn.onnx behind a Sub of a 12 KB mean image: a client-side constant
    that no permutation touches, so it stays a reference into the source's data file."""
    m = onnx.load(CNN)
    name = m.graph.input[0].name
    for n in m.graph.node:
        for k, x in enumerate(n.input):
            if x == name:
                n.input[k] = "centered"
    mean = np.random.default_rng(0).standard_normal([1, 3, 32, 32]).astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(mean, "mean_image"))
    m.graph.node.insert(0, helper.make_node("Sub", [name, "mean_image"], ["centered"], name="center"))
    return m


def _external_refs(path: str) -> list[str]:
    """Data files that the graph at ``path`` points at, missing from its directory."""
    m = onnx.load(path, load_external_data=False)
    missing = []
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}["location"]
            if not os.path.exists(os.path.join(os.path.dirname(path), loc)):
                missing.append(f"{t.name} -> {loc}")
    return missing


@pytest.mark.parametrize("model_name,data_name", [("cnn.onnx", "cnn.onnx.data"),
                                                  ("model.onnx", "model.onnx.data")])
@pytest.mark.parametrize("centered", [False, True])
def test_external_data_with_split_compiles_verifies_runs(tmp_path, model_name, data_name, centered):
    src = tmp_path / "src"
    src.mkdir()
    model = _centered_cnn() if centered else onnx.load(CNN)
    inline = model.SerializeToString()  # onnx.save below turns model's tensors into references
    onnx.save(model, src / model_name, save_as_external_data=True, size_threshold=0, location=data_name)
    out = tmp_path / "out"
    r = run("compile", src / model_name, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    manifest = (out / "client" / "manifest.json").read_text()
    assert '"split": null' not in manifest  # the split is active: client graphs hold layers
    for f in ("client/encode.onnx", "client/decode.onnx", "server/model.onnx"):
        assert _external_refs(str(out / f)) == [], f
    r = run("verify", src / model_name, out)
    assert r.exit_code == 0, r.output
    x = np.random.default_rng(1).standard_normal([1, 3, 32, 32]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run("run", out, "--input", f"image={tmp_path / 'x.npy'}",
            "--save", tmp_path / "res")
    assert r.exit_code == 0, r.output
    got = np.load(tmp_path / "res" / "logits.npy")
    import onnxruntime as ort

    ref = ort.InferenceSession(inline, providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_external_data_analysed_like_inline(tmp_path):
    """Shape inference gives every value the same type and shape either way."""
    from eeonnx.compiler.api import check

    onnx.save(onnx.load(CNN), tmp_path / "m.onnx", save_as_external_data=True, size_threshold=0,
              location="m.onnx.data")

    def shapes(path):
        comp = check(str(path))
        return {o.name: (o.dtype, None if o.shape is None else list(o.shape))
                for n in comp.model.graph for o in n.outputs}

    inline, external = shapes(CNN), shapes(tmp_path / "m.onnx")
    assert external == inline
    assert all(s is not None and t is not None for t, s in inline.values())
