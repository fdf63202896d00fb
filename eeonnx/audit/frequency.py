"""Attack 3, frequency analysis of the encrypted token-id stream.

Attacker's knowledge: the encrypted ids the server receives (a deterministic
substitution of the plain ids) and public reference text tokenized with the
public tokenizer. The attack is :func:`eeonnx.audit.metrics.frequency_attack`;
this module runs it on growing prefixes of the stream (1k / 10k / 100k tokens,
as far as the stream allows). Scoring is done by the caller after each run.
"""
from __future__ import annotations

import time

import numpy as np

from eeonnx.audit.metrics import frequency_attack

STEPS = (1_000, 10_000, 100_000)


def attack(cipher_ids, reference_ids, vocab_size, budget: float | None = None, steps=STEPS):
    """Yield ``(tokens, guess, seconds)`` for each prefix length in ``steps`` that the
    stream reaches (plus the whole stream when it is shorter than the next step)."""
    cipher = np.asarray(cipher_ids, dtype=np.int64)
    lengths = [n for n in steps if n <= len(cipher)]
    if not lengths or (len(cipher) < steps[-1] and len(cipher) > lengths[-1] * 1.5):
        lengths.append(len(cipher))
    for n in lengths:
        t0 = time.monotonic()
        guess = frequency_attack(cipher[:n], reference_ids, vocab_size,
                                 time_budget=None if budget is None else budget / len(lengths))
        yield n, guess, time.monotonic() - t0
