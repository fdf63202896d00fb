"""eeonnx rekey: a fresh key from the artifact alone, exact, sharing no permutation with the old one."""
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


def _exact(model_path, out, seed=0):
    model = onnx.load(model_path)
    feeds = _feeds(model, seed)
    want = run_original(model, feeds)
    got = eeonnx.Client(out).infer(eeonnx.Server(Path(out) / "server" / "model.onnx", providers=CPU), feeds)
    for o, w in zip(model.graph.output, want):
        assert_close(got[o.name], w, 1e-4, what=o.name)


def _inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def _record(out):
    with open(Path(out) / "client" / "rekey.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "out"
    eeonnx.compile(CNN, out)  # the default: auto split, so encode/decode hold client layers too
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


def test_rekey_refuses_transforms_beyond_permutations(tmp_path):
    from eeonnx.compiler.api import compile as compile_model

    out = tmp_path / "out"
    try:
        compile_model(ROOT / "models" / "mlp.onnx", out, transforms="max")
    except TypeError:  # pragma: no cover - an eeonnx without transforms
        pytest.skip("no --transforms in this eeonnx")
    groups = {c["group"] for c in _record(out)["classes"]}
    assert groups - {"permutation"}, "the MLP should get a class beyond permutations"
    with pytest.raises(RekeyError, match="transform"):
        rekey(out, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_rekey_server_in_the_original_structure(tmp_path):
    """A TorchScript decoder whose server keeps the original's nodes: changed tensors are
    Constant node values there, and rekey re-folds them too (golden check on ORT)."""
    from eeonnx.client.verify import verify

    model = ROOT / "models" / "fixtures" / "llama_kv.ts.onnx"
    out = tmp_path / "out"
    eeonnx.compile(model, out)
    rekey(out, tmp_path / "out2")
    errs = verify(model, tmp_path / "out2")
    assert errs and all(c.err < 1e-4 for c in errs.values()), errs
