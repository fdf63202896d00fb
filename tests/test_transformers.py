"""Real transformer exports (models/fixtures/: tiny random-weight BERT, sentence embedder, GPT-2,
Llama, ViT from both torch exporters), compiled with the default options (``split="auto"``,
128 key bits) and run on ONNX Runtime CPU: exactness at two batch/sequence sizes, honest
encryption (ids, outputs and weights differ on the wire), the layouts the analysis must find
(vocabulary, d_model, heads x head_dim with rotary pairs, FFN widths, tied embeddings, public
position rows) and the client tokenizer. No torch needed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import eeonnx
from helpers import (CPU, GroupTruth, assert_close, classes_of, original_tensors, same_artifact_file, server_name,
                     server_weights)

FIXTURES = Path(__file__).resolve().parents[1] / "models" / "fixtures"
VOCAB = 320  # every language fixture (models/fixtures/README.md)
D_MODEL = 64

MODELS = [
    "bert.ts.onnx",
    "sentence_embed.ts.onnx",
    "llama_kv.ts.onnx",
    "gpt2.dynamo.onnx",
    "gpt2_kv.dynamo.onnx",
    "llama.dynamo.onnx",
    "vit.dynamo.onnx",
]
SIZES = [(2, 7), (1, 3)]  # (batch, sequence); neither is the export's (3, 5)


# --------------------------------------------------------------------------- helpers
class Compiled:
    def __init__(self, name: str, out: Path, **kw):
        self.name = name
        self.path = FIXTURES / name
        self.out = out
        self.comp = eeonnx.compile(self.path, out, **kw)
        self.model = onnx.load(self.path)
        self.client = eeonnx.Client(out)
        self.server = eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
        self.manifest = self.client.manifest
        self.server_proto = onnx.load(out / "server" / "model.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.plain = ort.InferenceSession(str(self.path), so, providers=CPU)

    @property
    def state(self) -> list[dict]:
        return self.manifest.get("state", [])

    def run_plain(self, feeds: dict) -> dict:
        names = [o.name for o in self.plain.get_outputs()]
        return dict(zip(names, self.plain.run(None, feeds)))

    def input_shapes(self) -> dict:
        return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                         for d in i.type.tensor_type.shape.dim] for i in self.model.graph.input}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """name -> Compiled (each fixture compiled once per module, with the default options)."""
    cache: dict[str, Compiled] = {}

    def get(name: str) -> Compiled:
        if name not in cache:
            cache[name] = Compiled(name, tmp_path_factory.mktemp(name.replace(".", "_")) / "out")
        return cache[name]

    return get


def make_feeds(c: Compiled, batch: int, seq: int, rng, past: int = 0) -> dict:
    """Realistic inputs: ids in [0, VOCAB), mask ones, token types zeros, positions arange,
    pixels standard normal, empty (or ``past``-long zero) KV cache."""
    feeds = {}
    for name, shape in c.input_shapes().items():
        if name.startswith("past_key_values"):
            feeds[name] = np.zeros([batch, shape[1], past, shape[3]], np.float32)
        elif name == "input_ids":
            feeds[name] = rng.integers(0, VOCAB, (batch, seq)).astype(np.int64)
        elif name == "attention_mask":
            feeds[name] = np.ones((batch, past + seq), np.int64)
        elif name == "token_type_ids":
            feeds[name] = np.zeros((batch, seq), np.int64)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(past, past + seq), (batch, seq)).astype(np.int64)
        elif name == "pixel_values":
            feeds[name] = rng.standard_normal([batch] + shape[1:]).astype(np.float32)
        else:
            raise AssertionError(f"{c.name}: no feed for input '{name}'")
    return feeds


def encrypted_run(c: Compiled, feeds: dict, state: dict | None = None):
    """encode -> server -> decode; the state (server layout) goes to the server as is.
    Returns (encoded, served, decoded)."""
    enc = c.client.encode({n: feeds[n] for n in c.client.input_names})
    srv_feeds = dict(enc)
    for s in c.state:
        srv_feeds[s["server_input"]] = state[s["input"]] if state else feeds[s["input"]]
    served = c.server.run(srv_feeds)
    return enc, served, c.client.decode(served)


def layout(spec: dict, name: str) -> list[str]:
    assert name in spec, f"no initializer '{name}' in the spec"
    return spec[name]


def init_shapes(c: Compiled) -> dict[str, tuple]:
    """Shapes of the normalized model's initializers (the keys of ``spec()``: Constant nodes included)."""
    return {n: tuple(v.shape) for n, v in c.comp.model.graph.initializers.items()}


