"""Key hygiene: permutations are bound to the model's content, public-looking constants do not
give their class away, tied weights share their classes, and reusing a key on another model warns."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from eeonnx.compiler.keys import Key, write_key
from eeonnx.errors import KeyReuseWarning
from helpers import G, classes_of, compile_plain, roundtrip, server_weights

D, V = 16, 40


def lm(vocab=V, seed=0, head_tied=False, perturb=0.0):
    """ids -> Gather(wte [vocab, D]) -> MatMul W1 -> Relu -> MatMul head [D, vocab] -> logits.
    ``head_tied``: the head is a separate copy of wte transposed (as TorchScript GPT-2 stores it)."""
    g = G(seed=seed)
    g.input("ids", [1, 5], TensorProto.INT64)
    wte = g.rng.standard_normal([vocab, D]).astype(np.float32)
    g.const("wte", wte)
    x = g.node("Gather", ["wte", "ids"], axis=0)
    w1 = g.w("w1", [D, D])
    if perturb:
        g.inits[-1] = numpy_helper.from_array(numpy_helper.to_array(g.inits[-1]) + np.float32(perturb), "w1")
    h = g.node("Relu", [g.node("MatMul", [x, w1])])
    head = wte.T.copy() if head_tied else g.rng.standard_normal([D, vocab]).astype(np.float32)
    g.const("head", head)
    g.node("MatMul", [h, "head"], "logits")
    g.output("logits")
    return g.build()


def _perm_of(comp, init: str, axis: int) -> np.ndarray:
    return comp.weight_index[init][axis]


def _compile(model, out, key):
    return compile_plain(model, out, key=key)


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "k.json"
    write_key(Key.generate(), str(path))
    return path


def test_same_key_other_model_gives_unrelated_permutations(tmp_path, key_file):
    a = _compile(lm(), tmp_path / "a", key_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KeyReuseWarning)
        b = _compile(lm(perturb=1e-3), tmp_path / "b", key_file)  # a "fine-tune": one weight moved
        grown = _compile(lm(vocab=V + 4), tmp_path / "c", key_file)  # 4 more vocabulary rows
    for other in (b, grown):
        # the hidden axis (same size in all three) gets another permutation
        pa, po = _perm_of(a, "w1", 0), _perm_of(other, "w1", 0)
        assert not np.array_equal(pa, po)
        assert np.mean(pa == po) < 0.5  # unrelated: ~1/16 fixed agreements expected
    # the vocabulary map of the first V ids is not kept when the table grows
    va, vc = _perm_of(a, "wte", 0), _perm_of(grown, "wte", 0)[:V]
    assert np.mean(va == vc) < 0.2, np.mean(va == vc)
    # and the same key on the same model still reproduces it
    again = _compile(lm(), tmp_path / "again", key_file)
    for name, index in a.weight_index.items():
        for p, q in zip(index, again.weight_index[name]):
            assert (p is None and q is None) or np.array_equal(p, q), name


def test_key_reuse_on_another_model_warns(tmp_path, key_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyReuseWarning)
        _compile(lm(), tmp_path / "a", key_file)  # first use: no warning
        recorded = tmp_path / "a" / "client" / "key.json"
        assert len(json.loads(recorded.read_text())["models"]) == 1
        _compile(lm(), tmp_path / "a2", recorded)  # same model again: no warning
    with pytest.warns(KeyReuseWarning, match="other model"):
        _compile(lm(perturb=1e-3), tmp_path / "b", recorded)
    assert len(json.loads((tmp_path / "b" / "client" / "key.json").read_text())["models"]) == 2


def test_cli_prints_key_reuse_warning(tmp_path):
    from click.testing import CliRunner

    from eeonnx.cli import main

    onnx.save(lm(), tmp_path / "a.onnx")
    onnx.save(lm(perturb=1e-3), tmp_path / "b.onnx")
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "a"), "--split", "none",
                                  "--min-key-bits", "0"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "b.onnx"), "-o", str(tmp_path / "b"), "--split", "none",
                                  "--min-key-bits", "0", "--key", str(tmp_path / "a" / "client" / "key.json")])
    assert r.exit_code == 0 and "warning:" in r.output and "other model" in r.output, r.output


# -- public constants ----------------------------------------------------------------------
def rope_like(table):
    """x [1, 8] * table [8] -> MatMul W [8, 16] -> y: the table shares the 8-wide class."""
    g = G(seed=5)
    g.input("x", [1, 8])
    g.const("freq", np.asarray(table, np.float32))
    h = g.node("Mul", ["x", "freq"])
    g.node("MatMul", [h, g.w("w", [8, 16])], "y")
    g.output("y")
    return g.build()


@pytest.mark.parametrize("table, kind", [
    (10000.0 ** (-np.arange(8) / 8), "geometric"),  # RoPE inv_freq
    (np.arange(8) * 0.5 + 1, "arithmetic"),
])
def test_sorted_positional_constant_exposes_its_class(table, kind, tmp_path):
    model = rope_like(table)
    comp = roundtrip(model, tmp_path, allow_clear=("x",))
    spec = comp.spec()
    assert spec["freq"] == ["P"] and spec["w"][0] == "P", spec  # kept the identity
    assert [(e["tensor"], e["size"]) for e in comp.exposed] == [("freq", 8)]
    assert kind in comp.exposed[0]["reason"]
    manifest = json.loads((tmp_path / "out" / "client" / "manifest.json").read_text())
    assert manifest["exposed"] == comp.exposed
    srv = server_weights(tmp_path / "out")  # by original name
    np.testing.assert_array_equal(srv["freq"], np.asarray(table, np.float32))  # not permuted: nothing to sort


def test_unordered_constant_keeps_its_class(tmp_path):
    table = np.random.default_rng(0).standard_normal(8)
    comp = roundtrip(rope_like(table), tmp_path)
    spec = comp.spec()
    assert classes_of(spec["freq"][0]) and classes_of(spec["freq"][0]) == classes_of(spec["w"][0]), spec
    assert comp.exposed == []


def test_check_reports_exposed_classes():
    from click.testing import CliRunner

    from eeonnx.cli import main

    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        onnx.save(rope_like(10000.0 ** (-np.arange(8) / 8)), path)
        r = CliRunner().invoke(main, ["check", path])
        assert "exposed" in r.output and "freq" in r.output, r.output
        r = CliRunner().invoke(main, ["check", path, "--json"])
        assert json.loads(r.output)["exposed"][0]["tensor"] == "freq"


# -- tied weights ------------------------------------------------------------------------
def test_tied_copies_share_their_classes(tmp_path):
    rt = roundtrip(lm(head_tied=True), tmp_path, full=True)
    spec = rt.comp.spec()
    assert classes_of(spec["wte"][0]) and classes_of(spec["wte"][0]) == classes_of(spec["head"][1]), spec
    assert classes_of(spec["wte"][1]) == classes_of(spec["head"][0]), spec
    assert rt.comp.ties == [{"tensors": ["wte", "head"], "transposed": True}]
    # the server's copies are still each other's transpose: matching them links nothing new
    srv = server_weights(rt.out)  # by original name
    np.testing.assert_array_equal(srv["wte"], srv["head"].T)
    # counted once: vocabulary and hidden classes, plus the (now shared) hidden class of w1
    assert len(rt.comp.classes) == 2, rt.comp.classes


def test_untied_weights_keep_independent_classes(tmp_path):
    comp = roundtrip(lm(head_tied=False), tmp_path)
    spec = comp.spec()
    assert classes_of(spec["wte"][0]).isdisjoint(classes_of(spec["head"][1])), spec
    assert comp.ties == []
