"""Compile throughput and peak memory on a generated LLaMA-shaped model.

    python benchmarks/big_model.py --gb 3 --dtype float16 --workdir /tmp/eebig

Writes a decoder-only transformer block stack (embedding, per-layer
attention q/k/v/o and SwiGLU MLP weights, RMSNorm, LM head) with random
weights as ONNX + external data (the only form above 2 GB), then runs
``eeonnx compile`` in a child process and reports wall time, MB/s and the
child's peak RSS. Weights are written one tensor at a time, so generating
the model needs little memory too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}


def _external(name: str, array: np.ndarray, data_file, data_name: str, elem: int) -> onnx.TensorProto:
    offset = data_file.tell()
    data_file.write(array.tobytes())
    t = onnx.TensorProto(name=name, data_type=elem, dims=list(array.shape))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def build(path: str, target_bytes: int, dtype: str, d: int = 2048, vocab: int = 32000, heads: int = 16) -> dict:
    np_t, elem = DTYPES[dtype]
    ffn = int(d * 8 / 3) // 64 * 64
    per_layer = (4 * d * d + 3 * d * ffn + 2 * d) * np.dtype(np_t).itemsize
    fixed = 2 * vocab * d * np.dtype(np_t).itemsize
    layers = max(1, int((target_bytes - fixed) // per_layer))
    rng = np.random.default_rng(0)
    data_name = os.path.basename(path) + ".data"
    nodes, inits = [], []

    def w(name, shape):
        inits.append(_external(name, (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np_t),
                               f, data_name, elem))
        return name

    def rms(x, name):
        nodes.extend([
            helper.make_node("Mul", [x, x], [f"{name}.sq"]),
            helper.make_node("ReduceMean", [f"{name}.sq", "axes_last"], [f"{name}.ms"], keepdims=1),
            helper.make_node("Add", [f"{name}.ms", "eps"], [f"{name}.mse"]),
            helper.make_node("Sqrt", [f"{name}.mse"], [f"{name}.rt"]),
            helper.make_node("Div", [x, f"{name}.rt"], [f"{name}.n"]),
            helper.make_node("Mul", [f"{name}.n", w(f"{name}.weight", (d,))], [f"{name}.out"]),
        ])
        return f"{name}.out"

    with open(os.path.join(os.path.dirname(path), data_name), "wb") as f:
        nodes.append(helper.make_node("Gather", [w("embed", (vocab, d)), "input_ids"], ["h0"]))
        h = "h0"
        hd = d // heads
        for i in range(layers):
            p = f"l{i}"
            x = rms(h, f"{p}.norm1")
            for proj in ("q", "k", "v"):
                nodes.append(helper.make_node("MatMul", [x, w(f"{p}.{proj}", (d, d))], [f"{p}.{proj}o"]))
                nodes.append(helper.make_node("Reshape", [f"{p}.{proj}o", "split_heads"], [f"{p}.{proj}h"]))
                nodes.append(helper.make_node("Transpose", [f"{p}.{proj}h"], [f"{p}.{proj}t"], perm=[0, 2, 1, 3]))
            nodes += [
                helper.make_node("Transpose", [f"{p}.kt"], [f"{p}.kT"], perm=[0, 1, 3, 2]),
                helper.make_node("MatMul", [f"{p}.qt", f"{p}.kT"], [f"{p}.s"]),
                helper.make_node("Mul", [f"{p}.s", "scale"], [f"{p}.ss"]),
                helper.make_node("Softmax", [f"{p}.ss"], [f"{p}.a"], axis=-1),
                helper.make_node("MatMul", [f"{p}.a", f"{p}.vt"], [f"{p}.av"]),
                helper.make_node("Transpose", [f"{p}.av"], [f"{p}.avt"], perm=[0, 2, 1, 3]),
                helper.make_node("Reshape", [f"{p}.avt", "merge_heads"], [f"{p}.m"]),
                helper.make_node("MatMul", [f"{p}.m", w(f"{p}.o", (d, d))], [f"{p}.oo"]),
                helper.make_node("Add", [h, f"{p}.oo"], [f"{p}.r1"]),
            ]
            x = rms(f"{p}.r1", f"{p}.norm2")
            nodes += [
                helper.make_node("MatMul", [x, w(f"{p}.gate", (d, ffn))], [f"{p}.g"]),
                helper.make_node("Sigmoid", [f"{p}.g"], [f"{p}.gs"]),
                helper.make_node("Mul", [f"{p}.g", f"{p}.gs"], [f"{p}.silu"]),
                helper.make_node("MatMul", [x, w(f"{p}.up", (d, ffn))], [f"{p}.u"]),
                helper.make_node("Mul", [f"{p}.silu", f"{p}.u"], [f"{p}.gu"]),
                helper.make_node("MatMul", [f"{p}.gu", w(f"{p}.down", (ffn, d))], [f"{p}.dn"]),
                helper.make_node("Add", [f"{p}.r1", f"{p}.dn"], [f"{p}.out"]),
            ]
            h = f"{p}.out"
        x = rms(h, "final_norm")
        nodes.append(helper.make_node("MatMul", [x, w("lm_head", (d, vocab))], ["logits"]))
    small = [
        helper.make_tensor("axes_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("eps", elem, [], [1e-5]),
        helper.make_tensor("scale", elem, [], [1.0 / np.sqrt(hd)]),
        helper.make_tensor("split_heads", TensorProto.INT64, [4], [0, 0, heads, hd]),
        helper.make_tensor("merge_heads", TensorProto.INT64, [3], [0, 0, d]),
    ]
    graph = helper.make_graph(
        nodes, "llama_shaped",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", elem, ["batch", "seq", vocab])],
        initializer=inits + small)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)  # tensors already point at the external data file
    size = os.path.getsize(os.path.join(os.path.dirname(path), data_name))
    return {"layers": layers, "d_model": d, "ffn": ffn, "vocab": vocab, "dtype": dtype, "bytes": size}


def child(src: str, out: str, transforms: str = "permutation") -> None:
    """Compile in this process while sampling anonymous and file-backed resident memory
    (memory-mapped weights count as file-backed: the kernel can drop them at will)."""
    import threading

    peak = {"RssAnon:": 0, "RssFile:": 0}

    def sample():
        while True:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split()[0]
                    if key in peak:
                        peak[key] = max(peak[key], int(line.split()[1]))
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    import eeonnx

    t0 = time.perf_counter()
    eeonnx.compile(src, out, transforms=transforms)
    print(json.dumps({"compile_s": round(time.perf_counter() - t0, 2),
                      "peak_anon_MB": peak["RssAnon:"] // 1024, "peak_file_backed_MB": peak["RssFile:"] // 1024}))


def main() -> int:
    if len(sys.argv) in (4, 5) and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=3.0, help="Weight bytes to generate, in GB.")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    ap.add_argument("--workdir", default="/tmp/eeonnx-big")
    ap.add_argument("--keep", action="store_true", help="Keep the generated model and artifact.")
    ap.add_argument("--transforms", choices=["permutation", "max"], default="permutation",
                    help="compile --transforms (max: continuous groups where exact; float32 only "
                         "unless the compiler is told to allow rounding)")
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    src = os.path.join(a.workdir, "model.onnx")
    t0 = time.perf_counter()
    info = build(src, int(a.gb * 1e9), a.dtype)
    info["generate_s"] = round(time.perf_counter() - t0, 1)
    out = os.path.join(a.workdir, "out")
    proc = subprocess.run([sys.executable, __file__, "--child", src, out, a.transforms],
                          capture_output=True, text=True)
    info["transforms"] = a.transforms
    info["compile_ok"] = proc.returncode == 0
    if proc.returncode == 0:
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        info.update(measured)
        info["throughput_MB_s"] = round(info["bytes"] / 1e6 / measured["compile_s"], 1)
        info["peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    else:
        info["stderr"] = proc.stderr[-800:]
    print(json.dumps(info, indent=2))
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