def class_sizes(c: Compiled) -> dict[str, int]:
    return {k["name"]: k["size"] for k in c.manifest["classes"]}


CLS = r"(c\d+)"


def one_class(axis: str, size: int) -> str:
    """The axis is exactly one secret class of ``size``; returns its name."""
    m = re.fullmatch(rf"{CLS}\[{size}\]", axis)
    assert m, f"axis layout {axis!r} is not a single secret class of size {size}"
    return m.group(1)


# --------------------------------------------------------------------------- exactness and honesty
@pytest.mark.parametrize("name", MODELS)
def test_roundtrip_two_sizes(compiled, name):
    c = compiled(name)
    rng = np.random.default_rng(0)
    for batch, seq in SIZES:
        feeds = make_feeds(c, batch, seq, rng)
        want = c.run_plain(feeds)
        enc, served, got = encrypted_run(c, feeds)
        assert set(got) == set(c.client.output_names)
        for out_name in got:
            assert_close(got[out_name], want[out_name], 1e-4, what=f"{name} {out_name} at {batch}x{seq}")

        # ids travel encrypted by value
        if "input_ids" in feeds:
            e = enc[server_name(c.out, "input_ids")]
            assert e.shape == feeds["input_ids"].shape and e.dtype == np.int64
            assert not np.array_equal(e, feeds["input_ids"]), "token ids reach the server unchanged"
            assert e.min() >= 0 and e.max() < VOCAB
        # no float input reaches the server as it is
        for n, x in feeds.items():
            if x.dtype == np.float32 and x.size and not n.startswith("past_"):
                assert all(not (v.shape == x.shape and np.array_equal(v, x)) for v in enc.values())
        # what the server returns is not what the client gets
        for out_name, d in got.items():
            for s_name, s in served.items():
                if s.shape == d.shape:
                    assert not np.allclose(s, d, rtol=1e-3, atol=1e-5), \
                        f"{name}: server output '{s_name}' equals the decoded '{out_name}'"


@pytest.mark.parametrize("name", MODELS)
def test_server_weights_are_the_originals_under_the_key(compiled, name):
    """Every server weight with an original namesake is the original under the key:
    permuted only (the same values, moved) or, under a class above the permutations,
    the original back to 1e-5 of its largest value once its permutations and recorded
    group elements are undone (helpers.GroupTruth); the largest weight changed."""
    from eeonnx.compiler.rules.norm_groups import apply_prefold

    c = compiled(name)
    truth = GroupTruth(c.out)
    prefold = {v.name: ops for v, ops in (getattr(c.comp, "prefold", {}) or {}).items()}
    orig = original_tensors(c.model)
    served = server_weights(c.out)  # by original name (the server's names are opaque)
    biggest = max((t for t in c.model.graph.initializer if t.name in served), key=lambda t: np.prod(t.dims))
    changed, continuous = [], []
    for name, s in served.items():
        if name not in orig:
            continue
        o = orig[name]
        assert s.shape == o.shape and s.dtype == o.dtype, name
        entry = truth.entry("server/model.onnx", server_name(c.out, name))  # the record: server names
        if truth.continuous(entry) or (entry and name in prefold):
            want = o.astype(np.float64)
            want = apply_prefold(want, prefold[name]) if name in prefold else want
            assert_close(truth.plain(s, entry), want, 1e-5, what=f"'{name}' (group element undone)")
            continuous.append(name)
        else:
            assert np.array_equal(np.sort(s, axis=None), np.sort(o, axis=None)), f"'{name}': not a permutation"
        if s.tobytes() != o.tobytes():
            changed.append(name)
    assert len(changed) >= 4, f"{name}: only {changed} differ from the originals"
    assert biggest.name in changed, f"{name}: the largest weight '{biggest.name}' is not permuted"
    assert c.manifest["coverage"]["share"] > 0.8
    if c.comp.transforms:  # the default transforms (max): some weights are more than permuted
        assert continuous, f"{name}: classes above the permutations but no weight carries one"


@pytest.mark.parametrize("name", [m for m in MODELS if not m.startswith("vit")])
def test_padded_batch(compiled, name):
    """Masks are public structure, so padding works as in the plain model: batch 3, row 1
    left-padded, row 2 right-padded, positions from the mask, a second segment."""
    c = compiled(name)
    batch, seq = 3, 6
    feeds = make_feeds(c, batch, seq, np.random.default_rng(2))
    mask = np.ones((batch, seq), np.int64)
    mask[1, :2] = 0
    mask[2, -1] = 0
    feeds["attention_mask"] = mask
    if "position_ids" in feeds:
        pos = np.cumsum(mask, 1) - 1
        pos[mask == 0] = 1
        feeds["position_ids"] = pos
    if "token_type_ids" in feeds:
        feeds["token_type_ids"][:, 3:] = 1
    want = c.run_plain(feeds)
    _, _, got = encrypted_run(c, feeds)
    for out_name in got:
        assert_close(got[out_name], want[out_name], 1e-4, what=f"{name} {out_name} (padded)")


