"""tokenizer: rewrite a Hugging Face ``tokenizer.json`` so that it emits encrypted ids.

The server's embedding table is permuted on its vocabulary axis by a secret
permutation p (``table_server = table.take(p, axis=0)``), so a plain token id
must be mapped by ``id_map = argsort(p)`` before it reaches the server
(``table_server[id_map[i]] == table[i]``). encode.onnx does that with a
Gather; :func:`encrypt_tokenizer` instead folds ``id_map`` into the tokenizer
itself, so a client that uses the plain ``tokenizers`` library on the
rewritten file gets server ids directly and must skip the id mapping.

This is pure JSON manipulation: the ``tokenizers`` package is not needed at
runtime. Every place a ``tokenizer.json`` stores a token *id* is rewritten;
everything keyed by token *strings* (BPE merges, unk/pad/cls tokens by name,
normalizer, pre-tokenizer, decoder, truncation) is left as it is.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import numpy as np

from eeonnx.errors import EEError

__all__ = ["TokenizerMapError", "encrypt_tokenizer", "encrypt_tokenizer_json", "id_map_from_perm"]

# Unigram stores its vocabulary as a list whose index is the id. When the model's
# embedding table has more rows than the tokenizer has pieces, the encrypted ids of
# the pieces are spread over all rows and the list gets holes; they are filled with
# pieces no real text can produce (U+FFFF is a Unicode noncharacter), scored at the
# vocabulary's lowest score so that the unknown-token penalty is unchanged.
_UNIGRAM_FILLER = "\uffff<eeonnx-unused-{}>\uffff"


class TokenizerMapError(EEError, ValueError):
    """The tokenizer cannot be mapped onto the model's (encrypted) embedding rows."""


def id_map_from_perm(p: np.ndarray) -> np.ndarray:
    """``id_map`` for :func:`encrypt_tokenizer` from the table's row permutation p
    (``table_server = table.take(p, axis=0)``; ``Crossing.value_index``): argsort(p)."""
    return np.argsort(np.asarray(p)).astype(np.int64)


