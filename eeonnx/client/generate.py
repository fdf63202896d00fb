"""Encrypted autoregressive generation, from the client's side.

The server sees encrypted ids and returns encrypted logits plus its updated
state (the KV cache, which never leaves the server session: it is fed back
as ORT values, on the device when the server runs on CUDA). Sampling and
stopping happen here, on decoded logits.

Feeds for the original model's inputs are built per step:
- the token-id input (the one whose values index the vocabulary table, from
  the manifest) gets the new ids;
- other integer inputs follow Hugging Face conventions, which is the only
  place names are used (never in the compiler): ``*mask*`` gets ones over the
  whole length, ``*position*`` gets positions, ``*type*`` gets zeros; pass
  ``extra_inputs(name, past, new, batch)`` to build anything else.
Models compiled with ``--client-state`` carry their cache through
encode/decode: the manifest's ``client_state`` pairs (original names) start
empty (length 0 on the cache axis) and each step feeds back the decoded
present values. Models without state recompute the whole prefix every step.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


def sample(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Greedy when temperature <= 0, else softmax sampling over the top-k logits."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    if top_k and top_k < logits.size:
        cut = np.partition(logits, -top_k)[-top_k]
        logits = np.where(logits >= cut, logits, -np.inf)
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


def _default_input(name: str, dtype, past: int, new: int, batch: int) -> np.ndarray:
    low = name.lower()
    if "mask" in low:
        return np.ones((batch, past + new), dtype=dtype)
    if "position" in low:
        return np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(dtype)
    if "type" in low:
        return np.zeros((batch, new), dtype=dtype)
    from eeonnx.errors import InputError

    raise InputError(
        f"don't know how to build input '{name}' for generation; pass extra_inputs=(name, past, new, batch) -> array"
    )


def generate(client, server, prompt_ids, *, max_new_tokens: int = 20, temperature: float = 0.0,
             top_k: int = 0, seed: int | None = None, eos_ids=(),
             extra_inputs: Callable | None = None) -> Iterator[int]:
    """Yield generated token ids (plain vocabulary ids), one per step."""
    token_input, logits_output, vocab = client.token_io()
    dtypes = client.input_dtypes()
    rng = np.random.default_rng(seed)
    ids = np.asarray(prompt_ids, dtype=dtypes[token_input]).reshape(1, -1)
    client.check_server(server)
    state = server.initial_state(client.state_pairs(), batch=1)
    carried = client.manifest.get("client_state", [])
    cache = {p["input"]: np.zeros([0 if k == p["axis"] else (d if isinstance(d, int) else 1)
                                   for k, d in enumerate(p["shape"])], dtype=dtypes[p["input"]])
             for p in carried}
    stateful = bool(state) or bool(cache)
    past, new = 0, ids
    history = ids
    eos = set(int(e) for e in eos_ids)
    for _ in range(max_new_tokens):
        if not stateful:
            past, new = 0, history
        feeds = {}
        for name in client.input_names:
            if name == token_input:
                feeds[name] = new
            elif name in cache:
                feeds[name] = cache[name]
            elif extra_inputs is not None and (v := extra_inputs(name, past, new.shape[1], 1)) is not None:
                feeds[name] = np.asarray(v, dtype=dtypes[name])
            else:
                feeds[name] = _default_input(name, dtypes[name], past, new.shape[1], 1)
        outputs, state = server.step(client.encode(feeds), state)
        decoded = client.decode(outputs)
        logits = decoded[logits_output]
        for p in carried:
            cache[p["input"]] = decoded[p["output"]]
        token = sample(logits[0, -1, :vocab], temperature, top_k, rng)
        yield token
        if token in eos:
            return
        past += new.shape[1]
        new = np.array([[token]], dtype=ids.dtype)
        history = np.concatenate([history, new], axis=1)