@pytest.mark.parametrize("name", ["llama_kv.ts.onnx", "gpt2_kv.dynamo.onnx"])
def test_kv_cache_step(compiled, name):
    """Prefill (past 0, seq 7, batch 2), then one token with the cache each side returned:
    the server's cache stays in its own layout and the decoded logits still match."""
    c = compiled(name)
    rng = np.random.default_rng(1)
    feeds = make_feeds(c, 2, 7, rng)
    want = c.run_plain(feeds)
    _, served, got = encrypted_run(c, feeds)
    assert_close(got["logits"], want["logits"], 1e-4, what="prefill logits")

    step = make_feeds(c, 2, 1, rng, past=7)
    plain_caches = 0
    for s in c.state:
        step[s["input"]] = want[s["output"]]
        assert served[s["server_output"]].shape == want[s["output"]].shape
        plain_caches += bool(np.allclose(served[s["server_output"]], want[s["output"]]))
    # the cache the server keeps is not the plain one (head/within-head axes permuted); a key
    # cache whose within-head axis is the rotary class (exposed, kept the identity) is permuted
    # only by its 2 kv heads, the identity half of the time: but not every cache is plain
    assert plain_caches < len(c.state)
    want2 = c.run_plain(step)
    _, _, got2 = encrypted_run(c, step, state={s["input"]: served[s["server_output"]] for s in c.state})
    assert_close(got2["logits"], want2["logits"], 1e-4, what="decode-step logits")


# --------------------------------------------------------------------------- boundary
@pytest.mark.parametrize("name", [m for m in MODELS if not m.startswith("vit")])
def test_text_boundary(compiled, name):
    """Ids cross encrypted by value, masks/positions/token types as public structure, no split."""
    c = compiled(name)
    m = c.manifest
    ins = {i["name"]: i for i in m["inputs"]}
    assert ins["input_ids"]["value_size"] == VOCAB and not ins["input_ids"]["clear"]
    for n in ("attention_mask", "token_type_ids", "position_ids"):
        if n in ins:
            assert n in m["split"]["public_structure"], (n, m["split"])
    assert m["split"]["client_prefix_nodes"] == m["split"]["client_suffix_nodes"] == 0
    assert all(b >= 128 for b in m["split"]["wire_bits"].values()), m["split"]
    for o in m["outputs"]:
        assert not o["clear"] and o["secret_axes"], o


def test_vit_split_moves_patch_embedding_and_head(compiled):
    """Pixels (3 channels) and 10 logits are weak: the patch Conv runs in encode.onnx, the
    classifier in decode.onnx, the server sees 64-wide permuted features."""
    c = compiled("vit.dynamo.onnx")
    s = c.manifest["split"]
    assert s["client_prefix_nodes"] >= 1 and s["client_suffix_nodes"] >= 1, s
    assert all(b >= 128 for b in s["wire_bits"].values()), s
    enc = onnx.load(c.out / "client" / "encode.onnx")
    assert "Conv" in [n.op_type for n in enc.graph.node]
    assert "Conv" not in [n.op_type for n in c.server_proto.graph.node]
    assert len(c.server_proto.graph.node) < len(c.model.graph.node)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("name", ["llama.dynamo.onnx", "llama_kv.ts.onnx"])
