"""Serving overhead: the server half through ``eeonnx serve`` (Ray Serve, OIP v2 over HTTP on
127.0.0.1) against the same server model in an ONNX Runtime session in this process.

Measures (not a test; nothing is asserted):
- stateless requests (the demo CNN's server model, encrypted inputs): per-request latency
  p50/p99 and requests/s, sequential, for a direct ORT session, the service with binary
  tensors and the service with JSON tensors; and requests/s with 4 client threads;
- encrypted generation (the KV GPT-2 / Llama fixtures): decode tokens/s (after prefill, the
  cache on the server) in process vs over HTTP, with the same Client.

    python benchmarks/serve_bench.py --requests 200 --tokens 32 --out benchmarks/

writes ``serve_results.json`` and ``SERVE.md`` into --out. Ray gets --cpus CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import eeonnx  # noqa: E402
from eeonnx.client.remote import RemoteServer  # noqa: E402
from eeonnx.server.serve import service  # noqa: E402
from eeonnx.server.serve.app import Options  # noqa: E402

CPU = ["CPUExecutionProvider"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latencies(fn, n: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3),
            "requests_per_s": round(1000 * len(ms) / sum(ms), 1), "n": len(ms)}


def decode_rate(client, server, prompt, tokens: int) -> dict:
    """Tokens/s of the decode steps (the first yield includes prefill and is not counted)."""
    gen = client.generate(server, prompt, max_new_tokens=tokens)
    t0 = time.perf_counter()
    next(gen)
    t1 = time.perf_counter()
    n = sum(1 for _ in gen)
    t2 = time.perf_counter()
    return {"prefill_ms": round((t1 - t0) * 1000, 2), "decode_tokens_per_s": round(n / (t2 - t1), 1),
            "decode_ms_per_token": round((t2 - t1) * 1000 / n, 3), "tokens": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eeonnx-serve-bench-"))
    models = {"cnn": ROOT / "models" / "cnn.onnx", "gpt2_kv": ROOT / "models/fixtures/gpt2_kv.dynamo.onnx",
              "llama_kv": ROOT / "models/fixtures/llama_kv.ts.onnx"}
    outs = {}
    for name, src in models.items():
        outs[name] = work / name
        eeonnx.compile(src, outs[name], quiet=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t = time.perf_counter()
    service.start([outs[n] / "server" for n in outs], port=port, num_cpus=args.cpus,
                  options=Options(replicas=1, replica_cpus=1))
    startup = time.perf_counter() - t
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other work; load average "
                                f"{os.getloadavg()[0]:.1f} at the start)",
                     "ray_cpus": args.cpus, "service_start_s": round(startup, 1), "stateless": {}, "generate": {}}
    try:
        client = eeonnx.Client(outs["cnn"])
        x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
        feeds = client.encode({client.input_names[0]: x})
        local = eeonnx.Server(outs["cnn"] / "server" / "model.onnx", CPU)
        binary = RemoteServer(url, client.artifact_id)
        as_json = RemoteServer(url, client.artifact_id, binary=False)
        wire = sum(v.nbytes for v in feeds.values())
        results["stateless"]["model"] = f"models/cnn.onnx server half ({wire} input bytes per request)"
        for name, srv in (("direct ORT session", local), ("service, binary tensors", binary),
                          ("service, JSON tensors", as_json)):
            results["stateless"][name] = summary(latencies(lambda s=srv: s.run(feeds), args.requests))
        with ThreadPoolExecutor(4) as ex:  # 4 clients at once
            t = time.perf_counter()
            list(ex.map(lambda _: binary.run(feeds), range(args.requests)))
            results["stateless"]["service, binary, 4 client threads"] = {
                "requests_per_s": round(args.requests / (time.perf_counter() - t), 1), "n": args.requests}
        for name in ("gpt2_kv", "llama_kv"):
            c = eeonnx.Client(outs[name])
            srv_local = eeonnx.Server(outs[name] / "server" / "model.onnx", CPU)
            remote = RemoteServer(url, c.artifact_id)
            prompt = [5, 17, 42, 99]
            decode_rate(c, srv_local, prompt, 4), decode_rate(c, remote, prompt, 4)  # warm up
            r = {"in process": decode_rate(c, srv_local, prompt, args.tokens),
                 "over HTTP": decode_rate(c, remote, prompt, args.tokens)}
            r["same tokens"] = (list(c.generate(srv_local, prompt, max_new_tokens=args.tokens))
                                == list(c.generate(remote, prompt, max_new_tokens=args.tokens)))
            results["generate"][name] = r
    finally:
        service.stop()

    out = Path(args.out)
    (out / "serve_results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Serving overhead (`benchmarks/serve_bench.py`)", "",
             f"Machine: {results['machine']}; Ray given {args.cpus} CPUs, 1 model replica; service start "
             f"{results['service_start_s']} s. Client and service on the same host (127.0.0.1), so the numbers "
             "are the protocol + Ray Serve overhead, not network time.", "",
             f"## Stateless requests: {results['stateless']['model']}", "",
             "| path | p50 ms | p99 ms | requests/s |", "|---|---|---|---|"]
    for k, v in results["stateless"].items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v.get('p50_ms', '')} | {v.get('p99_ms', '')} | {v['requests_per_s']} |")
    lines += ["", f"## Encrypted decode ({args.tokens} new tokens, prompt of 4, KV cache on the server)", "",
              "| model | path | prefill ms | decode tokens/s | ms/token | same tokens |", "|---|---|---|---|---|---|"]
    for m, r in results["generate"].items():
        for k in ("in process", "over HTTP"):
            v = r[k]
            lines.append(f"| {m} | {k} | {v['prefill_ms']} | {v['decode_tokens_per_s']} | "
                         f"{v['decode_ms_per_token']} | {r['same tokens']} |")
    (out / "SERVE.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
