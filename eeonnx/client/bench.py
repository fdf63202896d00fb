"""Benchmarks: plain model vs server model on the same ONNX Runtime settings.

Runs are interleaved (plain, server, plain, server, ...) after a warm-up so
that drift (thermal, other load) hits both alike. Reports median and p90
latency of each, the median of the paired ratios server/plain with a
bootstrap 95% interval (flagged untrusted when wider than TRUST_WIDTH), the
end-to-end figure (encode + server + decode) against the plain model, the
client's share, and the bytes on the wire per request (encoded inputs sent,
server outputs returned; a server-side cache never travels). Nothing here is asserted in tests: numbers vary
by machine.
"""
from __future__ import annotations

import os
import time

import numpy as np

from eeonnx.server import runtime
from eeonnx.client.verify import plain_session, random_feeds


TRUST_WIDTH = 0.05  # a 95% interval of the ratio wider than this cannot tell 1.00 from 1.05


def _stats(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000.0
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90))}


def ratio_interval(num: list[float], den: list[float], seed: int = 0, resamples: int = 1000) -> tuple:
    """Median of the paired ratios num_i / den_i and a bootstrap 95% interval of it."""
    r = np.asarray(num) / np.asarray(den)
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, r.size, size=(resamples, r.size))], axis=1)
    return float(np.median(r)), float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))


def _nbytes(values) -> int:
    return int(sum(np.asarray(v).nbytes for v in values))


def _encode_uncounted(client, originals: dict) -> dict:
    """client.encode without charging the key's token budget: a benchmark repeats
    one request, it does not send new tokens to anyone."""
    return dict(zip(client.server_inputs, client._enc.run(None, client.conform(originals))))


def bench_model(model: str, out: str, *, provider: str = "cpu", iters: int = 50, warmup: int = 5,
                dims: dict | None = None, seed: int = 0) -> dict:
    """Interleaved timings (the order alternates per repeat) of the plain model, the
    server model, and the client's encode + decode; symbolic dims from ``dims``
    (else 2), a KV cache empty (its length from the manifest's state description),
    token ids over the vocabulary, as verify feeds them."""
    from eeonnx import Client, Server
    from eeonnx.client.verify import _plain_run

    providers = runtime.providers_for(None, provider)
    plain = plain_session(model, providers)
    server = Server(os.path.join(out, "server", "model.onnx"), providers)
    client = Client(out)
    client.check_server(server)
    pairs = client.manifest.get("state", [])
    empty = {s["input"]: s["axis"] for s in pairs + client.manifest.get("client_state", [])}
    high = {c["name"]: c["value_size"] for c in client.manifest.get("inputs", []) if "value_size" in c}
    rng = np.random.default_rng(seed)
    feeds, _ = _plain_run(plain, lambda ones: random_feeds(plain, dims, rng, empty=empty, high=high,
                                                           int_ones=ones))
    originals = {n: feeds[n] for n in client.input_names}
    state = {s.get("server_input", s["input"]): feeds[s["input"]] for s in pairs}  # stays on the server
    enc = {**_encode_uncounted(client, originals), **state}
    state_out = {s.get("server_output", s["output"]) for s in pairs}
    for _ in range(warmup):
        plain.run(None, feeds)
        server.run(enc)
    t_plain, t_server, t_client = [], [], []
    outs = {}
    for k in range(iters):
        def run_plain():
            t = time.perf_counter()
            plain.run(None, feeds)
            t_plain.append(time.perf_counter() - t)

        def run_encrypted():
            t0 = time.perf_counter()
            sent = {**_encode_uncounted(client, originals), **state}
            t1 = time.perf_counter()
            got = server.run(sent)
            t2 = time.perf_counter()
            client.decode({n: v for n, v in got.items() if n not in state_out})
            t3 = time.perf_counter()
            t_server.append(t2 - t1)
            t_client.append((t1 - t0) + (t3 - t2))
            outs.update(got)

        for step in ((run_plain, run_encrypted) if k % 2 == 0 else (run_encrypted, run_plain)):
            step()
    e2e = [a + b for a, b in zip(t_server, t_client)]
    p, s, c, e = _stats(t_plain), _stats(t_server), _stats(t_client), _stats(e2e)
    ratio, lo, hi = ratio_interval(t_server, t_plain, seed)
    e_ratio, e_lo, e_hi = ratio_interval(e2e, t_plain, seed)
    return {
        "model": model,
        "provider": server.session.get_providers()[0],
        "iters": iters,
        "plain": p,
        "server": s,
        "end_to_end": e,
        "ratio_median": ratio,
        "ratio_interval": [lo, hi],
        "ratio_trusted": hi - lo <= TRUST_WIDTH,
        "end_to_end_ratio": e_ratio,
        "end_to_end_interval": [e_lo, e_hi],
        "client_ms": c["median_ms"],
        "client_share": c["median_ms"] / p["median_ms"] if p["median_ms"] else float("nan"),
        "wire_bytes": {"request": _nbytes(enc[n] for n in client.server_inputs),
                       "response": _nbytes(v for n, v in outs.items() if n not in state_out)},
    }


def bench_generate(model: str, out: str, *, prompt_len: int = 16, new_tokens: int = 32,
                   provider: str = "cpu", repeats: int = 5) -> dict:
    """Tokens/s of prefill and decode, plain (original model, same KV loop) vs encrypted."""
    from eeonnx import Client, Server
    from eeonnx.client.generate import generate

    client = Client(out)
    providers = runtime.providers_for(None, provider)
    vocab = client.token_io()[2]
    prompt = list(np.random.default_rng(0).integers(0, vocab, prompt_len))

    class Identity:
        """The plain model behind the same client loop: no encode/decode."""

        def __init__(self, inner):
            self.inner = inner
            self.manifest = inner.manifest
            self.input_names = inner.input_names

        def token_io(self):
            return self.inner.token_io()

        def input_dtypes(self):
            return self.inner.input_dtypes()

        def check_server(self, server):
            pass  # the plain model is not an artifact

        def state_pairs(self):
            return self.manifest.get("state", [])  # the original's names

        def encode(self, feeds):
            return feeds

        def decode(self, outs):
            return outs

    runs = {"plain": (Server(model, providers), Identity(client)),
            "encrypted": (Server(os.path.join(out, "server", "model.onnx"), providers), client)}
    times = {label: {"prefill": [], "decode": []} for label in runs}
    for srv, cl in runs.values():
        for _ in generate(cl, srv, prompt, max_new_tokens=new_tokens):
            pass  # warm-up: first runs at new shapes allocate
    for _ in range(repeats):  # interleaved, so that drift hits both alike
        for label, (srv, cl) in runs.items():
            t = time.perf_counter()
            stamps = []
            for _tok in generate(cl, srv, prompt, max_new_tokens=new_tokens):
                stamps.append(time.perf_counter())
            times[label]["prefill"].append(stamps[0] - t)
            times[label]["decode"] += list(np.diff(stamps))
    results = {label: {"prefill_tokens_per_s": prompt_len / float(np.median(t["prefill"])),
                       "decode_tokens_per_s": 1.0 / float(np.median(t["decode"]))}
               for label, t in times.items()}
    results["ratio_decode"] = results["encrypted"]["decode_tokens_per_s"] / results["plain"]["decode_tokens_per_s"]
    results["ratio_prefill"] = results["encrypted"]["prefill_tokens_per_s"] / results["plain"]["prefill_tokens_per_s"]
    results["provider"] = providers[0]
    return results