def test_llama_layouts(compiled, name):
    c = compiled(name)
    spec, shapes, sizes = c.comp.spec(), init_shapes(c), class_sizes(c)

    emb = layout(spec, "lm.model.embed_tokens.weight")
    vocab, d = one_class(emb[0], VOCAB), one_class(emb[1], D_MODEL)
    assert c.manifest["inputs"][0]["value_layout"] == f"{vocab}[{VOCAB}]"

    # queries: [d, kron(kv_heads, group, cat(half, half))]; the rotary half class is exposed by
    # the public frequency table (a geometric progression: sorting it reads the permutation), so
    # it stays the identity (P) and is reported as exposed
    q_re = rf"kron\({CLS}\[2\], {CLS}\[2\], P\)"
    k_re = rf"kron\({CLS}\[2\], P\)"
    v_re = rf"kron\({CLS}\[2\], {CLS}\[16\]\)"
    o_re = rf"kron\({CLS}\[2\], {CLS}\[2\], {CLS}\[16\]\)"
    q = [(n, re.fullmatch(q_re, spec[n][1])) for n, s in shapes.items() if s == (64, 64) and len(spec[n]) == 2]
    q = [(n, mm) for n, mm in q if mm]
    assert len(q) == 2, f"query weights: {[(n, spec[n]) for n, s in shapes.items() if s == (64, 64)]}"
    freq = [t for t, sh in shapes.items() if len(sh) == 1 and sh[0] == 8]
    assert freq and all(spec[t] == ["P"] for t in freq)
    values = original_tensors(c.model)
    exposed = c.manifest["exposed"]
    assert [e["size"] for e in exposed] == [8] and "geometric" in exposed[0]["reason"], exposed
    r = values[exposed[0]["tensor"]].astype(np.float64).reshape(-1)
    np.testing.assert_allclose(r[1:] / r[:-1], r[1] / r[0], rtol=1e-5)  # it is one, independently
    heads = set()
    for n, mm in q:
        assert spec[n][0] == f"{d}[{D_MODEL}]"
        kvh, grp = mm.groups()
        heads.add(kvh)
        # keys share the kv-head class; values and output projections match
        ks = [k for k, s in shapes.items() if s == (64, 32) and (km := re.fullmatch(k_re, spec[k][1]))
              and km.groups() == (kvh,)]
        assert len(ks) == 1, (n, spec[n])
        vs = [v for v, s in shapes.items() if s == (64, 32) and (vm := re.fullmatch(v_re, spec[v][1]))
              and vm.group(1) == kvh]
        assert len(vs) == 1
        vdim = re.fullmatch(v_re, spec[vs[0]][1]).group(2)
        os_ = [o for o, s in shapes.items() if s == (64, 64) and (om := re.fullmatch(o_re, spec[o][0]))
               and om.groups() == (kvh, grp, vdim)]
        assert len(os_) == 1 and spec[os_[0]][1] == f"{d}[{D_MODEL}]"
        for cls, size in ((kvh, 2), (grp, 2), (vdim, 16)):
            assert sizes[cls] == size
    assert len(heads) == 2  # one head class per layer

    # FFN (SwiGLU): gate/up [d, f], down [f, d], one f class per layer
    up = [n for n, s in shapes.items() if s == (64, 128)]
    down = [n for n, s in shapes.items() if s == (128, 64)]
    assert len(up) == 4 and len(down) == 2
    ffn = {one_class(spec[n][1], 128) for n in up}
    assert {one_class(spec[n][0], 128) for n in down} == ffn and len(ffn) == 2
    assert all(spec[n][0] == f"{d}[{D_MODEL}]" for n in up)

    # untied LM head: [d, vocab'] with its own secret vocabulary class, which decode un-permutes
    head = [n for n, s in shapes.items() if s == (64, VOCAB)]
    assert len(head) == 1
    assert spec[head[0]][0] == f"{d}[{D_MODEL}]"
    out_vocab = one_class(spec[head[0]][1], VOCAB)
    assert c.manifest["outputs"][0]["layout"][-1] == f"{out_vocab}[{VOCAB}]"

    for cls, size in ((vocab, VOCAB), (d, D_MODEL), (out_vocab, VOCAB)):
        assert sizes[cls] == size
    assert c.comp.pins() == []


def test_gpt2_tied_embedding_shares_the_vocab_class(compiled):
    c = compiled("gpt2.dynamo.onnx")
    spec = c.comp.spec()
    wte = layout(spec, "lm.lm_head.weight")  # the one table, read by the Gather and the LM head
    vocab, d = one_class(wte[0], VOCAB), one_class(wte[1], D_MODEL)
    assert [n for n, s in init_shapes(c).items() if s == (VOCAB, D_MODEL)] == ["lm.lm_head.weight"]
    ids = next(i for i in c.manifest["inputs"] if i["name"] == "input_ids")
    logits = next(o for o in c.manifest["outputs"] if o["name"] == "logits")
    assert ids["value_layout"] == logits["layout"][2] == f"{vocab}[{VOCAB}]"
    # decode un-permutes logits with the inverse of the map encode applies to ids
    feeds = {"input_ids": np.arange(VOCAB, dtype=np.int64)[None], "attention_mask": np.ones((1, VOCAB), np.int64)}
    id_map = c.client.encode(feeds)[server_name(c.out, "input_ids")][0]
    assert sorted(id_map.tolist()) == list(range(VOCAB)) and not np.array_equal(id_map, np.arange(VOCAB))
    assert np.array_equal(c.client.id_map(), id_map)
    # position rows are public, columns are d_model
    assert layout(spec, "lm.transformer.wpe.weight") == ["P", f"{d}[{D_MODEL}]"]


