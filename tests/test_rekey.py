"""eeonnx rekey: a fresh key from the artifact alone, exact, sharing no permutation with the old one
(nor, for classes above the permutations, any group element)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import eeonnx
from eeonnx.compiler.rekey import RekeyError, rekey
from helpers import CPU, assert_close, random_feeds, run_original

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "models" / "cnn.onnx"
MLP = ROOT / "models" / "mlp.onnx"
BERT = ROOT / "models" / "fixtures" / "bert.ts.onnx"
BERT_TOK = ROOT / "models" / "fixtures" / "bert.tokenizer.json"


def _feeds(model, seed):
    """Random images for float inputs; for a token model: ids in the vocabulary, a mask of
    ones, token types zero (integer inputs other than the ids are structure)."""
    client_free = random_feeds(model, {"batch": 1, "sequence": 7}, seed)
    rng = np.random.default_rng(seed)
    for i, (name, x) in enumerate(client_free.items()):
        if np.issubdtype(x.dtype, np.integer):
            client_free[name] = rng.integers(0, 100, x.shape).astype(x.dtype) if i == 0 else np.zeros_like(x)
            if "mask" in name:
                client_free[name] = np.ones_like(x)
    return client_free


def _exact(model_path, out, seed=0, rtol=1e-4):
    model = onnx.load(model_path)
    feeds = _feeds(model, seed)
    want = run_original(model, feeds)
    got = eeonnx.Client(out).infer(eeonnx.Server(Path(out) / "server" / "model.onnx", providers=CPU), feeds)
    for o, w in zip(model.graph.output, want):
        assert_close(got[o.name], w, rtol, what=o.name)


def _inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _record(out):
    with open(Path(out) / "client" / "rekey.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "out"
    # auto split, so encode/decode hold client layers too; permutations only: re-keyed bit for bit
    eeonnx.compile(CNN, out, transforms="permutation")
    return out


def test_rekey_is_exact_and_shares_no_permutation(cnn, tmp_path):
    out2 = tmp_path / "out2"
    summary = rekey(cnn, out2)
    _exact(CNN, out2)
    _exact(CNN, cnn)  # the old artifact stays valid
    old, new = _record(cnn), _record(out2)
    assert [c["name"] for c in old["classes"]] == [c["name"] for c in new["classes"]]
    for a, b in zip(old["classes"], new["classes"]):
        assert a["perm"] != b["perm"], f"class {a['name']} kept its permutation"
        assert sorted(b["perm"]) == list(range(a["size"]))
    # what the server holds really changed: every tensor under a class of > 2 elements
    for rel in ("server/model.onnx", "client/encode.onnx", "client/decode.onnx"):
        before, after = _inits(cnn / rel), _inits(out2 / rel)
        assert before.keys() == after.keys()
        for name in old["files"][rel]:
            assert before[name].shape == after[name].shape
            assert sorted(before[name].reshape(-1).tolist()) == sorted(after[name].reshape(-1).tolist())
    changed = [n for n in old["files"]["server/model.onnx"]
               if _inits(cnn / "server/model.onnx")[n].tobytes() != _inits(out2 / "server/model.onnx")[n].tobytes()]
    assert changed
    m1 = json.loads((cnn / "client" / "manifest.json").read_text())
    m2 = json.loads((out2 / "client" / "manifest.json").read_text())
    assert m1["key_fingerprint"] != m2["key_fingerprint"] == summary["new_key"]
    assert m2["server"]["sha256"] != m1["server"]["sha256"]
    assert oct(os.stat(out2 / "client" / "key.json").st_mode & 0o777) == "0o600"
    # a re-keyed artifact can be re-keyed again
    rekey(out2, tmp_path / "out3")
    _exact(CNN, tmp_path / "out3", seed=1)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    pytest.importorskip("tokenizers")
    out = tmp_path_factory.mktemp("bert") / "out"
    eeonnx.compile(BERT, out, tokenizer=BERT_TOK)
    return out


def test_rekey_token_model_and_tokenizer(bert, tmp_path):
    import tokenizers

    out = bert
    rekey(out, tmp_path / "out2")
    _exact(BERT, tmp_path / "out2")
    c1, c2 = eeonnx.Client(out), eeonnx.Client(tmp_path / "out2")
    assert not np.array_equal(c1.id_map(), c2.id_map())
    plain = tokenizers.Tokenizer.from_file(str(BERT_TOK))
    text = "hello world the quick brown fox"
    want = plain.encode(text).ids
    assert c2.plain_tokenizer().encode(text) == want
    # the encrypted tokenizer speaks the new key's ids
    enc = tokenizers.Tokenizer.from_file(str(tmp_path / "out2" / "client" / "tokenizer.json"))
    assert enc.encode(text).ids == c2.id_map()[want].tolist()


def test_rekey_refusals(cnn, bert, tmp_path):
    with pytest.raises(RekeyError, match="new directory"):
        rekey(cnn, cnn)
    # a class that is not a permutation
    bad = tmp_path / "bad"
    rekey(cnn, bad)
    rec = _record(bad)
    rec["classes"][0]["group"] = "orthogonal"
    (bad / "client" / "rekey.json").write_text(json.dumps(rec))
    with pytest.raises(RekeyError, match="orthogonal"):
        rekey(bad, tmp_path / "x")
    # a modified client file: the token id map of encode.onnx reversed
    bad2 = tmp_path / "bad2"
    rekey(bert, bad2)
    entries = _record(bad2)["files"]["client/encode.onnx"]
    enc = onnx.load(bad2 / "client" / "encode.onnx")
    t = [t for t in enc.graph.initializer if "index" in entries.get(t.name, {}) and entries[t.name]["inverse"]][0]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[::-1].copy(), t.name))
    onnx.save(enc, bad2 / "client" / "encode.onnx")
    with pytest.raises(RekeyError, match="does not match"):
        rekey(bad2, tmp_path / "y")
    # no record at all
    (bad2 / "client" / "rekey.json").unlink()
    with pytest.raises(RekeyError, match="no re-key record"):
        rekey(bad2, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def _npz(out):
    with np.load(Path(out) / "client" / "rekey.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _changed_elements(a, b) -> list[str]:
    """The continuous classes of a and b: each has the same arrays in both, and some
    array of each differs (an orthogonal group's scales are ones in both)."""
    old, new = _npz(a), _npz(b)
    assert old.keys() == new.keys() and old
    by_class: dict[str, bool] = {}
    for k in old:
        assert old[k].shape == new[k].shape, k
        c = k.rsplit(".", 1)[0]
        by_class[c] = by_class.get(c, False) or not np.allclose(old[k], new[k])
    kept = [c for c, changed in by_class.items() if not changed]
    assert not kept, f"classes {kept} kept their transform"
    return sorted(by_class)


@pytest.fixture(scope="module")
def mlp_max(tmp_path_factory):
    """The MLP with every class at its largest group: diagonal hidden units behind ReLU,
    a linear class on the logits (through decode's matrix)."""
    out = tmp_path_factory.mktemp("mlp_max") / "out"
    eeonnx.compile(MLP, out, split="none", min_key_bits=0, transforms="max",
                   allow_clear=("probs",), allow_weak=("probs",))
    return out


def test_rekey_continuous_classes(mlp_max, tmp_path):
    out = mlp_max
    rec = _record(out)
    groups = {c["group"] for c in rec["classes"]}
    assert {"diagonal", "linear"} <= groups, groups
    assert oct(os.stat(out / "client" / "rekey.npz").st_mode & 0o777) == "0o600"
    rekey(out, tmp_path / "out2")
    _exact(MLP, tmp_path / "out2", rtol=1e-5)
    # every continuous class got a new element of its group (and a new permutation)
    assert _changed_elements(out, tmp_path / "out2")
    new = _npz(tmp_path / "out2")
    for k in new:
        if k.endswith(".scale"):
            assert (new[k] > 0).all()
        if k.endswith(".ortho"):
            assert np.allclose(new[k].T @ new[k], np.eye(new[k].shape[0]), atol=1e-12)
    for a, b in zip(rec["classes"], _record(tmp_path / "out2")["classes"]):
        assert a.get("transform") == b.get("transform") and a["group"] == b["group"]
    # the old client cannot read the new server: decode with the old key is wrong
    model = onnx.load(MLP)
    feeds = _feeds(model, 3)
    want = run_original(model, feeds)
    c_old = eeonnx.Client(out)
    srv_new = eeonnx.Server(tmp_path / "out2" / "server" / "model.onnx", providers=CPU)
    got = c_old.decode(srv_new.run(c_old.encode(feeds)))
    o = model.graph.output[0].name
    assert np.abs(got[o] - want[0]).max() > 1e-2 * np.abs(want[0]).max()
    # repeated re-keys stay exact (each one re-rounds: measured in the module docstring)
    prev = tmp_path / "out2"
    for k in range(3, 6):
        rekey(prev, tmp_path / f"out{k}")
        prev = tmp_path / f"out{k}"
    _exact(MLP, prev, seed=1, rtol=1e-5)


def test_rekey_continuous_refusals(mlp_max, tmp_path):
    # a boundary map altered: refused, nothing written
    bad = tmp_path / "bad"
    rekey(mlp_max, bad)
    maps = [(rel, n) for rel, entries in _record(bad)["files"].items() for n, e in entries.items() if "map" in e]
    assert maps  # the input x's linear class: encode multiplies by its matrix
    rel, name = maps[0]
    graph = onnx.load(bad / rel)
    t = [t for t in graph.graph.initializer if t.name == name][0]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1.01), t.name))
    onnx.save(graph, bad / rel)
    with pytest.raises(RekeyError, match="does not match"):
        rekey(bad, tmp_path / "x")
    # the transforms' arrays missing
    bad2 = tmp_path / "bad2"
    rekey(mlp_max, bad2)
    (bad2 / "client" / "rekey.npz").unlink()
    with pytest.raises(RekeyError, match="rekey.npz"):
        rekey(bad2, tmp_path / "y")
    # a record from before continuous re-keys (no element recorded)
    bad3 = tmp_path / "bad3"
    rekey(mlp_max, bad3)
    rec = _record(bad3)
    for c in rec["classes"]:
        c.pop("transform", None)
    (bad3 / "client" / "rekey.json").write_text(json.dumps(rec))
    with pytest.raises(RekeyError, match="does not hold"):
        rekey(bad3, tmp_path / "z")
    assert not any((tmp_path / n).exists() for n in "xyz")


