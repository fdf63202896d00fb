"""eeonnx plan / compile --max-leak: candidate cuts, measured leakage, the cheapest cut that meets a target."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.cli import main
from eeonnx.compiler import pipeline
from eeonnx.compiler import plan as P
from eeonnx.compiler.passes import split as S
from helpers import CPU, G, assert_close, run_original

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "models" / "cnn.onnx"
BERT = ROOT / "models" / "fixtures" / "bert.ts.onnx"


def residual_model():
    """x [1,3,8,8] -> conv a (16) -> relu -> [conv b -> relu] + skip -> conv c (16) -> relu -> conv d (4) -> y."""
    g = G(seed=3)
    x = g.input("x", [1, 3, 8, 8])
    a = g.node("Relu", [g.conv(x, 3, 16, 3, name="a")], name="ra")
    b = g.node("Relu", [g.conv(a, 16, 16, 3, name="b")], name="rb")
    s = g.node("Add", [a, b], name="skip")
    c = g.node("Relu", [g.conv(s, 16, 16, 3, name="c")], name="rc")
    g.conv(c, 16, 4, 1, name="d")
    g.output("d_out")
    return g.build()


def test_candidate_cuts_are_single_tensor_and_convex(tmp_path):
    comp = pipeline.analyze(residual_model())
    cuts = S.candidate_cuts(comp, comp.model, min_bits=10)
    assert cuts[0].spec == "" and cuts[0].side == ""
    for c in cuts[1:]:
        assert len(c.wire()) == 1, c.spec
        assert not (c.plan.prefix & c.plan.suffix)
    wires_in = {c.wire()[0] for c in cuts if c.side == "in"}
    # the residual stream after the Add is a cut; the branch inside the block is not one by itself
    assert "skip_out" in wires_in
    assert "b_out" not in wires_in and "rb_out" not in wires_in
    # every cut compiles to an exact artifact
    for c in cuts[1:3]:
        out = tmp_path / c.spec.replace(":", "_")
        model = residual_model()
        onnx.save(model, tmp_path / "m.onnx")
        eeonnx.compile(tmp_path / "m.onnx", out, min_key_bits=10, split_at=[c.spec])
        feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
        got = eeonnx.Client(out).infer(eeonnx.Server(out / "server" / "model.onnx", providers=CPU), feeds)
        assert_close(got["d_out"], run_original(model, feeds)[0], 1e-4)


def test_image_forms_read_every_orientation():
    grid = np.arange(16 * 5, dtype=float).reshape(16, 5)  # 16 patch tokens of 5 features
    shapes = sorted(f.shape for f in P._image_forms(grid, 1))
    assert (5, 4, 4) in shapes
    assert (3, 4, 4) not in shapes
    assert sorted(f.shape for f in P._image_forms(grid.T, 1)) == shapes  # [D, T] read as well
    assert P._image_forms(np.zeros(7), 1) == []
    assert P._image_forms(np.zeros((2, 3, 4, 4)), 1)[0].shape == (6, 4, 4)


@pytest.fixture(scope="module")
def cnn_rows():
    comp = pipeline.analyze(CNN)
    return P.measure(comp)


def test_image_leakage_attack_succeeds_at_the_stem(cnn_rows):
    rows, cal = cnn_rows
    assert cal.kind == "image" and len(cal.images) == P.N_IMAGES
    first = next(r for r in rows if r.side == "in" and r.spec == "")
    m = first.metrics[first.leak_tensor]
    # the stem's feature map shows the picture: far above unrelated images
    assert m["correlation"] > 0.6 and m["correlation"] - m["baseline"] > 0.3
    assert first.leak == pytest.approx(m["excess"])
    # costs grow along the candidates, the table shows every row
    flops = [r.client_flops_share for r in rows if r.side == "in"]
    assert flops == sorted(flops) and 0 < flops[0] < 0.1
    text = P.table(rows, cal)
    assert "what enters the server" in text and "what leaves the server" in text


def test_compile_max_leak_keeps_its_promise(cnn_rows, tmp_path):
    from eeonnx.audit.metrics import image_wire_leakage

    rows, cal = cnn_rows
    target = sorted(r.leak for r in rows if r.side == "in" and r.measured)[0] + 0.01
    out = tmp_path / "out"
    comp = eeonnx.compile(CNN, out, max_leak=target)
    placement = json.loads((out / "client" / "manifest.json").read_text())["placement"]
    assert placement["measured_leak"] <= target
    cheaper = [r for r in rows if r.side == "in" and r.client_flops_share < placement["client_flops_share"] - 1e-9]
    assert all(r.leak > target for r in cheaper)
    # what the artifact's own encode.onnx sends, measured again: the promised leakage
    client = eeonnx.Client(out)
    wires = [next(iter(client.encode({"image": f["image"]}).values()))[0] for f in cal.feeds]
    again = image_wire_leakage(wires, cal.images, cal.unrelated)
    assert abs(max(0.0, again["excess"]) - placement["sides"]["in"]["leak"]) < 0.02
    # and it is exact
    server = eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    got = client.infer(server, cal.feeds[0])
    assert_close(got["logits"], run_original(onnx.load(CNN), cal.feeds[0])[0], 1e-4)
    assert comp.placement == placement


def test_compile_max_leak_refuses_when_no_cut_reaches(tmp_path):
    with pytest.raises(P.PlanError, match="short of running the model on the client"):
        eeonnx.compile(CNN, tmp_path / "out", max_leak=0.0)
    assert not (tmp_path / "out").exists()


def test_plan_cli_token_model(tmp_path):
    plot = tmp_path / "plan.png"
    r = CliRunner().invoke(main, ["plan", str(BERT), "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kind"] == "token" and plot.stat().st_size > 1000
    first = next(x for x in data["rows"] if x["side"] == "in" and x["split_at"] == "")
    # ids on the wire are a substitution cipher: every repeated token matches itself
    ids = first["metrics"]["input_ids"]
    assert ids["nn_match"] == 1.0 and ids["cluster_purity"] == 1.0
    assert any(x["side"] == "in" and x["split_at"].startswith("in:") for x in data["rows"])
    r = CliRunner().invoke(main, ["plan", str(BERT), "--text", str(plot)])
    assert r.exit_code == 2 and "--tokenizer" in r.output


def test_plan_kv_decoder_starts_from_an_empty_cache():
    """Server state (a KV cache) is fed empty; no prefix cut moves a block that reads the cache."""
    model = ROOT / "models" / "fixtures" / "llama_kv.ts.onnx"
    comp = pipeline.analyze(model)
    assert comp.state, "the fixture should have server state"
    rows, cal = P.measure(comp)
    reads_state = {n.name for n in comp.model.graph for v in n.inputs
                   if v is not None and v.name in {s.input for s in comp.state}}
    cuts = S.candidate_cuts(comp, comp.model)
    g = S._Graph(comp.model, comp)
    for c in cuts:
        assert not {g.nodes[k].name for k in c.plan.prefix} & reads_state
    assert any(r.side == "out" and r.spec for r in rows)