def test_bert_position_rows_public_columns_secret(compiled):
    c = compiled("bert.ts.onnx")
    spec = c.comp.spec()
    word = layout(spec, "bert.embeddings.word_embeddings.weight")
    one_class(word[0], VOCAB)
    d = one_class(word[1], D_MODEL)
    assert layout(spec, "bert.embeddings.position_embeddings.weight") == ["P", f"{d}[{D_MODEL}]"]
    assert layout(spec, "bert.embeddings.LayerNorm.weight") == [f"{d}[{D_MODEL}]"]
    # attention: kron(heads, head_dim) on the query/key/value biases
    q = layout(spec, "bert.encoder.layer.0.attention.self.query.bias")
    assert re.fullmatch(rf"kron\({CLS}\[4\], {CLS}\[16\]\)", q[0]), q
    assert layout(spec, "bert.encoder.layer.0.attention.self.key.bias") == q


def test_check_spec_matches_compile(compiled):
    """eeonnx.check (no output written) finds the same layouts as compile."""
    c = compiled("gpt2.dynamo.onnx")
    chk = eeonnx.check(FIXTURES / "gpt2.dynamo.onnx").spec()

    def shape_of(spec):  # class names may differ between runs; the structure may not
        rename = {}
        out = {}
        for k in sorted(spec):
            out[k] = [re.sub(r"c\d+", lambda m: rename.setdefault(m.group(0), f"k{len(rename)}"), a)
                      for a in spec[k]]
        return out

    assert shape_of(chk) == shape_of(c.comp.spec())
    assert {cl for axes in chk.values() for a in axes for cl in classes_of(a)}


# --------------------------------------------------------------------------- client tokenizer
TEXTS = ["Hello world!", "The quick brown fox jumps over the lazy dog.",
         "Unseen wörds: zyzzyva 98765 ~~", "GPT-2 ties the input embedding to the language model head."]


@pytest.mark.parametrize("name,tok", [("gpt2.dynamo.onnx", "gpt2.tokenizer.json"), ("bert.ts.onnx", "bert.tokenizer.json")])
def test_client_tokenizer(tmp_path, name, tok):
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path / "out"
    eeonnx.compile(FIXTURES / name, out, tokenizer=FIXTURES / tok)
    path = out / "client" / "tokenizer.json"
    assert path.is_file()
    plain = tokenizers.Tokenizer.from_file(str(FIXTURES / tok))
    enc_tok = tokenizers.Tokenizer.from_file(str(path))
    client = eeonnx.Client(out)
    server = eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    original = ort.InferenceSession(str(FIXTURES / name), so, providers=CPU)
    in_names = [i.name for i in original.get_inputs()]
    differ = 0
    for text in TEXTS:
        ids = plain.encode(text).ids
        assert ids and max(ids) < VOCAB
        n = len(ids)
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, n), np.int64),
                 "token_type_ids": np.zeros((1, n), np.int64)}
        feeds = {k: v for k, v in feeds.items() if k in in_names}
        encoded = client.encode(feeds)
        got = enc_tok.encode(text).ids
        assert got == encoded[server_name(out, "input_ids")][0].tolist(), text
        differ += got != ids
        # the client tokenizer's ids are server-ready: feed them as they are
        served = server.run({**encoded, server_name(out, "input_ids"): np.array([got], np.int64)})
        want = original.run(None, feeds)
        for o, w in zip(client.decode(served).values(), want):
            assert_close(o, w, 1e-4, what=text)
    assert differ == len(TEXTS)


def test_same_key_same_artifact(tmp_path):
    """--key recompiles a real export to the byte-identical artifact (less the random artifact id)."""
    src = FIXTURES / "llama_kv.ts.onnx"
    eeonnx.compile(src, tmp_path / "a")
    eeonnx.compile(src, tmp_path / "b", key=tmp_path / "a" / "client" / "key.json")
    for f in ("server/model.onnx", "client/encode.onnx", "client/decode.onnx", "client/manifest.json"):
        assert same_artifact_file(tmp_path / "a", tmp_path / "b", f), f
    eeonnx.compile(src, tmp_path / "c")  # a new key re-keys the weights
    assert (tmp_path / "a" / "server/model.onnx").read_bytes() != (tmp_path / "c" / "server/model.onnx").read_bytes()
