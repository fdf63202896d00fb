"""The compiler's Python API: compile a model into an artifact, or analyse it without writing."""
from __future__ import annotations

import os

from eeonnx.compiler import pipeline


def compile(model, out, *, key=None, dims=None, strict=False, force=False, allow_clear=(),
            split="auto", min_key_bits=128.0, split_at=(), allow_weak=(), tokenizer=None,
            server_state=True, quiet=True, transforms="max", allow_rounding=False,
            max_leak=None, images=None, text=(), keep_names=False) -> pipeline.Compilation:
    """Compile ``model`` (path or ModelProto) into the artifact directory ``out``.

    ``key``: path of a key.json to reuse (same key + same model = same artifact).
    ``dims``: {symbol: size} for symbolic dims the analysis needs fixed.
    ``split``: "auto" moves weak boundary layers to the client until every
    crossing content tensor has ``min_key_bits``; "none" keeps the boundary
    at the model's inputs/outputs (weak ones refused unless in ``allow_weak``);
    ``split_at``: tensor names to cut at by hand ("in:NAME" / "out:NAME").
    ``tokenizer``: a Hugging Face tokenizer.json; writes client/tokenizer.json
    whose ids are the encrypted ids.
    ``server_state=False`` treats past/present (KV cache) tensors as ordinary
    inputs/outputs that go through encode/decode (the client holds the cache).
    ``quiet=False`` shows progress while large weights are written.
    ``transforms="max"`` (the default) gives each secret class the largest exact
    group the graph allows (positive diagonal through ReLU-like ops, orthogonal
    maps on residual streams, per-head and rotary-pair maps in attention, any
    invertible map through linear ones; see eeonnx.compiler.groups), folded in
    float64 and cast once; ``transforms="permutation"`` keeps permutations only
    (bit-exact values, moved). Classes on fp16/bf16/int tensors stay
    permutations unless ``allow_rounding``.
    ``max_leak``: put the client split at the cheapest cut whose measured leakage (see
    ``eeonnx plan``; image correlation or token match above chance) is at most this, measured
    on ``images`` (a folder) / ``text`` (files, with ``tokenizer``) or bundled samples; refused
    when no cut short of running the model on the client reaches it.
    ``keep_names=True`` keeps the original tensor/node names in the server model (a
    debugging aid: the names tell the server which model it runs); by default they are
    opaque (``x0``, ``w3``, ``n7``) and the manifest's ``server_names`` holds the map.
    Raises eeonnx.errors.EEError subclasses on refusal.
    """
    return pipeline.compile_model(model, os.fspath(out), key=key, dims=dims, strict=strict,
                                  force=force, allow_clear=allow_clear, split_mode=split,
                                  min_key_bits=min_key_bits, split_at=split_at, allow_weak=allow_weak,
                                  tokenizer=tokenizer, server_state=server_state, progress=not quiet,
                                  transforms_mode=transforms, allow_rounding=allow_rounding,
                                  max_leak=max_leak, images=images, text=text, keep_names=keep_names)


def check(model, *, dims=None, transforms="max", allow_rounding=False) -> pipeline.Compilation:
    """Analyse ``model`` without writing anything (``.spec()``, ``.pins()``, ``.unsupported``,
    ``.classes[uid].group``)."""
    return pipeline.analyze(model, dims=dims, transforms_mode=transforms, allow_rounding=allow_rounding)