def test_rekey_server_in_the_original_structure(tmp_path):
    """A TorchScript decoder whose server keeps the original's nodes: changed tensors are
    Constant node values there, and rekey re-folds them too (golden check on ORT). Under
    --transforms max its rotary Q/K carry pair rotations (one transform per attention,
    beside the classes): re-drawn and re-folded too."""
    from eeonnx.client.verify import verify

    model = ROOT / "models" / "fixtures" / "llama_kv.ts.onnx"
    out = tmp_path / "out"
    eeonnx.compile(model, out, transforms="max")
    assert _record(out).get("pairs"), "no rotary pair map to re-key"
    rekey(out, tmp_path / "out2")
    assert _changed_elements(out, tmp_path / "out2")
    errs = verify(model, tmp_path / "out2")
    assert errs and all(c.err < 1e-4 for c in errs.values()), errs


def test_rekey_per_head_maps_and_kv_cache(tmp_path):
    """GPT-2 with a KV cache under --transforms max: per-head blocks (a transform that
    spans the head and head-dim axes and names its head class) are re-drawn and re-folded
    like any other; the re-keyed artifact matches the original on ORT (verify) and generates
    the same greedy tokens as the artifact it came from."""
    from eeonnx.client.verify import verify

    model = ROOT / "models" / "fixtures" / "gpt2_kv.dynamo.onnx"
    out = tmp_path / "out"
    eeonnx.compile(model, out, transforms="max")
    kinds = {c["group"] for c in _record(out)["classes"]}
    assert "per-head linear" in kinds, kinds
    rekey(out, tmp_path / "out2")
    assert _changed_elements(out, tmp_path / "out2")
    errs = verify(model, tmp_path / "out2")
    assert errs and all(c.err < 1e-5 for c in errs.values()), errs
    client = eeonnx.Client(tmp_path / "out2")
    server = eeonnx.Server(tmp_path / "out2" / "server" / "model.onnx", providers=CPU)
    want = list(eeonnx.Client(out).generate(eeonnx.Server(out / "server" / "model.onnx", providers=CPU),
                                            [5, 17, 42], max_new_tokens=5))
    assert list(client.generate(server, [5, 17, 42], max_new_tokens=5)) == want
