"""Pair groups (compiler/pairs.py, rules/pair_rules.py) with --transforms max: with rotary
embeddings, q's and k's head_dim is Cat(f, f) and each frequency pair takes a 2-D rotation
times a scale (a_i on q, 1/conj(a_i) on k), folded into W_q and W_k; the rotary tables stay
as they are. Checked on ONNX Runtime (decode(server(encode(x))) == original(x)), on the
folded weights (no sorted column of W_q/W_k matches an original one), and against a wrong
statement (a multiplier whose halves differ declared symmetric: exactness breaks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import eeonnx
from eeonnx.compiler import layout as L
from eeonnx.compiler import pairs as P
from eeonnx.compiler.keys import Key
from tests.helpers import assert_close, random_feeds, run_original
from tests.test_head_groups import SECRET, _compile, _decoded, _server_weight, attention

ROOT = Path(__file__).resolve().parents[1]


def test_pair_blocks_are_complex_multiplications():
    tr = P.draw(Key(SECRET), "p", 5)
    m, mt, inv = tr.blocks(1), tr.blocks(-1), tr.blocks(1, inverse=True)
    j = np.array([[0.0, 1.0], [-1.0, 0.0]])  # rotate_half per pair: (a, b) -> (-b, a)
    for i in range(5):
        assert np.allclose(m[i] @ mt[i].T, np.eye(2))  # q M . k M^-T = q . k
        assert np.allclose(m[i] @ inv[i], np.eye(2))
        assert np.allclose(m[i] @ j, j @ m[i]) and np.allclose(mt[i] @ j, j @ mt[i])
        assert np.allclose(m[i][0, 0], m[i][1, 1]) and np.allclose(m[i][0, 1], -m[i][1, 0])


def _sorted_column_matches(server: np.ndarray, original: np.ndarray) -> int:
    s, o = np.sort(server, axis=0).T, np.sort(original, axis=0).T
    return sum(bool((np.abs(o - c).max(axis=1) < 1e-6).any()) for c in s)


@pytest.mark.parametrize("kv_heads,rep", [(2, 1), (2, 2)], ids=["mha", "gqa"])
def test_rotary_pairs_rotate_and_scale_exactly(tmp_path, kv_heads, rep):
    model = attention(kv_heads, rep, rotary="half")
    comp, out = _compile(model, tmp_path)
    tensors = {t for i in comp.pair_info for t in i["tensors"]}
    assert tensors == {"wq", "wk"}, comp.pair_info
    # one map per KV head (the query heads of a group share it): the KV head class of wk
    wk = comp.model.graph.initializers["wk"]
    kv = L.resolve(L.resolve(comp.analysis.known(wk)[1]).factors[0]).uid
    assert all(i.get("head") == comp.classes[kv].name for i in comp.pair_info), comp.pair_info
    tr = comp.pair_maps[wk][0][2]
    assert tr.head == kv and tr.scale.shape == (kv_heads, 2) and not np.allclose(tr.theta[0], tr.theta[1])
    feeds = random_feeds(model)
    for got, want in zip(_decoded(out, feeds), run_original(model, feeds)):
        assert_close(got, want, 1e-5, "y")
    # the same server graph as a permutation-only compile (normalization folded the tables)
    onnx.save(model, tmp_path / "p.onnx")
    eeonnx.compile(tmp_path / "p.onnx", tmp_path / "perm", key=Key(SECRET), split="none", min_key_bits=0)
    ops = [[n.op_type for n in onnx.load(d / "server" / "model.onnx").graph.node] for d in (out, tmp_path / "perm")]
    assert ops[0] == ops[1]
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name in ("wq", "wk"):
        assert _sorted_column_matches(_server_weight(out, comp, name), orig[name]) == 0, name
    import json

    manifest = json.loads((out / "client" / "manifest.json").read_text())
    assert {t for p in manifest["pairs"] for t in p["tensors"]} == {"wq", "wk"}


def test_a_table_with_unequal_halves_keeps_pairs_permuted(tmp_path):
    model = attention(2, 1, rotary="table")
    comp, out = _compile(model, tmp_path)
    assert comp.pair_info == []
    feeds = random_feeds(model)
    for got, want in zip(_decoded(out, feeds), run_original(model, feeds)):
        assert_close(got, want, 1e-5, "y")


def test_a_wrong_symmetry_statement_breaks_exactness(tmp_path, monkeypatch):
    """Declaring every multiplier symmetric (equal halves) turns the pairs on for the
    table that is not: the decoded output is wrong."""
    monkeypatch.setattr(P.PairSolver, "symmetric", lambda self, value, f: True)
    model = attention(2, 1, rotary="table")
    comp, out = _compile(model, tmp_path)
    assert comp.pair_info
    feeds = random_feeds(model)
    got, want = _decoded(out, feeds)[0], run_original(model, feeds)[0]
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def test_check_spec_shows_pairs():
    from click.testing import CliRunner

    from eeonnx.cli import main as cli_main

    r = CliRunner().invoke(cli_main, ["check", str(ROOT / "models" / "fixtures" / "llama.dynamo.onnx"),
                                      "--spec", "--transforms", "max"])
    assert r.exit_code == 0, r.output
    assert "pair rotation-scale" in r.output and "per-head linear" in r.output


def test_pair_application_matches_explicit_pairs():
    """pairs.apply on [h, s, Cat(f, f)] (and merged Kron(h, Cat(f, f))) equals the explicit
    per-head, per-pair 2x2 products on (x_i, x_{i+n})."""
    h, f = L.Var(3), L.Var(4)
    tr = P.draw(Key(SECRET), "t", 4, h.uid, 3)
    b = tr.blocks(1)
    x = np.random.default_rng(2).standard_normal((3, 5, 8))
    want = x.copy()
    for k in range(3):
        for i in range(4):
            want[k, :, [i, i + 4]] = (np.stack([x[k, :, i], x[k, :, i + 4]], -1) @ b[k, i]).T
    site = L.Cat((f, f))
    assert np.allclose(P.apply(x, [h, L.Public(5), site], f.uid, b, h.uid), want)
    merged = np.moveaxis(x, 1, 0).reshape(5, 24)
    got = P.apply(merged, [L.Public(5), L.Kron((h, site))], f.uid, b, h.uid)
    assert np.allclose(got.reshape(5, 3, 8), np.moveaxis(want, 1, 0))
