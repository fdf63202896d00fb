"""Does ONNX Runtime run the server model exactly as it runs the original?

For each MODEL.onnx: compile it (random key) into a temporary directory, save
ORT's optimized graph of both (``SessionOptions.optimized_model_filepath``),
print the op types whose counts differ (empty = the same fused kernels), then
time plain and server interleaved (order alternating) and print the median of
the paired ratios with a bootstrap 95% interval.

    python benchmarks/fusions.py models/fixtures/bert.ts.onnx out/minilm/minilm.ts.onnx \
        --dim batch=1 --dim sequence=128 --iters 100
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import eeonnx  # noqa: E402
from eeonnx.client.bench import ratio_interval  # noqa: E402
from eeonnx.client.verify import random_feeds  # noqa: E402


def optimized_ops(path: str, scratch: str) -> collections.Counter:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = os.path.join(scratch, "opt.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    m = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return collections.Counter(n.op_type for n in m.graph.node)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE")
    ap.add_argument("--iters", type=int, default=100)
    a = ap.parse_args(argv)
    dims = {k: int(v) for k, v in (d.split("=") for d in a.dim)}
    for model in a.models:
        with tempfile.TemporaryDirectory(prefix="eeonnx-fusions-") as tmp:
            out = os.path.join(tmp, "out")
            comp = eeonnx.compile(model, out)
            server = os.path.join(out, "server", "model.onnx")
            ops_o = optimized_ops(model, tmp)
            ops_s = optimized_ops(server, tmp)
            diff = {k: (ops_o[k], ops_s[k]) for k in sorted(set(ops_o) | set(ops_s)) if ops_o[k] != ops_s[k]}
            so = ort.SessionOptions()
            so.log_severity_level = 3
            plain = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            srv = eeonnx.Server(server, ["CPUExecutionProvider"])
            client = eeonnx.Client(out)
            state = {s["input"]: s["axis"] for s in client.manifest.get("state", [])}
            feeds = random_feeds(plain, dims, np.random.default_rng(0), empty=state, int_ones=True)
            enc = dict(zip(client.server_inputs, client._enc.run(None, client.conform(
                {n: feeds[n] for n in client.input_names}))))
            enc.update({s.get("server_input", s["input"]): feeds[s["input"]] for s in client.manifest["state"]})
            for _ in range(5):
                plain.run(None, feeds)
                srv.run(enc)
            tp, ts = [], []
            for k in range(a.iters):
                for which in ((0, 1) if k % 2 == 0 else (1, 0)):
                    t0 = time.perf_counter()
                    plain.run(None, feeds) if which == 0 else srv.run(enc)
                    (tp if which == 0 else ts).append(time.perf_counter() - t0)
            r, lo, hi = ratio_interval(ts, tp)
            print(f"{os.path.basename(model)}: server structure "
                  f"{comp.manifest(server)['server_structure']['structure']}; "
                  f"ORT op counts that differ (original, server): {diff or 'none'}; "
                  f"server/plain {r:.3f} [{lo:.3f}, {hi:.3f}] over {a.iters} interleaved runs "
                  f"(plain median {np.median(tp) * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
