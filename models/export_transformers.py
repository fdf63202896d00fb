"""Export tiny random-weight Hugging Face transformer models to ONNX.

These are *test inputs* for eeonnx: real ``transformers`` architectures (BERT, a
sentence-embedding BERT, GPT-2, Llama, ViT, and GPT-2/Llama with a KV cache)
built from configs with random weights (no hub access: ``HF_HUB_OFFLINE=1``), at
toy sizes (hidden 64, 2 layers, 4 heads, vocab 1000, intermediate 128, max
positions 128) so every file stays well under 5 MB.

Every model is exported twice:

* ``<name>.ts.onnx``     -- TorchScript exporter (``dynamo=False``, opset 17,
  ``dynamic_axes``)
* ``<name>.dynamo.onnx`` -- dynamo exporter (``dynamo=True``, opset 18,
  ``dynamic_shapes`` with ``torch.export.Dim``)

with symbolic ``batch`` and ``sequence`` dims (``past_sequence`` /
``total_sequence`` as well for the KV-cache models).  All attention is
``attn_implementation="eager"``; ``llama_sdpa`` is the same Llama with ``sdpa``.

Each file is run in ONNX Runtime (CPU) and compared with eager torch at batch 2,
sequence 7 (traced at batch 3, sequence 5, so the check proves the dims are
dynamic).  KV-cache models are checked on two decoding steps: a prefill with an
empty cache (past 0, sequence 7) and one more token (past 7, sequence 1) fed
with the ``present.*`` tensors ONNX Runtime returned for the prefill.  Failures
are recorded and the run goes on.

The output directory gets ``INDEX.md`` (inputs/outputs with the symbolic dims
as written in each file, exporter, opset, node count, op histogram, domains,
how Reshape targets are computed, failures), ``index.json`` and two tiny
tokenizers trained in-process with Hugging Face ``tokenizers``:
``bert.tokenizer.json`` (WordPiece, [PAD]/[UNK]/[CLS]/[SEP]/[MASK], a
TemplateProcessing post-processor adding [CLS]/[SEP]) and
``gpt2.tokenizer.json`` (byte-level BPE, ``<|endoftext|>``), each with exactly
the models' ``vocab_size`` tokens.  The BERT and GPT-2 checks feed ids made by
these tokenizers.

torch, transformers and tokenizers are imported only inside :func:`main`, so
this module can be imported without them.

Usage::

    pip install torch transformers tokenizers       # optional extras, not needed by eeonnx itself
    HF_HUB_OFFLINE=1 python models/export_transformers.py --out out/tzoo
    python models/export_transformers.py --out out/tzoo --only llama llama_kv --exporters dynamo
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import sys
import traceback

# Tiny sizes shared by every model.
VOCAB = 1000
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # Llama only (GQA: repeat_kv doubles them)
INTERMEDIATE = 128
MAX_POS = 128
HEAD_DIM = HIDDEN // HEADS

# Shapes used for tracing/exporting, and (different ones) for the ORT check.
EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST = 3, 5, 6
CHECK_BATCH, CHECK_SEQ = 2, 7  # KV models: step 1 (past 0, seq 7) then step 2 (past 7, seq 1)
REL_TOL = 1e-4

# Dim ranges for the dynamo exporter.
DIM_MAX = {"batch": 256, "sequence": MAX_POS, "past_sequence": MAX_POS}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A secret permutation is folded into the weights of the model.",
    "Transformers split the hidden state into attention heads.",
    "Hello world, this is a tiny tokenizer trained in process!",
    "Does it work? Yes: (mostly) - 42 tokens; 7 heads / 2 layers.",
    "Encrypted inference keeps the weights and activations private.",
    "Llama uses rotary position embeddings and grouped query attention.",
    "GPT-2 ties the input embedding to the language model head.",
    "Sentence embeddings average the token states and normalise them.",
]


# --------------------------------------------------------------------------- tokenizers
def _corpus(n_sentences=400, seed=0):
    """A few real sentences plus seeded pseudo-words, enough for 1000-token vocabularies."""
    import random

    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "st", "tr", "pl", "sh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
    words = ["".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                     for _ in range(rng.randint(1, 3))) for _ in range(600)]
    out = list(SENTENCES) * 4
    for _ in range(n_sentences):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + ".")
    return out


def build_bert_tokenizer(vocab_size=VOCAB):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=1)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    _pad_vocab(tok, vocab_size, "[unused{}]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tok


def build_gpt2_tokenizer(vocab_size=VOCAB):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    _pad_vocab(tok, vocab_size, "<|extra_{}|>")
    return tok


def _pad_vocab(tok, vocab_size, pattern):
    """Top the vocabulary up to exactly ``vocab_size`` with special filler tokens (as BERT's [unusedN])."""
    from tokenizers import AddedToken

    n = tok.get_vocab_size(with_added_tokens=True)
    if n < vocab_size:
        tok.add_special_tokens([AddedToken(pattern.format(i), special=True) for i in range(vocab_size - n)])
    n = tok.get_vocab_size(with_added_tokens=True)
    if n != vocab_size:
        raise AssertionError(f"tokenizer vocab {n} != {vocab_size}")


def encode(tok, texts, length, pad_id, left=False):
    """Encode ``texts`` padded/truncated to ``length``: (ids, attention_mask, type_ids) as int64 lists."""
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=pad_id, pad_token=tok.id_to_token(pad_id),
                       direction="left" if left else "right")
    encs = tok.encode_batch(texts)
    tok.no_padding()
    tok.no_truncation()
    return ([e.ids for e in encs], [e.attention_mask for e in encs], [e.type_ids for e in encs])


