"""Keys: reproducible compiles from a key file, fresh keys re-key everything, the secret
stays on the client, and bad key files are refused."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from eeonnx.errors import KeyFileError
from eeonnx.compiler.keys import KEY_FORMAT, Key, write_key
from helpers import G, compile_plain, roundtrip, same_artifact_file, server_weights


def small_model():
    """16 channels in and out: two fresh keys collide on a boundary with probability ~1/16!."""
    g = G(seed=7)
    g.input("x", [1, 16, 4, 4])
    a = g.node("Relu", [g.conv("x", 16, 16, name="conv1")])
    a = g.node("Relu", [g.conv(a, 16, 16, 3, name="conv2")])
    g.conv(a, 16, 16, name="conv3", outputs="y")
    g.output("y")
    return g.build()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _same_artifact(a, b, rel):
    return same_artifact_file(a, b, rel)


ARTIFACT_FILES = ("server/model.onnx", "client/encode.onnx", "client/decode.onnx", "client/manifest.json",
                  "client/key.json")


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_same_key_file_reproduces_the_artifact(model, tmp_path):
    first = tmp_path / "first"
    comp = roundtrip(model, first)
    key_file = first / "out" / "client" / "key.json"
    src = first / "model.onnx"  # what roundtrip compiled (the manifest names its source)
    second = tmp_path / "second"
    compile_plain(src, second, key=key_file)
    third = tmp_path / "third"
    compile_plain(str(src), third, key=str(key_file))
    fourth = tmp_path / "fourth"  # from memory: same files, only the manifest's "source" differs
    compile_plain(model, fourth, key=key_file)
    for rel in ARTIFACT_FILES[:3] + ARTIFACT_FILES[4:]:
        assert _same_artifact(fourth, first / "out", rel), rel
    # the manifests differ in the artifact id (new per compile) and in the server file's digest
    # (it holds the id), and the one from memory names no source file
    volatile = {"source", "artifact_id", "server"}
    manifests = [json.loads(_read(d / "client" / "manifest.json")) for d in (first / "out", second, third, fourth)]
    assert len({m["artifact_id"] for m in manifests}) == 4
    for m in manifests[1:]:
        assert {k: v for k, v in m.items() if k not in volatile} == \
            {k: v for k, v in manifests[0].items() if k not in volatile}
    assert same_artifact_file(second, first / "out", "client/manifest.json")
    for rel in ARTIFACT_FILES[:3] + ARTIFACT_FILES[4:]:
        assert _same_artifact(second, first / "out", rel), rel
        assert _same_artifact(third, first / "out", rel), rel
    assert comp.key.fingerprint() == json.loads(_read(second / "client" / "manifest.json"))["key_fingerprint"]


def test_reused_key_roundtrips(model, tmp_path):
    key = Key.generate()
    path = tmp_path / "my.key.json"
    write_key(key, str(path))
    comp = roundtrip(model, tmp_path / "a", key=path)
    assert comp.key.secret == key.secret
    with open(tmp_path / "a" / "out" / "client" / "key.json", encoding="utf-8") as f:
        assert bytes.fromhex(json.load(f)["secret"]) == key.secret


def test_fresh_key_rekeys_everything(model, tmp_path):
    compile_plain(model, tmp_path / "a")
    compile_plain(model, tmp_path / "b")
    ka = json.loads(_read(tmp_path / "a" / "client" / "key.json"))["secret"]
    kb = json.loads(_read(tmp_path / "b" / "client" / "key.json"))["secret"]
    assert ka != kb
    wa, wb = server_weights(tmp_path / "a"), server_weights(tmp_path / "b")  # by original name
    assert wa.keys() == wb.keys()
    differing = [n for n in wa if not np.array_equal(wa[n], wb[n])]
    # every permuted weight of this model (all conv weights and biases) is permuted differently
    assert set(differing) == {n for n in wa if n.startswith("conv")}, differing
    assert _read(tmp_path / "a" / "client" / "encode.onnx") != _read(tmp_path / "b" / "client" / "encode.onnx")
    assert _read(tmp_path / "a" / "client" / "decode.onnx") != _read(tmp_path / "b" / "client" / "decode.onnx")


def test_key_file_is_private(model, tmp_path):
    compile_plain(model, tmp_path / "out")
    mode = stat.S_IMODE(os.stat(tmp_path / "out" / "client" / "key.json").st_mode)
    assert mode == 0o600, oct(mode)
    data = json.loads(_read(tmp_path / "out" / "client" / "key.json"))
    assert data["format"] == KEY_FORMAT
    assert len(bytes.fromhex(data["secret"])) == 32


def test_write_key_is_0600_even_with_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        write_key(Key.generate(), str(tmp_path / "k.json"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k.json").st_mode) == 0o600


def test_secret_never_reaches_the_server(model, tmp_path):
    compile_plain(model, tmp_path / "out")
    secret_hex = json.loads(_read(tmp_path / "out" / "client" / "key.json"))["secret"]
    secret = bytes.fromhex(secret_hex)
    server = _read(tmp_path / "out" / "server" / "model.onnx")
    for blob in (server,):
        assert secret_hex.encode() not in blob and secret_hex.upper().encode() not in blob
        assert secret not in blob
        for i in range(0, len(secret_hex) - 16 + 1):
            assert secret_hex[i:i + 16].encode() not in blob
        for i in range(0, len(secret) - 8 + 1):
            assert secret[i:i + 8] not in blob
    # nor the key's fingerprint: the server file says nothing about which key it was made with
    fp = json.loads(_read(tmp_path / "out" / "client" / "manifest.json"))["key_fingerprint"]
    assert fp.encode() not in server


def test_permutation_properties():
    key = Key(bytes(range(32)))
    for n in (2, 3, 5, 64, 1000):
        p = key.permutation(f"label{n}", n)
        assert p.dtype == np.int64
        assert sorted(p.tolist()) == list(range(n))
        np.testing.assert_array_equal(p, key.permutation(f"label{n}", n))  # deterministic
    np.testing.assert_array_equal(key.permutation("one", 1), [0])
    assert not np.array_equal(key.permutation("big", 1000), np.arange(1000))
    # different labels and different keys give unrelated permutations
    assert not np.array_equal(key.permutation("a", 64), key.permutation("b", 64))
    other = Key(bytes(range(1, 33)))
    assert not np.array_equal(key.permutation("a", 64), other.permutation("a", 64))


@pytest.mark.parametrize("n, draws", [(2, 4000), (3, 6000)])
def test_identity_has_frequency_one_over_n_factorial(n, draws):
    """Uniform over all n! permutations: the identity included, each outcome ~draws/n!
    (binomial bounds at ~5 sigma), over many keys."""
    from collections import Counter
    from math import factorial, sqrt

    counts = Counter(tuple(Key.generate().permutation("class", n).tolist()) for _ in range(draws))
    outcomes = factorial(n)
    assert len(counts) == outcomes, counts  # the identity is among them
    mean = draws / outcomes
    sd = sqrt(draws * (1 / outcomes) * (1 - 1 / outcomes))
    for perm, c in counts.items():
        assert abs(c - mean) <= 5 * sd, (perm, c, mean)
    assert abs(counts[tuple(range(n))] - mean) <= 5 * sd


def test_permutations_look_uniform():
    """Position of element 0 over many labels is spread over all positions (n = 4)."""
    key = Key.generate()
    counts = np.zeros(4)
    for i in range(800):
        counts[int(np.argmax(key.permutation(f"l{i}", 4) == 0))] += 1
    assert counts.min() > 140 and counts.max() < 260, counts  # expectation 200 per position, sd ~12


def test_fisher_yates_rejects_biased_words():
    """A word at or above the largest multiple of m is redrawn, never reduced mod m."""
    from eeonnx.compiler import keys

    class Fixed:
        def __init__(self, words):
            self.words = list(words)

        def next(self):
            return self.words.pop(0)

    top = (1 << 64) - 1  # >= limit for m = 3 (2**64 mod 3 = 1): must be rejected
    orig = keys._Words
    try:
        keys._Words = lambda seed, hint: Fixed([top, 0, 0])  # i=2: reject top, j=0; i=1: j=0
        p = keys.uniform_permutation(b"x", 3)
    finally:
        keys._Words = orig
    # i=2 swaps 2<->0 -> [2,1,0]; i=1 swaps 1<->0 -> [1,2,0]
    assert p.tolist() == [1, 2, 0]


def test_key_roundtrips_through_json(tmp_path):
    key = Key.generate()
    write_key(key, str(tmp_path / "k.json"))
    loaded = Key.load(tmp_path / "k.json")
    assert loaded.secret == key.secret
    assert loaded.fingerprint() == key.fingerprint()
    assert key.secret.hex() not in key.fingerprint()


@pytest.mark.parametrize("content", [
    None,                                                                   # missing file
    "",                                                                     # empty
    "not json at all",
    "[1, 2, 3]",
    json.dumps({"secret": "00" * 32}),                                      # no format
    json.dumps({"format": "eeonnx-key/999", "secret": "00" * 32}),          # wrong format
    json.dumps({"format": KEY_FORMAT}),                                     # no secret
    json.dumps({"format": KEY_FORMAT, "secret": "00" * 31}),                # 31 bytes
    json.dumps({"format": KEY_FORMAT, "secret": "00" * 33}),                # 33 bytes
    json.dumps({"format": KEY_FORMAT, "secret": "zz" * 32}),                # not hex
    json.dumps({"format": KEY_FORMAT, "secret": 12345}),                    # not a string
], ids=["missing", "empty", "not-json", "json-list", "no-format", "wrong-format", "no-secret", "short",
        "long", "not-hex", "int-secret"])
def test_bad_key_files_are_refused(content, model, tmp_path):
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeyFileError):
        Key.load(path)
    with pytest.raises(KeyFileError):
        compile_plain(model, tmp_path / "out", key=path)
    assert not (tmp_path / "out").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".eeonnx-")]


def test_key_directory_is_refused(model, tmp_path):
    with pytest.raises(KeyFileError):
        compile_plain(model, tmp_path / "out", key=tmp_path)