def encrypt_tokenizer(src_path: str, id_map: np.ndarray, dst_path: str) -> dict:
    """Write ``dst_path``: the tokenizer at ``src_path`` with every token id i replaced by ``id_map[i]``.

    ``id_map[plain_id] = encrypted_id`` (argsort of the embedding table's row
    permutation p; see :func:`id_map_from_perm`); it must be a permutation of
    ``range(len(id_map))``, where ``len(id_map)`` is the number of rows of the
    model's embedding table.

    Invariant: for any text (or pair of texts), with or without special tokens,
    padding and truncation as configured in the file::

        encrypted_tokenizer.encode(text).ids == id_map[plain_tokenizer.encode(text).ids]

    and decoding encrypted ids through the encrypted tokenizer gives the same
    text as decoding the plain ids through the plain tokenizer
    (``encrypted.decode(id_map[ids]) == plain.decode(ids)``). Tokens, offsets,
    type ids and attention masks are unchanged.

    Rewritten: ``model.vocab`` (WordPiece / BPE / WordLevel: token -> id;
    Unigram: the list of ``[piece, score]`` is reordered so that position
    ``id_map[i]`` holds piece i, and ``model.unk_id`` is mapped), each
    ``added_tokens[*].id`` (``tokenizers`` ignores these ids on load and
    numbers added tokens it does not find in the model's vocabulary after it,
    so such a token is also entered in ``model.vocab`` at its encrypted id;
    this is invisible to encoding as long as the added-token matcher extracts
    every occurrence before the model sees the text, which holds unless a
    ``single_word`` / ``normalized: false`` token's content can still reach
    the model), the post-processor's special-token ids
    (TemplateProcessing ``special_tokens[*].ids``, BertProcessing /
    RobertaProcessing ``sep`` / ``cls``, Sequence recursively; ByteLevel has
    none) and ``padding.pad_id``.

    Raises :class:`TokenizerMapError` (a ``ValueError``) when an id is not
    covered by ``id_map`` (the tokenizer's vocabulary is larger than the
    model's embedding table), when ``id_map`` is not a permutation, or when the
    model or post-processor type is unknown.

    Returns a summary: ``model_type``, ``vocab_size`` (entries in model.vocab),
    ``added_tokens`` (added-token ids remapped), ``pinned_in_vocab`` (added
    tokens entered in ``model.vocab``), ``special_tokens`` (other ids
    remapped: post-processor, padding, unk_id), ``embedding_rows``
    (``len(id_map)``).
    """
    try:
        with open(src_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerMapError(f"cannot read tokenizer '{src_path}': {e}") from e
    out, summary = encrypt_tokenizer_json(data, id_map, source=str(src_path))
    parent = os.path.dirname(os.path.abspath(dst_path))
    os.makedirs(parent, exist_ok=True)
    with open(dst_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=2)
        f.write("\n")
    return summary


def encrypt_tokenizer_json(data: dict, id_map: np.ndarray, source: str = "tokenizer") -> tuple[dict, dict]:
    """In-memory form of :func:`encrypt_tokenizer`: returns (new tokenizer dict, summary); ``data`` is not modified."""
    m = _Mapper(id_map, source)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerMapError(f"{source}: not a Hugging Face tokenizer.json (no 'model' object)")
    out = copy.deepcopy(data)

    model = out["model"]
    mtype = _model_type(model, source)
    if mtype == "Unigram":
        vocab_size = _map_unigram(model, m)
        pieces = {e[0]: j for j, e in enumerate(model["vocab"]) if e is not None}
    else:
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise TokenizerMapError(f"{source}: {mtype} model.vocab is not a token -> id object")
        pieces = {tok: m(i, f"model.vocab[{tok!r}]") for tok, i in vocab.items()}
        vocab_size = len(vocab)

    # `tokenizers` ignores the ids in added_tokens when it loads a file: a token found in
    # the model's vocabulary gets that id, any other gets the next id after the model's
    # vocabulary. Encrypted ids are scattered, so every added token is pinned by an entry
    # in the model's vocabulary at its encrypted id.
    n_added = n_pinned = 0
    taken = set(pieces.values())
    for k, tok in enumerate(out.get("added_tokens") or []):
        if "id" not in tok:
            continue
        content = tok.get("content")
        new = m(tok["id"], f"added_tokens[{k}] ({content!r})")
        if content in pieces:
            if pieces[content] != new:
                raise TokenizerMapError(
                    f"{source}: added token {content!r} has id {tok['id']} but the model's vocabulary gives it "
                    f"another id: the file is inconsistent (load and save it with `tokenizers` first)"
                )
        else:
            if new in taken:
                raise TokenizerMapError(
                    f"{source}: added token {content!r} has id {tok['id']}, which the model's vocabulary already "
                    f"gives to another token: the file is inconsistent"
                )
            pieces[content] = new
            taken.add(new)
            if mtype == "Unigram":
                _unigram_put(model, new, content)
            n_pinned += 1
        tok["id"] = new
        n_added += 1
    if mtype == "Unigram":
        _unigram_fill(model)
    else:
        # canonical order (as `tokenizers` saves it): by id
        model["vocab"] = dict(sorted(pieces.items(), key=lambda kv: kv[1]))

    pp = out.get("post_processor")
    if pp is not None:
        _map_processor(pp, m, "post_processor")

    pad = out.get("padding")
    if isinstance(pad, dict) and pad.get("pad_id") is not None:
        pad["pad_id"] = m(pad["pad_id"], "padding.pad_id")
        m.specials += 1

    summary = {
        "model_type": mtype,
        "vocab_size": vocab_size,
        "added_tokens": n_added,
        "pinned_in_vocab": n_pinned,
        "special_tokens": m.specials,
        "embedding_rows": m.n,
        "ids_used": len(m.seen),
    }
    return out, summary


# --------------------------------------------------------------------------- internals


class _Mapper:
    def __init__(self, id_map, source: str):
        a = np.asarray(id_map)
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise TokenizerMapError(f"id_map must be a 1-D integer array, got {a.dtype} {a.shape}")
        a = a.astype(np.int64)
        n = a.shape[0]
        if n == 0 or not np.array_equal(np.sort(a), np.arange(n)):
            raise TokenizerMapError(f"id_map must be a permutation of range({n}) (argsort of the table permutation)")
        self.map, self.n, self.source = a, n, source
        self.specials = 0
        self.seen: set[int] = set()  # plain ids the tokenizer can produce

    def __call__(self, i: Any, where: str) -> int:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TokenizerMapError(f"{self.source}: {where}: id {i!r} is not an integer")
        if not 0 <= i < self.n:
            raise TokenizerMapError(
                f"{self.source}: {where}: token id {i} is outside the model's embedding table "
                f"({self.n} rows): the tokenizer's vocabulary is larger than the model's, "
                f"so it does not belong to this model"
            )
        self.seen.add(i)
        return int(self.map[i])


def _model_type(model: dict, source: str) -> str:
    t = model.get("type")
    if t is None:  # old files: untagged, recognised by their fields as `tokenizers` does
        if isinstance(model.get("vocab"), list):
            t = "Unigram"
        elif "merges" in model:
            t = "BPE"
        elif "max_input_chars_per_word" in model:
            t = "WordPiece"
        elif isinstance(model.get("vocab"), dict):
            t = "WordLevel"
    if t not in ("WordPiece", "BPE", "WordLevel", "Unigram"):
        raise TokenizerMapError(
            f"{source}: unknown tokenizer model type {t!r} (supported: WordPiece, BPE, WordLevel, Unigram)"
        )
    return t


def _map_unigram(model: dict, m: _Mapper) -> int:
    """Reorder the Unigram pieces by encrypted id; holes stay None until :func:`_unigram_fill`."""
    vocab = model.get("vocab")
    if not isinstance(vocab, list):
        raise TokenizerMapError(f"{m.source}: Unigram model.vocab is not a list of [piece, score]")
    V = len(vocab)
    if V > m.n:
        m(V - 1, f"model.vocab[{V - 1}]")  # raises: vocabulary larger than the table
    slots: list = []
    for i, entry in enumerate(vocab):
        _unigram_put(model, m(i, f"model.vocab[{i}]"), entry[0], entry[1], slots)
    model["vocab"] = slots
    model["_eeonnx_low"] = min((float(e[1]) for e in vocab), default=0.0)
    if model.get("unk_id") is not None:
        model["unk_id"] = m(model["unk_id"], "model.unk_id")
        m.specials += 1
    return V


def _unigram_put(model: dict, j: int, piece: str, score=None, slots: list | None = None) -> None:
    slots = model["vocab"] if slots is None else slots
    if j >= len(slots):
        slots.extend([None] * (j + 1 - len(slots)))
    # an added token outside the pieces: lowest score, so the unknown-token penalty is unchanged
    slots[j] = [piece, model["_eeonnx_low"] if score is None else score]


def _unigram_fill(model: dict) -> None:
    slots = model["vocab"]
    low = model.pop("_eeonnx_low")
    pieces = {e[0] for e in slots if e is not None}
    for j, e in enumerate(slots):
        if e is None:
            filler = _UNIGRAM_FILLER.format(j)
            if filler in pieces:  # pragma: no cover - a vocabulary holding our own filler
                raise TokenizerMapError(f"Unigram vocabulary already holds the filler piece {filler!r}")
            slots[j] = [filler, low]


def _map_processor(pp: dict, m: _Mapper, where: str) -> None:
    t = pp.get("type")
    if t == "TemplateProcessing":
        for name, st in (pp.get("special_tokens") or {}).items():
            st["ids"] = [m(i, f"{where}.special_tokens[{name!r}].ids") for i in st.get("ids", [])]
            m.specials += len(st["ids"])
    elif t in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            if pp.get(key) is not None:
                tok, i = pp[key]
                pp[key] = [tok, m(i, f"{where}.{key} ({tok!r})")]
                m.specials += 1
    elif t == "ByteLevel":
        pass
    elif t == "Sequence":
        for k, sub in enumerate(pp.get("processors") or []):
            _map_processor(sub, m, f"{where}.processors[{k}]")
    else:
        raise TokenizerMapError(f"{m.source}: unknown post_processor type {t!r} at {where}: cannot map its token ids")