# --------------------------------------------------------------------------- models
def build_specs(torch, tf, toks):
    """Return the model specs (dicts), modules not yet built.

    Spec keys: name, make() -> eval-mode nn.Module, inputs (names in forward order),
    outputs, dyn (input/output name -> {axis: dim name}), feeds(batch, seq, past, gen) ->
    {name: tensor} (``past`` only for ``kv``), kv (None or dict(layers, kv_heads, pos)),
    note, and optionally ``nested`` = k (forward(a, b, *past): dynamo's dynamic_shapes
    gives the inputs from index k on as one tuple).
    """
    nn = torch.nn
    F = torch.nn.functional
    bert_tok, gpt2_tok = toks
    BERT_PAD = bert_tok.token_to_id("[PAD]")
    EOT = gpt2_tok.token_to_id("<|endoftext|>")
    cache_kw_cache = {}

    def cache_kw(model):
        """transformers 5 renamed ``past_key_values`` to ``cache``: use whichever forward takes."""
        key = type(model)
        if key not in cache_kw_cache:
            params = inspect.signature(model.forward).parameters
            cache_kw_cache[key] = "cache" if "cache" in params else "past_key_values"
        return cache_kw_cache[key]

    # ------------------------------------------------------------------ configs
    def bert_config():
        return tf.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                             max_position_embeddings=MAX_POS, type_vocab_size=2, pad_token_id=BERT_PAD,
                             attn_implementation="eager")

    def gpt2_config():
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                             n_inner=INTERMEDIATE, n_positions=MAX_POS, bos_token_id=EOT, eos_token_id=EOT,
                             tie_word_embeddings=True, attn_implementation="eager")

    def llama_config(attn="eager"):
        return tf.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                              num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                              intermediate_size=INTERMEDIATE, max_position_embeddings=MAX_POS,
                              tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                              attn_implementation=attn)

    def vit_config():
        return tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=HIDDEN,
                            num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                            intermediate_size=INTERMEDIATE, num_labels=10, attn_implementation="eager")

    # ------------------------------------------------------------------ wrappers
    class BertWrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = tf.BertModel(bert_config())

        def forward(self, input_ids, attention_mask, token_type_ids):
            o = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return o.last_hidden_state, o.pooler_output

    class SentenceEmbed(nn.Module):
        """sentence-transformers style: BERT -> mean pooling over the mask -> L2 normalise."""

        def __init__(self):
            super().__init__()
            self.bert = tf.BertModel(bert_config(), add_pooling_layer=False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            s = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return F.normalize(s, p=2.0, dim=1)

    class Gpt2Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = tf.GPT2LMHeadModel(gpt2_config())

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    class LlamaWrap(nn.Module):
        def __init__(self, attn="eager"):
            super().__init__()
            self.lm = tf.LlamaForCausalLM(llama_config(attn))

        def forward(self, input_ids, attention_mask, position_ids):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           use_cache=False).logits

    class VitWrap(nn.Module):
        """ViTForImageClassification, returning the encoder output as well as the logits."""

        def __init__(self):
            super().__init__()
            self.m = tf.ViTForImageClassification(vit_config())

        def forward(self, pixel_values):
            h = self.m.vit(pixel_values).last_hidden_state
            return self.m.classifier(h[:, 0, :]), h

    class KVWrap(nn.Module):
        """Decoder step with a flat KV cache: (input_ids, attention_mask[, position_ids], *past) ->
        (logits, *present).  ``past`` is key0, value0, key1, value1, ... each [batch, kv_heads,
        past_sequence, head_dim]; a DynamicCache is built from them inside forward."""

        def __init__(self, lm, n_layers, with_pos):
            super().__init__()
            self.lm, self.n_layers, self.with_pos = lm, n_layers, with_pos

        def forward(self, input_ids, attention_mask, *rest):
            pos = rest[0] if self.with_pos else None
            past = rest[1:] if self.with_pos else rest
            cache = tf.DynamicCache(config=self.lm.config)
            for i in range(self.n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            kw = {cache_kw(self.lm): cache}
            if self.with_pos:
                kw["position_ids"] = pos
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **kw)
            present = getattr(out, cache_kw(self.lm), None)
            if present is None:
                present = out.past_key_values
            res = [out.logits]
            if hasattr(present, "layers"):
                for layer in present.layers[: self.n_layers]:
                    res += [layer.keys, layer.values]
            else:  # legacy tuple-of-tuples
                for k, v in present[: self.n_layers]:
                    res += [k, v]
            return tuple(res)

    # ------------------------------------------------------------------ inputs
    def rand_ids(gen, batch, seq, low=5):
        return torch.randint(low, VOCAB, (batch, seq), generator=gen)

    def left_pad_mask(batch, seq, gen):
        """All ones except row 1 (if any), which has 2 left-padding zeros (1 if seq < 4)."""
        m = torch.ones(batch, seq, dtype=torch.int64)
        if batch > 1 and seq > 1:
            m[1, : (2 if seq >= 4 else 1)] = 0
        return m

    def positions_from_mask(mask, seq):
        """HF generate()'s convention: cumsum(mask) - 1, padded positions set to 1; last ``seq`` columns."""
        pos = mask.long().cumsum(-1) - 1
        pos = pos.masked_fill(mask == 0, 1)
        return pos[:, -seq:]

    def bert_feeds(batch, seq, past, gen):
        if batch == CHECK_BATCH and seq == CHECK_SEQ:  # real tokenizer output, right-padded
            ids, am, tt = encode(bert_tok, ["Hello world!", SENTENCES[1]][:batch], seq, BERT_PAD)
            return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(am),
                    "token_type_ids": torch.tensor(tt)}
        ids = rand_ids(gen, batch, seq)
        am = torch.ones(batch, seq, dtype=torch.int64)
        am[1, seq - 2:] = 0  # right padding on row 1
        ids[1, seq - 2:] = BERT_PAD
        tt = torch.zeros(batch, seq, dtype=torch.int64)
        tt[0, seq // 2:] = 1
        return {"input_ids": ids, "attention_mask": am, "token_type_ids": tt}

    def gpt2_feeds(batch, seq, past, gen):
        if batch == CHECK_BATCH and seq == CHECK_SEQ and not past:  # real tokenizer output, left-padded
            ids, am, _ = encode(gpt2_tok, ["Hello world!", SENTENCES[0]][:batch], seq, EOT, left=True)
            ids, am = torch.tensor(ids), torch.tensor(am)
        else:
            ids, am = rand_ids(gen, batch, seq), left_pad_mask(batch, past + seq, gen)
        return {"input_ids": ids, "attention_mask": am}

    def llama_feeds(batch, seq, past, gen):
        am = left_pad_mask(batch, past + seq, gen)
        return {"input_ids": rand_ids(gen, batch, seq), "attention_mask": am,
                "position_ids": positions_from_mask(am, seq)}

    def vit_feeds(batch, seq, past, gen):
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=gen)}

    def with_past(base, kv_heads):
        def feeds(batch, seq, past, gen):
            d = base(batch, seq, past, gen)
            for i in range(LAYERS):
                for kv in ("key", "value"):
                    d[f"past_key_values.{i}.{kv}"] = torch.randn(batch, kv_heads, past, HEAD_DIM, generator=gen)
            return d
        return feeds

    BS = {0: "batch", 1: "sequence"}
    txt_in = ["input_ids", "attention_mask", "token_type_ids"]
    past_names = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]

    def kv_dyn(in_names):
        d = {n: dict(BS) for n in in_names}
        d["attention_mask"] = {0: "batch", 1: "total_sequence"}
        d["logits"] = dict(BS)
        for n in past_names:
            d[n] = {0: "batch", 2: "past_sequence"}
        for n in present_names:
            d[n] = {0: "batch", 2: "total_sequence"}
        return d

    specs = [
        dict(name="bert", make=BertWrap, inputs=txt_in, outputs=["last_hidden_state", "pooler_output"],
             dyn={**{n: dict(BS) for n in txt_in}, "last_hidden_state": dict(BS), "pooler_output": {0: "batch"}},
             feeds=bert_feeds, note="BertModel (eager attention, tanh pooler)"),
        dict(name="sentence_embed", make=SentenceEmbed, inputs=txt_in, outputs=["sentence_embedding"],
             dyn={**{n: dict(BS) for n in txt_in}, "sentence_embedding": {0: "batch"}},
             feeds=bert_feeds, note="BertModel + masked mean pooling + L2 normalise"),
        dict(name="gpt2", make=Gpt2Wrap, inputs=["input_ids", "attention_mask"], outputs=["logits"],
             dyn={"input_ids": dict(BS), "attention_mask": dict(BS), "logits": dict(BS)},
             feeds=gpt2_feeds, note="GPT2LMHeadModel, tied lm_head, use_cache=False"),
        dict(name="llama", make=LlamaWrap, inputs=["input_ids", "attention_mask", "position_ids"],
             outputs=["logits"], dyn={**{n: dict(BS) for n in ("input_ids", "attention_mask", "position_ids")},
                                      "logits": dict(BS)},
             feeds=llama_feeds, note="LlamaForCausalLM, GQA 4q/2kv heads, untied, use_cache=False"),
        dict(name="llama_sdpa", make=lambda: LlamaWrap("sdpa"),
             inputs=["input_ids", "attention_mask", "position_ids"], outputs=["logits"],
             dyn={**{n: dict(BS) for n in ("input_ids", "attention_mask", "position_ids")}, "logits": dict(BS)},
             feeds=llama_feeds, note="as llama, attn_implementation='sdpa'"),
        dict(name="vit", make=VitWrap, inputs=["pixel_values"], outputs=["logits", "last_hidden_state"],
             dyn={"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "last_hidden_state": {0: "batch"}},
             feeds=vit_feeds, note="ViTForImageClassification 32x32, patch 8, 10 labels (+ encoder output)"),
        dict(name="gpt2_kv",
             make=lambda: KVWrap(tf.GPT2LMHeadModel(gpt2_config()), LAYERS, with_pos=False),
             inputs=["input_ids", "attention_mask"] + past_names, outputs=["logits"] + present_names,
             dyn=kv_dyn(["input_ids"]), feeds=with_past(gpt2_feeds, HEADS), nested=2,
             kv=dict(layers=LAYERS, kv_heads=HEADS, pos=False),
             note="GPT2LMHeadModel with DynamicCache built from flat past tensors"),
        dict(name="llama_kv",
             make=lambda: KVWrap(tf.LlamaForCausalLM(llama_config()), LAYERS, with_pos=True),
             inputs=["input_ids", "attention_mask", "position_ids"] + past_names,
             outputs=["logits"] + present_names,
             dyn=kv_dyn(["input_ids", "position_ids"]), feeds=with_past(llama_feeds, KV_HEADS), nested=2,
             kv=dict(layers=LAYERS, kv_heads=KV_HEADS, pos=True),
             note="LlamaForCausalLM (GQA) with DynamicCache built from flat past tensors"),
    ]
    return specs


# --------------------------------------------------------------------------- export
def export_one(torch, spec, exporter, path, gen):
    model = spec["module"]
    feeds = spec["feeds"](EXPORT_BATCH, EXPORT_SEQ, EXPORT_PAST if spec.get("kv") else 0, gen)
    in_names = list(spec["inputs"])
    args = tuple(feeds[n] for n in in_names)
    dyn = spec["dyn"]
    if exporter == "ts":
        torch.onnx.export(
            model, args, path, dynamo=False, opset_version=17,
            input_names=in_names, output_names=spec["outputs"],
            dynamic_axes={n: d for n, d in dyn.items() if n in in_names or n in spec["outputs"]},
        )
        return
    Dim = torch.export.Dim
    dims = {}

    def dim(nm):
        if nm not in DIM_MAX:  # e.g. total_sequence = past + sequence: let export derive it, keep our name
            return nm
        if nm not in dims:
            dims[nm] = Dim(nm, min=1, max=DIM_MAX[nm])
        return dims[nm]

    shapes = [{ax: dim(nm) for ax, nm in dyn.get(n, {}).items()} or None for n in in_names]
    k = spec.get("nested")
    if k is not None:  # forward(a, b, *past): the varargs are one tuple in dynamic_shapes
        shapes = shapes[:k] + [tuple(shapes[k:])]
    torch.onnx.export(
        model, args, path, dynamo=True, opset_version=18, external_data=False, verbose=False,
        input_names=in_names, output_names=spec["outputs"], dynamic_shapes=tuple(shapes),
    )


# --------------------------------------------------------------------------- checks
def rel_errs(outs, ref, names, valid=None):
    """max |ort - torch| / max |torch| per output.  With ``valid`` (bool [batch, seq]: not padding),
    per-token outputs ([batch, seq, ...]) are compared at non-padded query positions only: what a
    model computes at a padded query position is unspecified (for a fully-masked row torch's SDPA
    kernel returns 0, while eager attention and the dynamo exporter's SDPA decomposition add
    finfo.min and average over all keys).  Returns (errs at valid positions, errs at all positions)."""
    import numpy as np

    def rel(o, r):
        return float(np.max(np.abs(o - r)) / max(float(np.max(np.abs(r))), 1e-12)) if r.size else 0.0

    errs, errs_all = {}, {}
    for n, o, r in zip(names, outs, ref):
        if o.shape != r.shape:
            raise AssertionError(f"{n}: shape {o.shape} != torch {r.shape}")
        errs_all[n] = rel(o, r)
        if valid is not None and o.ndim >= 2 and o.shape[:2] == valid.shape and not n.startswith("present."):
            errs[n] = rel(o[valid], r[valid])
        else:
            errs[n] = errs_all[n]
    return errs, errs_all


def _valid(feeds, seq):
    m = feeds.get("attention_mask")
    return None if m is None else (m[:, -seq:] != 0).numpy()


def _step(desc, outs, ref, names, valid=None):
    errs, errs_all = rel_errs(outs, ref, names, valid)
    d = dict(step=desc, errs=errs)
    if errs_all != errs:
        d["errs_all_positions"] = errs_all
    return d


def run_torch(torch, spec, feeds):
    with torch.no_grad():
        out = spec["module"](*(feeds[n] for n in spec["inputs"]))
    out = out if isinstance(out, (tuple, list)) else [out]
    return [o.numpy() for o in out]


def check_file(torch, spec, path):
    """Run ``path`` in ORT and compare with torch. Returns (steps, max rel err)."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(42)
    steps = []
    if not spec.get("kv"):
        feeds = spec["feeds"](CHECK_BATCH, CHECK_SEQ, 0, gen)
        ref = run_torch(torch, spec, feeds)
        outs = sess.run(spec["outputs"], {n: feeds[n].numpy() for n in spec["inputs"]})
        desc = ", ".join(f"{n} {list(t.shape)}" for n, t in feeds.items())
        steps.append(_step(desc, outs, ref, spec["outputs"],
                           _valid(feeds, CHECK_SEQ)))
    else:
        # step 1: prefill, empty cache
        feeds = spec["feeds"](CHECK_BATCH, CHECK_SEQ, 0, gen)
        ref = run_torch(torch, spec, feeds)
        outs = sess.run(spec["outputs"], {n: feeds[n].numpy() for n in spec["inputs"]})
        steps.append(_step(f"prefill: batch {CHECK_BATCH}, past 0, seq {CHECK_SEQ}", outs, ref, spec["outputs"],
                           _valid(feeds, CHECK_SEQ)))
        # step 2: one token; torch gets torch's present, ORT gets ORT's present
        mask = torch.cat([feeds["attention_mask"], torch.ones(CHECK_BATCH, 1, dtype=torch.int64)], 1)
        nxt = {"input_ids": torch.randint(5, VOCAB, (CHECK_BATCH, 1), generator=gen), "attention_mask": mask}
        if spec["kv"]["pos"]:
            nxt["position_ids"] = feeds["position_ids"][:, -1:] + 1
        past_names = [n for n in spec["inputs"] if n.startswith("past_key_values.")]
        t_feeds = dict(nxt, **{n: torch.from_numpy(r) for n, r in zip(past_names, ref[1:])})
        o_feeds = {n: t.numpy() for n, t in nxt.items()}
        o_feeds.update({n: o for n, o in zip(past_names, outs[1:])})
        ref2 = run_torch(torch, spec, t_feeds)
        outs2 = sess.run(spec["outputs"], o_feeds)
        steps.append(_step(f"decode: batch {CHECK_BATCH}, past {CHECK_SEQ}, seq 1", outs2, ref2, spec["outputs"]))
        # sanity: the decode step's logits equal a full no-cache pass over all 8 tokens
        full = {"input_ids": torch.cat([feeds["input_ids"], nxt["input_ids"]], 1), "attention_mask": mask}
        if spec["kv"]["pos"]:
            full["position_ids"] = torch.cat([feeds["position_ids"], nxt["position_ids"]], 1)
        for n in past_names:
            full[n] = torch.zeros(CHECK_BATCH, spec["kv"]["kv_heads"], 0, HEAD_DIM)
        ref_full = run_torch(torch, spec, full)
        steps.append(_step("decode logits vs torch full pass over 8 tokens (no cache)",
                           [outs2[0]], [ref_full[0][:, -1:]], ["logits"]))
    worst = max(e for s in steps for e in s["errs"].values())
    if not np.isfinite(worst):
        worst = float("inf")
    return steps, worst


# --------------------------------------------------------------------------- summary
def onnx_summary(path):
    import onnx

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    hist = collections.Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                               for n in g.node)
    for f in m.functions:  # ops inside local functions (expected: none)
        hist.update(f"{f.name}/{n.op_type}" for n in f.node)

    def vi(v):
        t = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                for d in t.shape.dim]
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}

    inits = {i.name for i in g.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "inputs": [vi(v) for v in g.input if v.name not in inits],
        "outputs": [vi(v) for v in g.output],
        "opset": opset,
        "ir_version": m.ir_version,
        "opset_imports": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "node_domains": sorted({n.domain or "ai.onnx" for n in g.node}),
        "nodes": len(g.node),
        "initializers": len(g.initializer),
        "functions": len(m.functions),
        "ops": dict(sorted(hist.items())),
        "reshape_targets": reshape_targets(m),
        "bytes": os.path.getsize(path),
    }


def reshape_targets(m):
    """How each Reshape's target shape is computed, as a histogram of short expressions.

    ``[-1, 17, 4, 16]`` is a constant; ``concat(shape(x)[0], shape(x)[1], 4, 16)`` is built at run
    time from a shape (``shape(x)`` is the Shape of some tensor, not necessarily the Reshape's data
    input; ``shape(x)[i]`` = Gather of dim i; ``shape(x)[i:j]`` = Shape(start=i, end=j) or a Slice;
    Unsqueeze/Squeeze/Cast and scalar<->[1] Reshapes are not shown).
    """
    import onnx.numpy_helper as nh

    g = m.graph
    consts = {i.name: nh.to_array(i) for i in g.initializer}
    producer = {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = nh.to_array(a.t)
    inputs = {i.name for i in g.input} - set(consts)

    def attr(n, name, default=None):
        for a in n.attribute:
            if a.name == name:
                return a.i
        return default

    def fmt(v):
        v = v.tolist()
        v = v[0] if isinstance(v, list) and len(v) == 1 else v
        return "" if isinstance(v, int) and abs(v) >= 2**62 else str(v)  # open-ended slice bound

    def desc(t, depth=0):
        if t in consts:
            return fmt(consts[t])
        if t in inputs:
            return t
        n = producer.get(t)
        if n is None or depth > 12:
            return "?"
        op, ins = n.op_type, [i for i in n.input]
        if op == "Shape":
            st, en = attr(n, "start"), attr(n, "end")
            return "shape(x)" + (f"[{st or 0}:{'' if en is None else en}]" if st or en is not None else "")
        if op in ("Unsqueeze", "Squeeze", "Cast", "Identity") or (
                op == "Reshape" and ins[1] in consts and consts[ins[1]].size == 1):  # scalar <-> [1]
            return desc(ins[0], depth + 1)
        if op == "Gather" and ins[1] in consts:
            return f"{desc(ins[0], depth + 1)}[{fmt(consts[ins[1]])}]"
        if op == "Slice" and ins[1] in consts and ins[2] in consts:
            return f"{desc(ins[0], depth + 1)}[{fmt(consts[ins[1]])}:{fmt(consts[ins[2]])}]"
        if op == "Concat":
            return "concat(" + ", ".join(desc(i, depth + 1) for i in ins) + ")"
        sym = {"Mul": "*", "Add": "+", "Div": "/", "Sub": "-"}.get(op)
        if sym and len(ins) == 2:
            return f"({desc(ins[0], depth + 1)} {sym} {desc(ins[1], depth + 1)})"
        return f"{op}(...)"

    res = collections.Counter(desc(n.input[1]) for n in g.node if n.op_type == "Reshape")
    return dict(sorted(res.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("out", "tzoo"), help="output directory (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="export only these model names")
    ap.add_argument("--exporters", nargs="*", default=["ts", "dynamo"], choices=["ts", "dynamo"],
                    help="exporters to run (default: both)")
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        import transformers as tf
        import tokenizers  # noqa: F401
    except ImportError as e:
        sys.exit(f"{e}: needs torch==2.13.0, transformers and tokenizers")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    tf.logging.set_verbosity_error()

    toks = (build_bert_tokenizer(), build_gpt2_tokenizer())
    specs = build_specs(torch, tf, toks)
    if a.list:
        print("\n".join(s["name"] for s in specs))
        return 0
    if a.only:
        unknown = set(a.only) - {s["name"] for s in specs}
        if unknown:
            sys.exit(f"unknown model(s): {sorted(unknown)}")
        specs = [s for s in specs if s["name"] in a.only]
    os.makedirs(a.out, exist_ok=True)
    toks[0].save(os.path.join(a.out, "bert.tokenizer.json"))
    toks[1].save(os.path.join(a.out, "gpt2.tokenizer.json"))

    records = []
    for spec in specs:
        torch.manual_seed(0)
        spec["module"] = spec["make"]().eval()  # wrapper too: the TS exporter restores the wrapper's mode
        for exporter in a.exporters:
            fname = f"{spec['name']}.{exporter}.onnx"
            path = os.path.join(a.out, fname)
            rec = {"file": fname, "model": spec["name"], "exporter": exporter, "note": spec.get("note", ""),
                   "export_error": None, "check_error": None}
            if os.path.exists(path):
                os.remove(path)
            try:
                with torch.no_grad():
                    export_one(torch, spec, exporter, path, torch.Generator().manual_seed(7))
            except Exception as e:  # noqa: BLE001 -- record and move on
                rec["export_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"
                rec["traceback"] = traceback.format_exc()[-4000:]
                print(f"[FAIL export] {fname}: {rec['export_error']}", flush=True)
                if os.path.exists(path):
                    os.remove(path)
                records.append(rec)
                continue
            spec["module"].eval()
            try:
                rec.update(onnx_summary(path))
            except Exception as e:  # noqa: BLE001
                rec["check_error"] = f"onnx checker: {type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"
            try:
                rec["steps"], rec["rel_err"] = check_file(torch, spec, path)
                if not rec["rel_err"] < REL_TOL:
                    rec["check_error"] = f"rel err {rec['rel_err']:.3g} >= {REL_TOL}"
            except Exception as e:  # noqa: BLE001
                rec["check_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"
                rec["traceback"] = traceback.format_exc()[-4000:]
            status = "ok" if rec["check_error"] is None else f"CHECK FAILED ({rec['check_error']})"
            print(f"[{status}] {fname}: {rec.get('nodes')} nodes, opset {rec.get('opset')}, "
                  f"{rec.get('bytes', 0) / 1e6:.2f} MB, rel err {rec.get('rel_err', float('nan')):.2e}", flush=True)
            records.append(rec)

    write_index(a.out, records)
    return 1 if any(r["check_error"] for r in records) else 0


def write_index(out, records):
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(records, f, indent=1)

    ok = [r for r in records if not r["export_error"] and "ops" in r]
    usage = collections.Counter()
    for r in ok:
        usage.update(set(r["ops"]))
    lines = ["# eeonnx transformers zoo", "",
             "Generated by `models/export_transformers.py`: tiny random-weight Hugging Face models",
             f"(hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, vocab {VOCAB}, intermediate {INTERMEDIATE}, "
             f"max positions {MAX_POS}); `.ts` = TorchScript exporter (opset 17, dynamic_axes), "
             "`.dynamo` = dynamo exporter (opset 18, dynamic_shapes).",
             f"Traced at batch {EXPORT_BATCH}, sequence {EXPORT_SEQ} (past {EXPORT_PAST}); checked in onnxruntime "
             f"CPU against torch at batch {CHECK_BATCH}, sequence {CHECK_SEQ} (KV models: prefill with past 0, "
             f"then one token with past {CHECK_SEQ}); rel err = max abs err / max |ref|, must be < {REL_TOL}",
             "(per-token outputs compared at non-padded query positions; the error over all positions is listed",
             "under the file when it differs: a padded query row's output is unspecified).",
             "Tokenizers: `bert.tokenizer.json` (WordPiece), `gpt2.tokenizer.json` (byte-level BPE).",
             "",
             "| file | inputs | outputs | exporter | opset | nodes | size | rel err | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def shp(vs):
        return "<br>".join(f"{v['name']} {v['dtype']} [{', '.join(str(d) for d in v['shape'])}]" for v in vs)

    for r in records:
        if r["export_error"]:
            lines.append(f"| {r['file']} | - | - | {r['exporter']} | - | - | - | EXPORT FAILED | "
                         f"{r['export_error'].replace('|', '/')} |")
            continue
        err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "-"
        all_pos = [v for st in r.get("steps", []) for v in st.get("errs_all_positions", {}).values()]
        if all_pos and max(all_pos) >= REL_TOL:
            err += f" (padded rows: {max(all_pos):.1e})"
        if r["check_error"]:
            err += f" FAILED: {r['check_error'].replace('|', '/')}"
        lines.append(f"| {r['file']} | {shp(r.get('inputs', []))} | {shp(r.get('outputs', []))} | "
                     f"{r['exporter']} | {r.get('opset')} | {r.get('nodes')} | {r.get('bytes', 0) / 1e6:.2f} MB | "
                     f"{err} | {r['note']} |")
    lines += ["", "## Per-file details", ""]
    for r in ok:
        lines.append(f"### {r['file']}")
        lines.append("")
        lines.append(f"- opset imports: {r['opset_imports']}; node domains: {', '.join(r['node_domains'])}; "
                     f"IR {r['ir_version']}; {r['initializers']} initializers; {r['functions']} local functions")
        lines.append("- ops: " + ", ".join(f"{k}×{v}" for k, v in r["ops"].items()))
        lines.append("- Reshape targets: " + ("; ".join(f"{k} ×{v}" for k, v in r["reshape_targets"].items())
                                              or "none"))
        for s in r.get("steps", []):
            lines.append(f"- check {s['step']}: " + ", ".join(f"{k} {v:.1e}" for k, v in s["errs"].items()))
            if s.get("errs_all_positions"):
                lines.append("  - including padded query positions (not checked): " + ", ".join(
                    f"{k} {v:.1e}" for k, v in s["errs_all_positions"].items()))
        lines.append("")
    lines += ["## Op types across all exports (number of files using each)", ""]
    for op, n in sorted(usage.items(), key=lambda kv: (-kv[1], kv[0])):
        users = sorted({r["model"] + "." + r["exporter"] for r in ok if op in r["ops"]})
        lines.append(f"- {op}: {n}" + (f" ({', '.join(users)})" if n <= 4 else ""))
    doms = sorted({d for r in ok for d in r["opset_imports"]} | {d for r in ok for d in r["node_domains"]})
    lines += ["", "## Domains", "", ", ".join(doms)]
    fails = [r for r in records if r["export_error"] or r["check_error"]]
    lines += ["", "## Failures", ""]
    if fails:
        for r in fails:
            lines.append(f"- {r['file']}: {r['export_error'] or r['check_error']}")
    else:
        lines.append("none")
    with open(os.path.join(out, "INDEX.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
