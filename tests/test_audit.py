"""eeonnx audit: the attacks succeed where they must, see only the attacker's
knowledge, and the scorecard has its documented fields."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import eeonnx
from eeonnx.audit import known_weights, structure
from eeonnx.audit.score import score_alignment
from eeonnx.audit.scorecard import audit
from eeonnx.audit.truth import GroundTruth
from eeonnx.audit.view import ServerView, load_weights
from eeonnx.cli import main


FIXTURES = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "models", "fixtures")
BERT = f"{FIXTURES}/bert.ts.onnx"
BERT_TOK = f"{FIXTURES}/bert.tokenizer.json"
CNN = f"{FIXTURES}/../cnn.onnx"


@pytest.fixture(scope="module")
def bert_out(tmp_path_factory):
    """BERT with permutations only: the artifact the exact attacks must break."""
    out = tmp_path_factory.mktemp("audit") / "bert"
    eeonnx.compile(BERT, str(out), tokenizer=BERT_TOK, transforms="permutation")
    return str(out)


@pytest.fixture(scope="module")
def bert_max(tmp_path_factory):
    """BERT with the default transforms (max): classes above the permutations."""
    out = tmp_path_factory.mktemp("audit") / "bert_max"
    eeonnx.compile(BERT, str(out), tokenizer=BERT_TOK)
    return str(out)


@pytest.fixture(scope="module")
def cnn_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "cnn"
    eeonnx.compile(CNN, str(out))
    return str(out)


def _server_only(out, tmp_path):
    """A copy of the artifact without client/: what the attacker has."""
    dst = tmp_path / "attacker"
    shutil.copytree(out, dst)
    shutil.rmtree(dst / "client")
    return str(dst)


def test_known_weights_attack_recovers_every_class_and_the_vocabulary(bert_out, tmp_path):
    view = ServerView(_server_only(bert_out, tmp_path))  # the attack runs without client files
    rec = known_weights.attack(view.float_weights(), load_weights(BERT))
    truth = GroundTruth(bert_out)  # read only after the attack returned
    s = score_alignment(rec, truth, view.weights)
    assert s["classes_scored"] == len(truth.secret_classes())
    assert s["classes_recovered"] == 1.0
    assert s["vocabulary"] == 1.0 and s["vocabulary_size"] == 320
    assert s["weights_rebuilt"] == 1.0


def test_known_weights_attack_recovers_no_continuous_class(bert_max, tmp_path):
    """Server + the public original weights against the default transforms: sorted-slice
    matching recovers no class whose weights carry a continuous transform (their values
    changed), while permutation-only classes still fall (this is why they are not enough)."""
    view = ServerView(_server_only(bert_max, tmp_path))
    rec = known_weights.attack(view.float_weights(), load_weights(BERT))
    truth = GroundTruth(bert_max)
    s = score_alignment(rec, truth, view.weights)
    groups = {c["name"]: c["group"] for c in truth.record["classes"]}
    continuous = [c for c in s["classes"] if groups.get(c, "permutation") != "permutation"]
    assert continuous, groups
    assert all(s["classes"][c] == 0.0 for c in continuous), {c: s["classes"][c] for c in continuous}


def test_score_counts_a_wrong_recovery_as_wrong(bert_out):
    view = ServerView(bert_out)
    rec = known_weights.attack(view.float_weights(), load_weights(BERT))
    rng = np.random.default_rng(0)
    for entry in rec["tensors"].values():  # scramble every recovered axis
        entry["axes"] = [None if a is None else rng.permutation(a) for a in entry["axes"]]
    s = score_alignment(rec, GroundTruth(bert_out), view.weights)
    assert s["vocabulary"] < 0.05 and s["classes_recovered"] < 0.5


def test_known_weights_attack_finds_nothing_in_an_unrelated_model(bert_out):
    view = ServerView(bert_out)
    rec = known_weights.attack(view.float_weights(), load_weights(CNN))
    s = score_alignment(rec, GroundTruth(bert_out), view.weights)
    assert s["classes_recovered"] == 0.0 and s["vocabulary"] == 0.0


def test_scorecard_json_fields_and_attacks(bert_out, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"The {w} of the model is what the server must not learn, paragraph {i}."
                                for i, w in enumerate(["weight", "input", "output", "key"] * 30)))
    r = CliRunner().invoke(main, ["audit", bert_out, "--original", BERT, "--text", str(text), "--json",
                                  "--budget", "10", "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) >= {"artifact", "artifact_id", "permutation_entropy_bits", "seconds", "attacks", "exposures"}
    names = [a["name"] for a in data["attacks"]]
    assert names == ["known_weights", "finetune", "known_weights_linear", "finetune_linear", "frequency",
                     "token_wire", "image_wire", "linkability"]
    for a in data["attacks"]:
        assert set(a) >= {"name", "threat_model", "applies", "recovered", "headline", "seconds", "target", "verdict"}
    by = {a["name"]: a for a in data["attacks"]}
    assert by["known_weights"]["verdict"] == "broken"
    assert by["finetune"]["applies"] is False and by["finetune_linear"]["applies"] is False
    assert by["known_weights_linear"]["applies"] is True
    curve = by["frequency"]["recovered"]["curve"]
    assert curve and all({"tokens", "recovered", "baseline"} <= set(p) for p in curve)
    assert (tmp_path / "rep" / "audit.md").exists() and (tmp_path / "rep" / "frequency.png").exists()


def test_image_wire_of_the_cnn_correlates_above_baseline(cnn_out, tmp_path):
    r = audit(cnn_out, budget=10)
    img = {a["name"]: a for a in r["attacks"]}["image_wire"]
    assert img["applies"] and img["recovered"]["excess"] > 0.2, img["recovered"]
    assert img["recovered"]["wire"] == "stem.conv_out"  # the auditor reads original names (the server's are opaque)


def test_audit_refuses_a_directory_without_the_client_half(bert_out, tmp_path):
    r = CliRunner().invoke(main, ["audit", _server_only(bert_out, tmp_path)])
    assert r.exit_code == 2 and "manifest.json" in r.output


# -- structural exposures on a hand-made server file (independent of the compiler) --
def _server_file(tmp_path, tensors, producer="", names=None):
    inits = [numpy_helper.from_array(a, n) for n, a in tensors.items()]
    node = helper.make_node("Add", ["x", inits[0].name], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [4])],
                          [helper.make_tensor_value_info("y", 1, [4])], inits)
    m = helper.make_model(g, producer_name=producer)
    (tmp_path / "server").mkdir()
    onnx.save(m, tmp_path / "server" / "model.onnx")
    return ServerView(tmp_path)


def test_structure_finds_tied_tensors_names_and_producer(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((8, 4)).astype(np.float32)
    view = _server_file(tmp_path, {"t0": emb, "t1": emb[rng.permutation(8)][:, rng.permutation(4)],
                                   "word_embeddings": rng.standard_normal((4, 4)).astype(np.float32)},
                        producer="pytorch")
    kinds = {e["kind"]: e for e in structure.metadata_exposures(view) + structure.tied_exposures(view)}
    assert "tied" in kinds and kinds["tied"]["items"] == [["t0", "t1"]]
    assert "names" in kinds and "word_embeddings" in kinds["names"]["items"]
    assert any("producer_name" in e["items"] for e in structure.metadata_exposures(view))


def test_structure_finds_a_monotone_constant_and_sorting_recovers_its_key(tmp_path):
    plain = np.exp(-np.arange(16) / 4).astype(np.float32)  # like a RoPE inv_freq: strictly decreasing
    p = np.random.default_rng(1).permutation(16)
    view = _server_file(tmp_path, {"t0": plain[p]})

    class Truth:  # the auditor's knowledge for this one tensor
        def axis_index(self, name, axis):
            return p

        def plain(self, name, s):
            return s[np.argsort(p)]

    (e,) = structure.order_exposures(view, Truth())
    assert e["kind"] == "monotone_constant" and e["items"][0]["sorting_recovers_key"] is True


def test_linkability_of_two_keys_of_one_model(tmp_path, bert_out):
    other = tmp_path / "other"
    eeonnx.compile(BERT, str(other), transforms="permutation")
    link = structure.linkability(ServerView(bert_out), ServerView(other))
    assert link["matched"] > 0.9


def test_finetune_alignment_recovers_a_noisy_fine_tune(tmp_path):
    pytest.importorskip("scipy")
    from eeonnx.audit import finetune

    # a simulated private fine-tune of the public BERT fixture: Gaussian deltas of 30% of each tensor's scale
    m = onnx.load(BERT)
    rng = np.random.default_rng(0)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1:
            sd = a.std() if a.std() > 0 else 0.02
            t.CopyFrom(numpy_helper.from_array((a + 0.3 * sd * rng.standard_normal(a.shape)).astype(np.float32),
                                               t.name))
    onnx.save(m, tmp_path / "private.onnx")
    out = tmp_path / "out"
    eeonnx.compile(str(tmp_path / "private.onnx"), str(out), transforms="permutation")
    view = ServerView(_server_only(str(out), tmp_path))
    exact = known_weights.attack(view.float_weights(), load_weights(BERT))
    assert len(exact["unmatched"]) > 30  # the values changed: exact matching finds nothing
    rec = finetune.attack(view.float_weights(), load_weights(BERT))
    s = score_alignment(rec, GroundTruth(str(out)), view.weights)
    assert s["vocabulary"] == 1.0 and s["classes_recovered"] == 1.0, s


def test_token_wire_clustering_after_a_client_split(tmp_path):
    # the embedding layers run on the client: the server receives one vector per position
    out = tmp_path / "split"
    eeonnx.compile(BERT, str(out), split_at=("in:/bert/embeddings/LayerNorm/LayerNormalization_output_0",))
    r = audit(str(out), budget=10)
    by = {a["name"]: a for a in r["attacks"]}
    assert by["frequency"]["applies"] is False  # no token ids cross the wire
    tw = by["token_wire"]
    assert tw["applies"] and tw["recovered"]["nn_match"] > tw["recovered"]["baseline"] + 0.2, tw["recovered"]
