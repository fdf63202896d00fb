"""eeonnx.compiler.tokenizer: a tokenizer.json rewritten to emit encrypted ids.

Invariant checked on every tokenizer kind: for any text (and pair),
``enc.encode(text).ids == id_map[plain.encode(text).ids]``, tokens / type ids /
attention masks are unchanged, and ``enc.decode(id_map[ids]) == plain.decode(ids)``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import (  # noqa: E402
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from eeonnx.compiler.tokenizer import TokenizerMapError, encrypt_tokenizer, id_map_from_perm  # noqa: E402

CORPUS = [
    "Hello world, this is a tiny tokenizer trained in process!",
    "The quick brown fox jumps over the lazy dog.",
    "Equivariant encryption folds secret permutations into the weights.",
    "A client encodes its tokens, the server never sees the plain ids.",
    "Tokenizers split words into pieces; pieces map to embedding rows.",
    "Numbers like 12345 and symbols like #, $ and % appear too.",
] * 3

TEXTS = [
    "Hello world!",
    "the lazy fox encodes secret pieces",
    "Unseen wörds: zyzzyva, qwxq and 98765 ~~",
    "",
    " leading and trailing spaces  ",
]
PAIRS = [("Hello world", "the quick brown fox"), ("tiny tokenizer", "Zebra?")]


# --------------------------------------------------------------------------- tokenizers


def _wordpiece():
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=150, special_tokens=special))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]", pad_to_multiple_of=8)
    tok.enable_truncation(max_length=24)
    return tok


def _bytelevel_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok.add_special_tokens([AddedToken("<|extra_0|>", special=True)])
    tok.add_tokens(["secret permutations"])  # a non-special added token
    return tok


def _wordlevel():
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    tok.enable_padding(pad_id=tok.token_to_id("<pad>"), pad_token="<pad>", direction="left")
    return tok


def _unigram():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "<unk>", "<cls>", "<sep>"],
                                        unk_token="<unk>"),
    )
    tok.post_processor = processors.BertProcessing(("<sep>", tok.token_to_id("<sep>")),
                                                   ("<cls>", tok.token_to_id("<cls>")))
    return tok


def _bpe_sequence():
    """GPT-2 style BPE with a Sequence(ByteLevel, TemplateProcessing) post-processor (as Llama 3)."""
    tok = _bytelevel_bpe()
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B:1",
                                      special_tokens=[("<|endoftext|>", bos)]),
    ])
    return tok


BUILDERS = {
    "wordpiece": _wordpiece,
    "bytelevel_bpe": _bytelevel_bpe,
    "wordlevel": _wordlevel,
    "unigram": _unigram,
    "bpe_sequence": _bpe_sequence,
}

SPECIAL_TEXT = {
    "wordpiece": "hello [MASK] world [SEP] fox",
    "bytelevel_bpe": "Hello<|endoftext|>world <|extra_0|> the secret permutations!",
    "wordlevel": "the <s> fox </s> <unk>",
    "unigram": "the <sep> fox <cls>",
    "bpe_sequence": "Hello<|endoftext|>world",
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def saved(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    path = d / "tokenizer.json"
    BUILDERS[request.param]().save(str(path))
    return request.param, str(path)


def _id_map(n, seed):
    p = np.random.default_rng(seed).permutation(n)
    return id_map_from_perm(p)


def _assert_same(plain_enc, enc_enc, id_map):
    assert enc_enc.ids == [int(i) for i in id_map[plain_enc.ids]]
    assert enc_enc.tokens == plain_enc.tokens
    assert enc_enc.type_ids == plain_enc.type_ids
    assert enc_enc.attention_mask == plain_enc.attention_mask
    assert enc_enc.special_tokens_mask == plain_enc.special_tokens_mask
    assert enc_enc.offsets == plain_enc.offsets


def _check_invariant(name, plain, enc, id_map):
    texts = TEXTS + [SPECIAL_TEXT[name]]
    for text in texts:
        for add_special in (True, False):
            a = plain.encode(text, add_special_tokens=add_special)
            b = enc.encode(text, add_special_tokens=add_special)
            _assert_same(a, b, id_map)
            for skip in (True, False):
                assert enc.decode(b.ids, skip_special_tokens=skip) == plain.decode(a.ids, skip_special_tokens=skip)
    for x, y in PAIRS:
        a, b = plain.encode(x, y), enc.encode(x, y)
        _assert_same(a, b, id_map)
        assert enc.decode(b.ids) == plain.decode(a.ids)
    # batches exercise padding when it is configured
    for a, b in zip(plain.encode_batch(texts), enc.encode_batch(texts)):
        _assert_same(a, b, id_map)
    for a, b in zip(plain.encode_batch(PAIRS), enc.encode_batch(PAIRS)):
        _assert_same(a, b, id_map)
    ids = [plain.encode(t).ids for t in texts]
    assert enc.decode_batch([[int(i) for i in id_map[x]] for x in ids]) == plain.decode_batch(ids)
    # every vocabulary entry lands where id_map says
    for tok, i in plain.get_vocab(with_added_tokens=True).items():
        assert enc.token_to_id(tok) == int(id_map[i])
        assert enc.id_to_token(int(id_map[i])) == tok


# --------------------------------------------------------------------------- invariant


@pytest.mark.parametrize("extra_rows", [0, 13])
def test_invariant(saved, extra_rows, tmp_path):
    """extra_rows > 0: the model's embedding table has more rows than the tokenizer has ids."""
    name, src = saved
    plain = Tokenizer.from_file(src)
    n = plain.get_vocab_size(with_added_tokens=True) + extra_rows
    id_map = _id_map(n, seed=n)
    before = open(src, encoding="utf-8").read()
    dst = tmp_path / "client" / "tokenizer.json"  # parent is created
    summary = encrypt_tokenizer(src, id_map, str(dst))
    assert open(src, encoding="utf-8").read() == before  # source untouched
    enc = Tokenizer.from_file(str(dst))
    _check_invariant(name, plain, enc, id_map)

    assert summary["embedding_rows"] == n
    assert summary["vocab_size"] == plain.get_vocab_size(with_added_tokens=False)
    src_json, dst_json = json.load(open(src, encoding="utf-8")), json.load(open(dst, encoding="utf-8"))
    assert summary["added_tokens"] == len(src_json["added_tokens"])
    for key in ("normalizer", "pre_tokenizer", "decoder", "truncation"):
        assert dst_json[key] == src_json[key]
    if "merges" in src_json["model"]:
        assert dst_json["model"]["merges"] == src_json["model"]["merges"]


