"""The linear-fit counter-attack (least squares / orthogonal Procrustes) against
``--transforms max``: with the original weights it recovers the continuous classes
that a public-axis weight exposes, with unrelated weights it recovers nothing, and
the scorecard reports it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import eeonnx
from eeonnx.audit import linear_fit
from eeonnx.audit.score import score_linear
from eeonnx.audit.scorecard import audit, to_json, to_text
from eeonnx.audit.truth import GroundTruth
from eeonnx.audit.view import ServerView, load_weights

pytest.importorskip("scipy")

V, T, D, H = 40, 24, 12, 8  # vocabulary, positions (a public axis longer than the stream), stream, hidden


def tiny_lm(seed: int) -> onnx.ModelProto:
    """ids -> embedding + positional table -> LayerNorm -> ReLU MLP (residual) -> LayerNorm -> head."""
    r = np.random.default_rng(seed)
    inits = []

    def init(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, dtype=np.float32), name))

    init("emb", r.standard_normal((V, D)))
    init("pos", r.standard_normal((T, D)))
    init("g1", 1 + 0.1 * r.standard_normal(D))
    init("b1", 0.1 * r.standard_normal(D))
    init("w1", 0.3 * r.standard_normal((D, H)))
    init("c1", 0.1 * r.standard_normal(H))
    init("w2", 0.3 * r.standard_normal((H, D)))
    init("g2", 1 + 0.1 * r.standard_normal(D))
    init("b2", 0.1 * r.standard_normal(D))
    init("head", 0.3 * r.standard_normal((D, V)))
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Add", ["e", "pos"], ["x0"]),
             helper.make_node("LayerNormalization", ["x0", "g1", "b1"], ["n1"], axis=-1),
             helper.make_node("MatMul", ["n1", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "c1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["x0", "m2"], ["x1"]),
             helper.make_node("LayerNormalization", ["x1", "g2", "b2"], ["n2"], axis=-1),
             helper.make_node("MatMul", ["n2", "head"], ["logits"])]
    g = helper.make_graph(nodes, "tiny_lm", [helper.make_tensor_value_info("ids", TP.INT64, [1, T])],
                          [helper.make_tensor_value_info("logits", TP.FLOAT, [1, T, V])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("linear")
    model = tiny_lm(0)
    onnx.save(model, d / "original.onnx")
    onnx.save(tiny_lm(1), d / "unrelated.onnx")
    eeonnx.compile(model, str(d / "out"), transforms="max")
    return d


def _attack(lm, reference):
    """The attack on a copy of server/ alone; the truth is read only after it returned."""
    attacker = lm / "attacker"
    if not attacker.exists():
        shutil.copytree(lm / "out" / "server", attacker / "server")
    view = ServerView(str(attacker))
    rec = linear_fit.attack(view.float_weights(), load_weights(str(lm / reference)))
    return view, rec


def _stream_class(out):
    """The orthogonal-ones class of the residual stream, its permutation and orthogonal
    factor, from the compile's own record (client/rekey.json + rekey.npz)."""
    rec = json.loads((out / "client" / "rekey.json").read_text())
    (cls,) = [c for c in rec["classes"] if c["group"] == "orthogonal-ones"]
    with np.load(out / "client" / "rekey.npz") as z:
        ortho = z[f"{cls['name']}.ortho"]
    return cls["name"], np.asarray(cls["perm"]), ortho


def _decrypt_rows(server_emb, m):
    """The server's embedding table with its stream axis (axis 1) undone by the map m."""
    return np.linalg.solve(m, server_emb.astype(np.float64).T).T


def test_linear_fit_with_the_original_recovers_the_orthogonal_stream(lm):
    view, rec = _attack(lm, "original.onnx")
    name, perm, ortho = _stream_class(lm / "out")
    # the stream's true map on slices along its axis, from the record's convention (fold:
    # x -> x @ ortho on plain indices, then take by the permutation): server_k = ortho.T[perm] @ plain_k
    want = ortho.T[perm]
    got = [e["maps"][k] for e in rec["tensors"].values() for k in e["maps"] if e["maps"][k].shape == want.shape]
    errs = [np.linalg.norm(m - want) / np.linalg.norm(want) for m in got]
    assert errs and min(errs) < 1e-3
    best = got[int(np.argmin(errs))]
    # independent of the record: the map decrypts the server's embedding table, whose
    # vocabulary axis is only permuted: every decrypted row is a row of the public table
    emb = numpy_helper.to_array([t for t in onnx.load(str(lm / "original.onnx")).graph.initializer
                                 if t.name == "emb"][0]).astype(np.float64)
    (server_emb,) = [a for a in view.weights.values() if a.shape == (V, D)]
    rows = _decrypt_rows(server_emb, best)
    dist = np.linalg.norm(rows[:, None] - emb[None], axis=-1).min(1)
    assert dist.max() < 1e-4 * np.linalg.norm(emb, axis=1).max()
    # the auditor's score agrees
    s = score_linear(rec, GroundTruth(str(lm / "out")), view.weights)
    assert s["errors"][name] < 1e-3
    assert s["continuous_recovered"] > 0 and s["weights_rebuilt"] > 0


