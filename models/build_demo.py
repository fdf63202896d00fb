"""Build the two committed demo models, ``models/mlp.onnx`` and ``models/cnn.onnx``.

The models are written with ``onnx.helper`` only (no torch); weights are random
from ``numpy.random.default_rng(0)``. Running the script twice gives
byte-identical files.

    python models/build_demo.py              # writes models/mlp.onnx, models/cnn.onnx
    python models/build_demo.py --out DIR    # writes them into DIR instead
    python models/build_demo.py --no-check   # skip the checker/onnxruntime checks
    python models/build_demo.py --zoo DIR    # also write every models/zoo.py model into DIR

Both models use opset 17 and IR version 8.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
PRODUCER = "eeonnx-models"
HERE = os.path.dirname(os.path.abspath(__file__))


class _Builder:
    """Tiny graph builder: collects nodes and initializers, names them uniquely."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def const(self, name: str, array) -> str:
        name = self._unique(name)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape, fan_in: int | None = None) -> str:
        if fan_in is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        w = self.rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        return self.const(name, w.astype(np.float32))

    def bias(self, name: str, n: int) -> str:
        return self.const(name, (0.05 * self.rng.standard_normal(n)).astype(np.float32))

    def op(self, op_type: str, inputs, name: str, output: str | None = None, **attrs) -> str:
        name = self._unique(name)
        out = output if output is not None else self._unique(name + "_out")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    # -- composite layers -------------------------------------------------
    def conv(self, x, cin, cout, k, name, stride=1, pad=None, group=1, bias=True):
        pad = k // 2 if pad is None else pad
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k))
        ins = [x, w] + ([self.bias(f"{name}.bias", cout)] if bias else [])
        return self.op("Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def bn(self, x, c, name):
        r = self.rng
        scale = self.const(f"{name}.scale", (1.0 + 0.1 * r.standard_normal(c)).astype(np.float32))
        b = self.const(f"{name}.bias", (0.1 * r.standard_normal(c)).astype(np.float32))
        mean = self.const(f"{name}.mean", (0.1 * r.standard_normal(c)).astype(np.float32))
        var = self.const(f"{name}.var", (1.0 + 0.1 * np.abs(r.standard_normal(c))).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, b, mean, var], name, epsilon=1e-5)

    def model(self, graph_name, inputs, outputs, doc):
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER, producer_version="0.1", doc_string=doc)
        m.ir_version = IR_VERSION
        return m


def build_mlp() -> onnx.ModelProto:
    """x [batch, 64] -> Gemm/Relu -> Gemm/Relu -> MatMul+Add -> Softmax -> probs [batch, 10]."""
    b = _Builder(seed=0)
    h = b.op("Gemm", ["x", b.weight("fc1.weight", (64, 64)), b.bias("fc1.bias", 64)],
             "fc1", transB=1)
    h = b.op("Relu", [h], "relu1")
    h = b.op("Gemm", [h, b.weight("fc2.weight", (64, 64)), b.bias("fc2.bias", 64)],
             "fc2", transB=1)
    h = b.op("Relu", [h], "relu2")
    h = b.op("MatMul", [h, b.weight("head.weight", (64, 10), fan_in=64)], "head_matmul")
    h = b.op("Add", [h, b.bias("head.bias", 10)], "head_add")
    b.op("Softmax", [h], "softmax", output="probs", axis=-1)
    return b.model(
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        "Demo MLP: 64 -> 64 -> 64 -> 10 with a softmax head.",
    )