def test_special_token_counts(tmp_path):
    tok = _wordpiece()
    src, dst = tmp_path / "t.json", tmp_path / "e.json"
    tok.save(str(src))
    n = tok.get_vocab_size()
    id_map = _id_map(n, 7)
    summary = encrypt_tokenizer(str(src), id_map, str(dst))
    assert summary["model_type"] == "WordPiece"
    assert summary["special_tokens"] == 3  # [CLS], [SEP] in the template + pad_id
    d = json.load(open(dst, encoding="utf-8"))
    assert d["padding"]["pad_id"] == int(id_map[tok.token_to_id("[PAD]")])
    st = d["post_processor"]["special_tokens"]
    assert st["[CLS]"]["ids"] == [int(id_map[tok.token_to_id("[CLS]")])]
    assert st["[SEP]"]["tokens"] == ["[SEP]"]
    assert list(d["model"]["vocab"].values()) == sorted(d["model"]["vocab"].values())


def test_unigram_unk_and_fillers(tmp_path):
    tok = _unigram()
    src, dst = tmp_path / "t.json", tmp_path / "e.json"
    tok.save(str(src))
    V = tok.get_vocab_size()
    id_map = _id_map(V + 50, 3)
    summary = encrypt_tokenizer(str(src), id_map, str(dst))
    d = json.load(open(dst, encoding="utf-8"))
    src_model = json.load(open(src, encoding="utf-8"))["model"]
    assert d["model"]["unk_id"] == int(id_map[src_model["unk_id"]])
    assert summary["special_tokens"] == 3  # sep, cls, unk_id
    pieces = d["model"]["vocab"]
    assert len(pieces) == int(id_map[:V].max()) + 1
    for i, entry in enumerate(src_model["vocab"]):
        assert pieces[int(id_map[i])] == entry
    assert min(s for _, s in pieces) == min(s for _, s in src_model["vocab"])


