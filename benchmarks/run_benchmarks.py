"""Run `eeonnx bench` over the demo and test models and write a results table.

    python benchmarks/run_benchmarks.py [--provider cpu|cuda] [--iters 200] [--out benchmarks/RESULTS.md]

For each model: compile (default options, fresh key) into a temporary
directory, then time plain vs server interleaved on the same ONNX Runtime
settings (see eeonnx/client/bench.py). Also builds one mid-size CNN (ResNet-like
stages at 64..256 channels on 112x112) so that latencies are not dominated by
per-call overhead. The table and a description of the machine are written
as Markdown.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: symbolic dims used for every model's random feeds
DIMS = {"batch": 1, "N": 1, "sequence": 32, "seq": 32, "past_sequence": 32, "total_sequence": 64,
        "past_sequence + sequence": 64}


def midsize_cnn(path: str) -> None:
    """A ResNet-like CNN: stem 3->64 at 112x112, three stages of two 3x3 convs with
    residuals (64, 128, 256 channels), global pool, 1000-way head."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(x, cin, cout, stride, name):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"),
                      numpy_helper.from_array(np.zeros(cout, np.float32) + 0.01, f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], pads=[1, 1, 1, 1],
                                      strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [name], [f"{name}.r"]))
        return f"{name}.r"

    x = conv("image", 3, 64, 2, "stem")
    cin = 64
    for s, cout in enumerate((64, 128, 256)):
        y = conv(x, cin, cout, 1 if s == 0 else 2, f"s{s}.c1")
        y = conv(y, cout, cout, 1, f"s{s}.c2")
        if cin == cout:
            nodes.append(helper.make_node("Add", [x, y], [f"s{s}.add"]))
            y = f"s{s}.add"
        x, cin = y, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    w = (rng.standard_normal((1000, 256)) / 16).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    g = helper.make_graph(nodes, "midsize_cnn",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"onnxruntime {ort.__version__}, {platform.system()} {platform.release()}")


def main() -> int:
    sys.path.insert(0, ROOT)
    import eeonnx
    from eeonnx.client.bench import bench_generate, bench_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"))
    ap.add_argument("--extra", nargs="*", default=[], metavar="MODEL.onnx",
                    help="More models to include (e.g. exports made by models/export_*.py).")
    a = ap.parse_args()
    rows, gen_rows = [], []
    with tempfile.TemporaryDirectory(prefix="eeonnx-bench-") as tmp:
        mid = os.path.join(tmp, "midsize_cnn.onnx")
        midsize_cnn(mid)
        models = [os.path.join(ROOT, "models", "mlp.onnx"), os.path.join(ROOT, "models", "cnn.onnx"), mid]
        models += sorted(glob.glob(os.path.join(ROOT, "models", "fixtures", "*.onnx"))) + list(a.extra)
        for k, path in enumerate(models):
            name = os.path.basename(path)
            if path in a.extra:
                name = f"{name} ({os.path.getsize(path) / 1e6:.0f} MB)"
            out = os.path.join(tmp, f"{k}.out")
            try:
                comp = eeonnx.compile(path, out)
            except eeonnx.errors.EEError as e:
                rows.append(f"| {name} | refused: {e} | | | | |")
                continue
            r = bench_model(path, out, provider=a.provider, iters=a.iters, dims=DIMS)
            split = comp.split.summary() if comp.split is not None and comp.split.active else None
            client_flops = f"{split['client_flops_share']:.1%}" if split else "0%"
            rows.append(f"| {name} | {r['plain']['median_ms']:.3f} / {r['plain']['p90_ms']:.3f} | "
                        f"{r['server']['median_ms']:.3f} / {r['server']['p90_ms']:.3f} | "
                        f"{r['ratio_median']:.3f} | {r['client_ms']:.3f} ({r['client_share']:.1%}) | {client_flops} |")
            if comp.state:
                g = bench_generate(path, out, provider=a.provider)
                gen_rows.append(
                    f"| {name} | {g['plain']['prefill_tokens_per_s']:.0f} | {g['encrypted']['prefill_tokens_per_s']:.0f} | "
                    f"{g['ratio_prefill']:.3f} | {g['plain']['decode_tokens_per_s']:.0f} | "
                    f"{g['encrypted']['decode_tokens_per_s']:.0f} | {g['ratio_decode']:.3f} |")
            print(rows[-1], flush=True)
    text = [
        "# Benchmark results", "",
        f"Machine: {machine()}. Provider: {a.provider}. {a.iters} interleaved runs per model after warm-up;",
        "symbolic dims: batch 1, sequence 32 (past 32 for KV models). Regenerate with",
        "`python benchmarks/run_benchmarks.py`.", "",
        "| model | plain median / p90 (ms) | server median / p90 (ms) | server/plain | client encode+decode ms (share of plain) | client-side FLOPs (split) |",
        "|---|---|---|---|---|---|",
        *rows, "",
    ]
    if gen_rows:
        text += ["Generation (prompt 16 tokens, 32 new tokens, greedy, KV cache on the server):", "",
                 "| model | plain prefill tok/s | encrypted prefill tok/s | ratio | plain decode tok/s | encrypted decode tok/s | ratio |",
                 "|---|---|---|---|---|---|---|", *gen_rows, ""]
    text += ["Notes: server/plain compares the same graph with permuted weights; any difference is",
             "noise or a lost fusion. The client column is encode + decode on the client's CPU; for",
             "tiny models it is large relative to a sub-millisecond plain run, and it shrinks with model size.", ""]
    with open(a.out, "w") as f:
        f.write("\n".join(text))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
