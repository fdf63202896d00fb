"""Benchmarks: plain model vs server model on the same ONNX Runtime settings.

Runs are interleaved (plain, server, plain, server, ...) after a warm-up so
that drift (thermal, other load) hits both alike. Reports median and p90
latency of each, their ratio, and the client's encode + decode cost as a
share of the plain latency. Nothing here is asserted in tests: numbers vary
by machine.
"""
from __future__ import annotations

import os
import time

import numpy as np

from eeonnx.server import runtime
from eeonnx.client.verify import plain_session, random_feeds


def _stats(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1000.0
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90))}


def bench_model(model: str, out: str, *, provider: str = "cpu", iters: int = 50, warmup: int = 5,
                dims: dict | None = None, seed: int = 0) -> dict:
    from eeonnx import Client, Server

    providers = runtime.providers_for(None, provider)
    plain = plain_session(model, providers)
    server = Server(os.path.join(out, "server", "model.onnx"), providers)
    client = Client(out)
    client.check_server(server)
    feeds = random_feeds(plain, dims, np.random.default_rng(seed))
    enc = client.encode({n: feeds[n] for n in client.input_names})
    # state (KV cache) bypasses encode; random values time the same
    enc.update({s.get("server_input", s["input"]): feeds[s["input"]] for s in client.manifest.get("state", [])})
    for _ in range(warmup):
        plain.run(None, feeds)
        server.run(enc)
    t_plain, t_server, t_client = [], [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        plain.run(None, feeds)
        t1 = time.perf_counter()
        outs = server.run(enc)
        t2 = time.perf_counter()
        client.decode(outs)
        client.encode({n: feeds[n] for n in client.input_names})
        t3 = time.perf_counter()
        t_plain.append(t1 - t0)
        t_server.append(t2 - t1)
        t_client.append(t3 - t2)
    p, s, c = _stats(t_plain), _stats(t_server), _stats(t_client)
    return {
        "model": model,
        "provider": server.session.get_providers()[0],
        "iters": iters,
        "plain": p,
        "server": s,
        "ratio_median": s["median_ms"] / p["median_ms"] if p["median_ms"] else float("nan"),
        "client_ms": c["median_ms"],
        "client_share": c["median_ms"] / p["median_ms"] if p["median_ms"] else float("nan"),
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