def test_linear_fit_with_unrelated_weights_recovers_nothing(lm):
    view, rec = _attack(lm, "unrelated.onnx")
    name, perm, ortho = _stream_class(lm / "out")
    want = ortho.T[perm]
    for e in rec["tensors"].values():
        for m in e["maps"].values():
            if m.shape == want.shape:
                assert np.linalg.norm(m - want) / np.linalg.norm(want) > 0.5
    s = score_linear(rec, GroundTruth(str(lm / "out")), view.weights)
    assert s["classes_scored"] >= 3
    assert s["classes_recovered"] == 0.0 and min(s["errors"].values()) > 0.5
    assert not s["weights_rebuilt"]


def test_scorecard_reports_the_linear_fit_next_to_the_permutation_scores(lm):
    r = audit(str(lm / "out"), original=str(lm / "original.onnx"), base=str(lm / "unrelated.onnx"))
    by = {a["name"]: a for a in json.loads(to_json(r))["attacks"]}
    kw, ft = by["known_weights_linear"], by["finetune_linear"]
    assert "original" in kw["threat_model"] and "Procrustes" in kw["threat_model"]
    assert kw["verdict"] == "broken" and kw["recovered"]["continuous_recovered"] > 0
    assert ft["verdict"] == "holds" and ft["recovered"]["classes_recovered"] == 0.0
    assert {"errors", "continuous_scored", "weights_rebuilt", "threshold"} <= set(kw["recovered"])
    assert "known_weights_linear" in to_text(r) and "continuous classes" in to_text(r)


def test_gram_fit_sees_through_a_permuted_other_axis():
    """S = c Q R P (Q orthogonal, P a permutation of the columns): fit_gram recovers c Q
    without knowing P; for an unrelated R it gives nothing or a wrong map."""
    r = np.random.default_rng(3)
    n, cols = 16, 40
    ref = r.standard_normal((n, cols))
    q, _ = np.linalg.qr(r.standard_normal((n, n)))
    s = 1.7 * q @ ref[:, r.permutation(cols)]
    m, _ = linear_fit.fit_gram(s, ref)
    assert np.linalg.norm(m - 1.7 * q) / np.linalg.norm(1.7 * q) < 1e-6
    other = linear_fit.fit_gram(s, r.standard_normal((n, cols)))
    assert other is None or np.linalg.norm(other[0] - 1.7 * q) / np.linalg.norm(1.7 * q) > 0.5


def test_scaled_permutations_on_both_axes_are_recovered_and_calibrated_by_a_bias():
    """S = (D_a P_a) R (D_b P_b)^T with signed scales on both axes: the centred log-abs
    fit finds both maps up to one scalar, and a bias carrying the class at exponent -1
    (v = D_a^-1 P_a w) fixes it; with an unrelated reference nothing is found."""
    r = np.random.default_rng(5)
    na, nb = 12, 20
    ref = r.standard_normal((na, nb))
    pa, pb = r.permutation(na), r.permutation(nb)
    da = np.exp(r.uniform(-1, 1, na)) * r.choice([-1, 1], na)
    db = np.exp(r.uniform(-1, 1, nb))
    ta = np.zeros((na, na))
    ta[np.arange(na), pa] = da  # slices along axis 0: server_0 = ta @ ref_0
    tb = np.zeros((nb, nb))
    tb[np.arange(nb), pb] = db
    s = ta @ ref @ tb.T
    maps, res = linear_fit.fit_scaled_permutations(s, ref)
    assert res < 1e-8
    w = r.standard_normal(na)
    assert linear_fit._calibrate(maps, [(w[pa] / da, w)])
    assert np.linalg.norm(maps[0] - ta) / np.linalg.norm(ta) < 1e-8
    assert np.linalg.norm(maps[1] - tb) / np.linalg.norm(tb) < 1e-8
    assert linear_fit.fit_scaled_permutations(s, r.standard_normal((na, nb))) is None


def test_truth_axis_maps_send_the_original_onto_the_server_weights(tmp_path):
    """The scorer's true maps (class transforms, rotary pair maps, permutations) are the
    compile's: applied to each original weight they give the server's, rotary q/k too."""
    llama = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "models", "fixtures",
                                       "llama_kv.ts.onnx")
    out = tmp_path / "llama"
    eeonnx.compile(llama, str(out), transforms="max")
    truth = GroundTruth(str(out))
    server = ServerView(str(out)).weights
    original = load_weights(llama)
    checked = with_pairs = 0
    for orig, name in truth.manifest["server_names"].items():
        entry = truth.terms.get(name)
        if entry is None or name not in server or server[name].ndim != 2 or orig not in original:
            continue
        maps = [truth.axis_map(name, k) for k in range(2)]
        assert all(m is not None for m in maps), name
        got = linear_fit._apply(linear_fit._apply(original[orig].astype(np.float64), 0, maps[0]), 1, maps[1])
        s = server[name].astype(np.float64)
        assert np.linalg.norm(got - s) / np.linalg.norm(s) < 1e-5, (orig, name)
        checked += 1
        with_pairs += bool(entry.get("pairs"))
    assert checked >= 10 and with_pairs >= 2