# --------------------------------------------------------------------------- errors


def test_vocab_larger_than_table(tmp_path):
    tok = _wordpiece()
    src = tmp_path / "t.json"
    tok.save(str(src))
    n = tok.get_vocab_size() - 1
    with pytest.raises(ValueError, match=r"larger than the model's"):
        encrypt_tokenizer(str(src), _id_map(n, 1), str(tmp_path / "e.json"))
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("builder", [_bytelevel_bpe, _unigram])
def test_added_or_unigram_beyond_table(builder, tmp_path):
    tok = builder()
    src = tmp_path / "t.json"
    tok.save(str(src))
    with pytest.raises(TokenizerMapError, match=r"embedding table"):
        encrypt_tokenizer(str(src), _id_map(tok.get_vocab_size() - 1, 2), str(tmp_path / "e.json"))


def test_unknown_model_type(tmp_path):
    src = tmp_path / "t.json"
    d = json.loads(_wordlevel().to_str())
    d["model"]["type"] = "CharLevel"
    src.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"unknown tokenizer model type 'CharLevel'"):
        encrypt_tokenizer(str(src), _id_map(100, 0), str(tmp_path / "e.json"))


def test_unknown_post_processor(tmp_path):
    src = tmp_path / "t.json"
    tok = _wordlevel()
    d = json.loads(tok.to_str())
    d["post_processor"] = {"type": "Sequence", "processors": [{"type": "FancyProcessing", "ids": [1]}]}
    src.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"unknown post_processor type 'FancyProcessing'"):
        encrypt_tokenizer(str(src), _id_map(tok.get_vocab_size(), 0), str(tmp_path / "e.json"))


@pytest.mark.parametrize("bad", [[0, 0, 1], [1, 2, 3], [[0, 1]], [0.0, 1.0], []])
def test_id_map_not_a_permutation(bad, tmp_path):
    src = tmp_path / "t.json"
    src.write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}}))
    with pytest.raises(ValueError, match=r"id_map"):
        encrypt_tokenizer(str(src), np.asarray(bad), str(tmp_path / "e.json"))


def test_not_a_tokenizer(tmp_path):
    src = tmp_path / "t.json"
    src.write_text("{\"version\": \"1.0\"}")
    with pytest.raises(ValueError, match=r"no 'model'"):
        encrypt_tokenizer(str(src), _id_map(3, 0), str(tmp_path / "e.json"))
    src.write_text("not json")
    with pytest.raises(ValueError, match=r"cannot read tokenizer"):
        encrypt_tokenizer(str(src), _id_map(3, 0), str(tmp_path / "e.json"))


def test_inconsistent_added_token_id(tmp_path):
    src = tmp_path / "t.json"
    tok = _wordlevel()
    d = json.loads(tok.to_str())
    d["added_tokens"][0]["id"] = d["added_tokens"][1]["id"]  # '<unk>' claims the id of '<s>'
    src.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"inconsistent"):
        encrypt_tokenizer(str(src), _id_map(tok.get_vocab_size(), 0), str(tmp_path / "e.json"))


def test_no_tokenizers_import_at_runtime():
    import ast
    import inspect

    import eeonnx.compiler.tokenizer as mod

    names = {a.name.split(".")[0] for n in ast.walk(ast.parse(inspect.getsource(mod)))
             if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(ast.parse(inspect.getsource(mod)))
              if isinstance(n, ast.ImportFrom) and n.module}
    assert "tokenizers" not in names