def build_cnn() -> onnx.ModelProto:
    """Small CNN on image [1, 3, 32, 32] exercising the common CNN building blocks."""
    b = _Builder(seed=0)
    relu = lambda x, n: b.op("Relu", [x], n)  # noqa: E731

    # Widths are chosen so that every tensor a default `--split auto` compile
    # puts on the wire carries >= 128 key bits (a class of n channels gives
    # log2(n!) bits: 48 channels = 203 bits).
    # stem: Conv + BN + Relu, 3 -> 48 channels
    x = relu(b.bn(b.conv("image", 3, 48, 3, "stem.conv", bias=False), 48, "stem.bn"), "stem.relu")

    # residual block: Conv-BN-Relu-Conv-BN + skip, Relu
    r = relu(b.bn(b.conv(x, 48, 48, 3, "res.conv1", bias=False), 48, "res.bn1"), "res.relu1")
    r = b.bn(b.conv(r, 48, 48, 3, "res.conv2", bias=False), 48, "res.bn2")
    x = relu(b.op("Add", [x, r], "res.add"), "res.relu2")

    # DenseNet-style block: concat(input, conv(input)) on channels, 48 + 16 = 64
    d = relu(b.conv(x, 48, 16, 3, "dense.conv"), "dense.relu")
    x = b.op("Concat", [x, d], "dense.concat", axis=1)

    # depthwise-separable block: depthwise 3x3 (group=64) + pointwise 1x1, 64 -> 96
    x = relu(b.conv(x, 64, 64, 3, "dw.conv", group=64), "dw.relu")
    x = relu(b.conv(x, 64, 96, 1, "pw.conv"), "pw.relu")

    # ShuffleNet channel shuffle, g = 2 groups of 48 channels
    x = b.op("Reshape", [x, b.const("shuffle.shape1", np.array([1, 2, 48, 32, 32], np.int64))],
             "shuffle.reshape1")
    x = b.op("Transpose", [x], "shuffle.transpose", perm=[0, 2, 1, 3, 4])
    x = b.op("Reshape", [x, b.const("shuffle.shape2", np.array([1, 96, 32, 32], np.int64))],
             "shuffle.reshape2")

    # squeeze-and-excitation
    s = b.op("GlobalAveragePool", [x], "se.pool")
    s = relu(b.conv(s, 96, 24, 1, "se.fc1"), "se.relu")
    s = b.op("HardSigmoid", [b.conv(s, 24, 96, 1, "se.fc2")], "se.gate", alpha=1.0 / 6, beta=0.5)
    x = b.op("Mul", [x, s], "se.mul")

    # MaxPool, head
    x = b.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("GlobalAveragePool", [x], "head.pool")
    x = b.op("Flatten", [x], "head.flatten", axis=1)
    b.op("Gemm", [x, b.weight("head.weight", (10, 96)), b.bias("head.bias", 10)], "head.fc",
         output="logits", transB=1)
    return b.model(
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        "Demo CNN: stem, residual, dense concat, depthwise-separable, channel shuffle, "
        "squeeze-excitation, max-pool, linear head.",
    )


def check(model: onnx.ModelProto, feeds: dict) -> dict:
    """onnx.checker (full) + one onnxruntime CPU run; returns the outputs, all finite."""
    import onnxruntime as ort

    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    names = [o.name for o in sess.get_outputs()]
    for n, o in zip(names, outs):
        if not np.all(np.isfinite(o)):
            raise AssertionError(f"{model.graph.name}: output {n} is not finite")
    return dict(zip(names, outs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=HERE, help="output folder (default: models/)")
    ap.add_argument("--no-check", action="store_true", help="skip checker/onnxruntime checks")
    ap.add_argument("--zoo", metavar="DIR", help="also write the models/zoo.py models into DIR")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(1)
    builds = [
        ("mlp.onnx", build_mlp(), {"x": rng.standard_normal((4, 64)).astype(np.float32)}),
        ("cnn.onnx", build_cnn(), {"image": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}),
    ]
    os.makedirs(args.out, exist_ok=True)
    for fname, model, feeds in builds:
        if not args.no_check:
            outs = check(model, feeds)
            shapes = {k: list(v.shape) for k, v in outs.items()}
        path = os.path.join(args.out, fname)
        with open(path, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        msg = f"wrote {path} ({os.path.getsize(path)} bytes)"
        if not args.no_check:
            msg += f", outputs {shapes}"
        print(msg)

    if args.zoo:
        sys.path.insert(0, HERE)
        import zoo  # models/zoo.py

        os.makedirs(args.zoo, exist_ok=True)
        for name, build in zoo.BUILDERS.items():
            model = build()
            if not args.no_check:
                check(model, zoo.make_feeds(model))
            path = os.path.join(args.zoo, name + ".onnx")
            with open(path, "wb") as f:
                f.write(model.SerializeToString(deterministic=True))
            print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
