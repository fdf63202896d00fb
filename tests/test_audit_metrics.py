"""Leakage metrics (eeonnx.audit.metrics) on synthetic data with a known answer."""
from __future__ import annotations

import numpy as np
import pytest

from eeonnx.audit.metrics import (
    constant_guess_baseline,
    frequency_attack,
    image_wire_correlation,
    image_wire_leakage,
    occurrence_accuracy,
    token_wire_leakage,
)


# -- frequency analysis --------------------------------------------------------
def _markov_stream(rng, vocab, n, trans):
    """A token stream from a Markov chain (Zipf-like stationary distribution)."""
    out = np.empty(n, dtype=np.int64)
    cdf = np.cumsum(trans, axis=1)
    x = 0
    u = rng.random(n)
    for t in range(n):
        x = min(int(np.searchsorted(cdf[x], u[t])), vocab - 1)
        out[t] = x
    return out


@pytest.fixture(scope="module")
def zipf_language():
    rng = np.random.default_rng(7)
    vocab = 300
    zipf = 1.0 / np.arange(1, vocab + 1) ** 1.1
    # each token prefers a few common successors on top of the Zipf background
    trans = np.tile(zipf, (vocab, 1))
    for a in range(vocab):
        trans[a, rng.choice(40, 4, replace=False)] += rng.random(4) * zipf.sum()
    trans /= trans.sum(1, keepdims=True)
    plain = _markov_stream(rng, vocab, 20000, trans)
    reference = _markov_stream(np.random.default_rng(8), vocab, 60000, trans)
    perm = np.random.default_rng(9).permutation(vocab)
    return vocab, plain, reference, perm


def test_frequency_attack_beats_constant_guess_on_zipf(zipf_language):
    vocab, plain, reference, perm = zipf_language
    cipher = perm[plain]  # a deterministic substitution, as the token-id encoding is
    guess = frequency_attack(cipher, reference, vocab, top=150)
    assert sorted(guess.tolist()) == list(range(vocab))  # a permutation of the vocabulary
    acc = occurrence_accuracy(guess, cipher, plain)
    base = constant_guess_baseline(plain)
    assert acc > base + 0.5, (acc, base)


def test_bigram_climbing_improves_on_unigram_rank(zipf_language):
    vocab, plain, reference, perm = zipf_language
    cipher = perm[plain][:5000]
    rank = occurrence_accuracy(frequency_attack(cipher, reference, vocab, sweeps=0), cipher, plain[:5000])
    climbed = occurrence_accuracy(frequency_attack(cipher, reference, vocab, top=150), cipher, plain[:5000])
    assert climbed > rank + 0.3, (rank, climbed)


def test_frequency_attack_is_chance_on_a_flat_stream():
    rng = np.random.default_rng(0)
    vocab = 200
    plain = rng.integers(0, vocab, 5000)
    reference = rng.integers(0, vocab, 20000)
    perm = rng.permutation(vocab)
    acc = occurrence_accuracy(frequency_attack(perm[plain], reference, vocab, top=100), perm[plain], plain)
    assert acc < 0.05  # no structure to read: about 1/vocab


def test_constant_guess_baseline():
    assert constant_guess_baseline([3, 3, 1, 2]) == 0.5


# -- image wires ---------------------------------------------------------------
def _picture(rng, size=32):
    """A picture with real structure: a gradient, a few disks and a bar."""
    y, x = np.mgrid[0:size, 0:size] / size
    lum = 0.3 * x + 0.2 * y
    for _ in range(3):
        cx, cy, r = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.1]
        lum += 0.6 * (((x - cx) ** 2 + (y - cy) ** 2) < r * r)
    lum += 0.4 * (np.abs(x - rng.random()) < 0.05)
    rgb = np.stack([lum * s for s in (1.0, 0.9, 0.7)]) + 0.02 * rng.standard_normal((3, size, size))
    return rgb.astype(np.float32)


def _wire(rng, image, channels=16):
    """What a server sees after a first conv layer: a random channel mixing of local
    features of the luminance (the pixel, its gradients, a blur), at half resolution,
    in a secret channel order."""
    lum = image.mean(0)
    gx = np.gradient(lum, axis=1)
    gy = np.gradient(lum, axis=0)
    blur = (lum + np.roll(lum, 1, 0) + np.roll(lum, 1, 1) + np.roll(lum, -1, 0) + np.roll(lum, -1, 1)) / 5
    feats = np.stack([lum, gx, gy, blur])
    mix = rng.standard_normal((channels, 4)) + np.array([1.0, 0, 0, 0.5])
    wire = np.maximum(np.tensordot(mix, feats, axes=(1, 0)), 0)[:, ::2, ::2]
    return wire[rng.permutation(channels)] + 0.01 * rng.standard_normal(wire.shape)


def test_image_wire_correlates_above_unrelated_baseline():
    rng = np.random.default_rng(3)
    images = [_picture(rng) for _ in range(4)]
    unrelated = [_picture(rng) for _ in range(3)]
    wires = [_wire(rng, im) for im in images]
    out = image_wire_leakage(wires, images, unrelated)
    assert set(out) >= {"correlation", "baseline", "excess"}
    assert out["correlation"] > 0.8, out
    assert out["excess"] > 0.3, out
    # without explicit baseline images the other inputs serve as the baseline
    assert image_wire_leakage(wires, images)["excess"] > 0.3


def test_image_wire_of_noise_is_at_baseline():
    rng = np.random.default_rng(4)
    images = [_picture(rng) for _ in range(3)]
    wires = [rng.standard_normal((8, 16, 16)) for _ in images]
    assert image_wire_leakage(wires, images)["correlation"] < 0.3


def test_image_wire_correlation_ignores_channel_order_and_scale():
    rng = np.random.default_rng(5)
    im = _picture(rng)
    w = _wire(rng, im)
    scaled = w[::-1] * rng.uniform(0.5, 2.0, (w.shape[0], 1, 1))
    assert image_wire_correlation(w, im) == pytest.approx(image_wire_correlation(scaled, im), abs=1e-9)


# -- token wires -----------------------------------------------------------------
def test_token_wire_leakage_finds_tokens_across_contexts():
    rng = np.random.default_rng(6)
    vocab, dim, contexts, length = 20, 32, 12, 10
    emb = rng.standard_normal((vocab, dim))
    tokens = rng.integers(0, vocab, (contexts, length))
    ctx = np.repeat(np.arange(contexts), length)
    # a wire vector: its token's embedding plus a context-dependent part, secret channel order
    vectors = emb[tokens.ravel()] + 0.3 * rng.standard_normal((contexts, 1, dim)).repeat(length, 1).reshape(-1, dim)
    vectors = vectors[:, rng.permutation(dim)]
    out = token_wire_leakage(vectors, tokens.ravel(), ctx)
    assert out["nn_match"] > 0.9 and out["baseline"] < 0.15, out
    assert out["cluster_purity"] > out["purity_baseline"] + 0.3, out
    noise = token_wire_leakage(rng.standard_normal(vectors.shape), tokens.ravel(), ctx)
    assert noise["nn_match"] < 0.3, noise
