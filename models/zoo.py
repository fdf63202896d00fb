"""Small ONNX models that imitate real exporters' styles, built with ``onnx.helper``.

Tests use these to exercise the compiler's general rules on the shapes of graph
that real exporters produce (old Caffe2 model-zoo files, Paddle, tf2onnx NHWC
graphs, TorchScript flatten patterns) and on a wide op set.

Every builder takes no required arguments, returns an ``onnx.ModelProto`` and is
deterministic: weights come from ``numpy.random.default_rng(seed)`` with a fixed
seed, names come from fixed strings, so two calls serialize to identical bytes.
Every model passes ``onnx.checker.check_model(model, full_check=True)`` and runs
in onnxruntime (CPUExecutionProvider) with finite outputs; all are < 200 KB.

    from models import zoo
    for name, build in zoo.BUILDERS.items():
        model = build()
        feeds = zoo.make_feeds(model)

This module imports nothing from the rest of the repository.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "caffe2_opset9_cnn",
    "paddle_constant_weights_cnn",
    "tf_nhwc_cnn",
    "torch_style_flatten_reshape",
    "ops_zoo_elementwise",
    "ops_zoo_structural",
    "upsample_opset9",
    "gemm_variants",
    "BUILDERS",
    "make_feeds",
]

PRODUCER = "eeonnx-models-zoo"
F32 = np.float32
I64 = np.int64


# --------------------------------------------------------------------------
# builder helper
# --------------------------------------------------------------------------
class _G:
    """Collects nodes and weights; weights go to initializers or Constant nodes."""

    def __init__(self, seed: int, *, constants_as_nodes: bool = False):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.constants_as_nodes = constants_as_nodes
        self._names: set[str] = set()

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    # -- values ------------------------------------------------------------
    def const(self, name: str, array, *, as_node: bool | None = None) -> str:
        """A constant tensor: an initializer, or a Constant node when as_node."""
        arr = np.asarray(array)
        as_node = self.constants_as_nodes if as_node is None else as_node
        name = self.unique(name)
        tensor = numpy_helper.from_array(arr, name)
        if as_node:
            node_name = self.unique(name + "_const")
            self.nodes.append(helper.make_node("Constant", [], [name], name=node_name, value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def ints(self, name: str, values, **kw) -> str:
        return self.const(name, np.array(values, dtype=I64), **kw)

    def floats(self, name: str, values, **kw) -> str:
        return self.const(name, np.array(values, dtype=F32), **kw)

    def randn(self, name: str, shape, scale: float = 1.0, offset: float = 0.0, **kw) -> str:
        a = offset + scale * self.rng.standard_normal(shape)
        return self.const(name, a.astype(F32), **kw)

    def weight(self, name: str, shape, fan_in: int | None = None, **kw) -> str:
        if fan_in is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        return self.randn(name, shape, scale=float(np.sqrt(2.0 / max(fan_in, 1))), **kw)

    def positive(self, name: str, shape, lo: float = 0.5, hi: float = 1.5, **kw) -> str:
        return self.const(name, self.rng.uniform(lo, hi, shape).astype(F32), **kw)

    # -- nodes -------------------------------------------------------------
    def op(self, op_type: str, inputs, name: str | None = None, *, outputs=None,
           n_out: int = 1, domain: str = "", **attrs):
        """Add a node; returns its output name (or the list when n_out > 1)."""
        name = self.unique(name or op_type)
        if outputs is None:
            outputs = [self.unique(f"{name}_output_{i}") for i in range(n_out)]
        elif isinstance(outputs, str):
            outputs = [outputs]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name,
                                           domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def conv(self, x: str, cin: int, cout: int, k, name: str, *, stride=1, pad=None,
             dilation=1, group: int = 1, bias: bool = True, nd: int = 2,
             w_name: str | None = None, b_name: str | None = None) -> str:
        ks = list(k) if isinstance(k, (list, tuple)) else [k] * nd
        ds = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation] * nd
        if pad is None:
            pad = [d * (kk - 1) // 2 for kk, d in zip(ks, ds)]
        pads = list(pad) if isinstance(pad, (list, tuple)) else [pad] * nd
        w = self.weight(w_name or f"{name}.weight", [cout, cin // group] + ks)
        ins = [x, w] + ([self.randn(b_name or f"{name}.bias", [cout], 0.05)] if bias else [])
        st = list(stride) if isinstance(stride, (list, tuple)) else [stride] * nd
        return self.op("Conv", ins, name, kernel_shape=ks, strides=st, pads=pads + pads,
                       dilations=ds, group=group)

    # -- model -------------------------------------------------------------
    def model(self, graph_name: str, inputs, outputs, *, opset: int, ir_version: int,
              doc: str, inits_as_inputs: bool = False, extra_opsets=()) -> onnx.ModelProto:
        inputs = list(inputs)
        if inits_as_inputs:
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in self.inits]
        graph = helper.make_graph(self.nodes, graph_name, inputs, list(outputs), self.inits)
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        m = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                              producer_version="0.1", doc_string=doc)
        m.ir_version = ir_version
        return m


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _bn_params(g: _G, prefix: str, c: int, **kw):
    """scale, bias, mean, var for BatchNormalization (var > 0)."""
    return [
        g.randn(f"{prefix}_s", [c], 0.1, 1.0, **kw),
        g.randn(f"{prefix}_b", [c], 0.1, **kw),
        g.randn(f"{prefix}_rm", [c], 0.1, **kw),
        g.positive(f"{prefix}_riv", [c], 0.8, 1.2, **kw),
    ]


# --------------------------------------------------------------------------
# exporter styles
# --------------------------------------------------------------------------
def caffe2_opset9_cnn() -> onnx.ModelProto:
    """Old ONNX model-zoo / Caffe2 export style (opset 9, IR version 3).

    Imitates the Caffe2-converted models of the original ONNX model zoo
    (squeezenet, resnet50 ``model.onnx`` from 2018): every initializer is ALSO
    listed as a graph input (required before IR v4), blob-style names such as
    ``data_0``, ``conv1_w_0``, ``softmaxout_1``, opset-9 BatchNormalization (no
    ``spatial``/``training_mode``), an inference Dropout with its mask output,
    Flatten, Gemm with a required C, and a Softmax head.

    data_0 [1, 3, 16, 16] -> softmaxout_1 [1, 10]
    """
    g = _G(seed=9)
    x = g.conv("data_0", 3, 8, 3, "conv1", pad=1, w_name="conv1_w_0", b_name="conv1_b_0")
    x = g.op("BatchNormalization", [x] + _bn_params(g, "conv1_bn", 8), "conv1_bn",
             outputs="conv1_bn_1", epsilon=1e-5, momentum=0.9)
    x = g.op("Relu", [x], "conv1_relu", outputs="conv1_2")
    x = g.op("MaxPool", [x], "pool1", outputs="pool1_1", kernel_shape=[2, 2], strides=[2, 2])
    x = g.conv(x, 8, 16, 3, "conv2", pad=1, w_name="conv2_w_0", b_name="conv2_b_0")
    x = g.op("BatchNormalization", [x] + _bn_params(g, "conv2_bn", 16), "conv2_bn",
             outputs="conv2_bn_1", epsilon=1e-5, momentum=0.9)
    x = g.op("Relu", [x], "conv2_relu", outputs="conv2_2")
    x = g.op("MaxPool", [x], "pool2", outputs="pool2_1", kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Flatten", [x], "flatten", outputs="OC2_DUMMY_0", axis=1)  # [1, 16*4*4]
    x = g.op("Gemm", [x, g.weight("fc1_w_0", [32, 256]), g.randn("fc1_b_0", [32], 0.05)],
             "fc1", outputs="fc1_1", transB=1, alpha=1.0, beta=1.0)
    x = g.op("Relu", [x], "fc1_relu", outputs="fc1_2")
    x, _mask = g.op("Dropout", [x], "drop1", outputs=["drop1_1", "_drop1_mask_1"], ratio=0.5)
    x = g.op("Gemm", [x, g.weight("fc2_w_0", [10, 32]), g.randn("fc2_b_0", [10], 0.05)],
             "fc2", outputs="fc2_1", transB=1)
    g.op("Softmax", [x], "softmax", outputs="softmaxout_1", axis=1)
    return g.model(
        "caffe2_opset9_cnn",
        [_vi("data_0", [1, 3, 16, 16])],
        [_vi("softmaxout_1", [1, 10])],
        opset=9, ir_version=3, inits_as_inputs=True,
        doc="Caffe2 model-zoo style: opset 9, IR 3, initializers listed as graph inputs.",
    )


def paddle_constant_weights_cnn() -> onnx.ModelProto:
    """Paddle2ONNX export style (opset 11): weights are Constant nodes, not initializers.

    Imitates paddle2onnx graphs: every weight/bias/shape tensor is produced by a
    ``Constant`` node (the graph has no initializers), Conv has no bias input and
    the bias is added by an ``Add`` with a [1, C, 1, 1] broadcast constant, Pad
    takes its pads (and constant value) as inputs, Resize is nearest with an empty
    ``roi`` and a ``scales`` input of [1, 1, 2, 2] (asymmetric / floor), then
    Concat, AveragePool and a ReduceMean (axes attribute, opset 11) head followed
    by MatMul + Add.

    x [1, 3, 16, 16] -> save_infer_model/scale_0.tmp_0 [1, 10]
    """
    g = _G(seed=11, constants_as_nodes=True)

    def conv_bias(x, cin, cout, k, name, stride=1, pad=0):
        y = g.conv(x, cin, cout, k, f"{name}", stride=stride, pad=pad, bias=False)
        b = g.randn(f"{name}.b_0", [1, cout, 1, 1], 0.05)
        return g.op("Add", [y, b], f"{name}_add")

    a = g.op("Relu", [conv_bias("x", 3, 8, 3, "conv2d_0")], "relu_0")            # [1,8,14,14]
    pads = g.ints("pad_0.pads", [0, 0, 1, 1, 0, 0, 1, 1])
    pval = g.floats("pad_0.value", 0.0)
    a = g.op("Pad", [a, pads, pval], "pad_0", mode="constant")                   # [1,8,16,16]
    b = g.op("Relu", [conv_bias(a, 8, 8, 3, "conv2d_1", stride=2, pad=1)], "relu_1")  # [1,8,8,8]
    roi = g.floats("resize_0.roi", np.zeros([0], F32))
    scales = g.floats("resize_0.scales", [1.0, 1.0, 2.0, 2.0])
    b = g.op("Resize", [b, roi, scales], "resize_0", mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")  # [1,8,16,16]
    c = g.op("Concat", [a, b], "concat_0", axis=1)                                # [1,16,16,16]
    c = g.op("AveragePool", [c], "pool2d_0", kernel_shape=[2, 2], strides=[2, 2])  # [1,16,8,8]
    c = g.op("Relu", [conv_bias(c, 16, 16, 1, "conv2d_2")], "relu_2")
    c = g.op("ReduceMean", [c], "reduce_mean_0", axes=[2, 3], keepdims=0)         # [1,16]
    c = g.op("MatMul", [c, g.weight("linear_0.w_0", [16, 10], fan_in=16)], "linear_0")
    g.op("Add", [c, g.randn("linear_0.b_0", [10], 0.05)], "linear_0_add",
         outputs="save_infer_model/scale_0.tmp_0")
    assert not g.inits
    return g.model(
        "paddle_constant_weights_cnn",
        [_vi("x", [1, 3, 16, 16])],
        [_vi("save_infer_model/scale_0.tmp_0", [1, 10])],
        opset=11, ir_version=6,
        doc="Paddle2ONNX style: Constant-node weights, broadcast bias Add, Pad/Resize inputs.",
    )


def tf_nhwc_cnn() -> onnx.ModelProto:
    """tf2onnx (Keras) export style: NHWC graph input/output around an NCHW core.

    Imitates tf2onnx: the NHWC input gets a channel-last preprocessing
    ``Mul``/``Add`` by [C] constants (Keras Rescaling/Normalization), then
    ``Transpose(perm=0,3,1,2)`` into NCHW for Conv/Relu/Conv, then
    ``Transpose(perm=0,2,3,1)`` back to NHWC where a folded BatchNorm appears as
    ``Mul`` + ``Add`` by [C] constants on the last axis, Relu, and a Dense layer
    on the channel axis as ``MatMul`` [C, K] + ``Add`` [K]. Tensor names carry
    tf-style ``scope/op:0`` names.

    input_1 [1, 16, 16, 3] (NHWC) -> dense [1, 16, 16, 4] (NHWC)
    """
    g = _G(seed=2)
    s = "StatefulPartitionedCall/model/"
    x = g.op("Mul", ["input_1", g.floats(f"{s}rescaling/Cast/x:0", [1 / 58.4, 1 / 57.1, 1 / 57.4])],
             f"{s}rescaling/mul", outputs=f"{s}rescaling/mul:0")
    x = g.op("Add", [x, g.floats(f"{s}rescaling/Cast_1/x:0", [-2.1, -2.0, -1.8])],
             f"{s}rescaling/add", outputs=f"{s}rescaling/add:0")
    x = g.op("Transpose", [x], f"{s}conv2d/Conv2D__6", outputs=f"{s}conv2d/Conv2D__6:0",
             perm=[0, 3, 1, 2])
    x = g.conv(x, 3, 8, 3, f"{s}conv2d/Conv2D", pad=1)
    x = g.op("Relu", [x], f"{s}conv2d/Relu", outputs=f"{s}conv2d/Relu:0")
    x = g.conv(x, 8, 8, 3, f"{s}conv2d_1/Conv2D", pad=1)
    x = g.op("Transpose", [x], f"{s}conv2d_1/BiasAdd__12", outputs=f"{s}conv2d_1/BiasAdd:0",
             perm=[0, 2, 3, 1])                                                 # [1,16,16,8] NHWC
    x = g.op("Mul", [x, g.randn(f"{s}batch_normalization/batchnorm/mul:0", [8], 0.1, 1.0)],
             f"{s}batch_normalization/batchnorm/mul_1",
             outputs=f"{s}batch_normalization/batchnorm/mul_1:0")
    x = g.op("Add", [x, g.randn(f"{s}batch_normalization/batchnorm/sub:0", [8], 0.1)],
             f"{s}batch_normalization/batchnorm/add_1",
             outputs=f"{s}batch_normalization/batchnorm/add_1:0")
    x = g.op("Relu", [x], f"{s}re_lu/Relu", outputs=f"{s}re_lu/Relu:0")
    x = g.op("MatMul", [x, g.weight(f"{s}dense/Tensordot/ReadVariableOp:0", [8, 4], fan_in=8)],
             f"{s}dense/Tensordot/MatMul", outputs=f"{s}dense/Tensordot:0")
    g.op("Add", [x, g.randn(f"{s}dense/BiasAdd/ReadVariableOp:0", [4], 0.05)],
         f"{s}dense/BiasAdd", outputs="dense")
    return g.model(
        "tf_nhwc_cnn",
        [_vi("input_1", [1, 16, 16, 3])],
        [_vi("dense", [1, 16, 16, 4])],
        opset=13, ir_version=7,
        doc="tf2onnx style: NHWC I/O, Transpose to NCHW and back, channel-last Mul/Add/MatMul.",
    )


def torch_style_flatten_reshape() -> onnx.ModelProto:
    """TorchScript ``torch.onnx.export`` style ``x.view(x.size(0), -1)`` flatten.

    Imitates the dynamic flatten that torch.onnx emits for ``x.view(x.size(0), -1)``
    with ``dynamic_axes``: ``Shape -> Gather(indices=0) -> Unsqueeze(axes=[0]) ->
    Concat(with constant [-1]) -> Reshape``, followed by ``nn.Linear`` as
    ``Gemm(transB=1)``. The batch dim is symbolic ``N``; names follow the
    torch ``/module/Op_output_0`` and ``onnx::Op_NN`` conventions.

    input [N, 3, 8, 8] -> output [N, 10]
    """
    g = _G(seed=5)
    x = g.conv("input", 3, 4, 3, "/features/conv/Conv", pad=1)
    x = g.op("Relu", [x], "/features/relu/Relu", outputs="/features/relu/Relu_output_0")
    shp = g.op("Shape", [x], "/Shape", outputs="/Shape_output_0")
    idx = g.const("/Constant_output_0", np.array(0, dtype=I64))
    n = g.op("Gather", [shp, idx], "/Gather", outputs="/Gather_output_0", axis=0)
    n = g.op("Unsqueeze", [n, g.ints("onnx::Unsqueeze_21", [0])], "/Unsqueeze",
             outputs="/Unsqueeze_output_0")
    minus1 = g.ints("onnx::Concat_22", [-1])
    shape = g.op("Concat", [n, minus1], "/Concat", outputs="/Concat_output_0", axis=0)
    x = g.op("Reshape", [x, shape], "/Reshape", outputs="/Reshape_output_0")           # [N, 256]
    g.op("Gemm", [x, g.weight("fc.weight", [10, 256]), g.randn("fc.bias", [10], 0.05)],
         "/fc/Gemm", outputs="output", alpha=1.0, beta=1.0, transB=1)
    return g.model(
        "torch_style_flatten_reshape",
        [_vi("input", ["N", 3, 8, 8])],
        [_vi("output", ["N", 10])],
        opset=13, ir_version=7,
        doc="torch.onnx style: Shape/Gather/Unsqueeze/Concat/Reshape dynamic flatten + Gemm.",
    )


# --------------------------------------------------------------------------
# op coverage
# --------------------------------------------------------------------------
def ops_zoo_elementwise() -> onnx.ModelProto:
    """Op coverage: unary activations and broadcasting binary/variadic ops (opset 20).

    Imitates what PyTorch/Keras exporters emit for activation-heavy blocks. After a
    Conv on [1, 8, 4, 4]: LeakyRelu, PRelu (slope [8, 1, 1]), Elu, Selu, Celu,
    Sigmoid, Tanh, HardSigmoid, HardSwish, Softplus, Softsign, Mish, Gelu, Erf,
    Clip (min/max inputs), Exp (of a Tanh-bounded value), Log (of Abs + 1),
    Sqrt (of Abs), Pow (exponent 2.0 constant), Abs, Neg, Reciprocal (of Abs + 1);
    then Sum / Max / Min / Mean / Sub / Div with broadcast constants of shape
    [8, 1, 1] (per channel), [1, 8, 1, 1], [4] (last spatial axis) and scalars;
    then a Conv to the output. Opset 20 (Gelu is opset 20, Mish opset 18).

    x [1, 8, 4, 4] -> y [1, 4, 4, 4]
    """
    g = _G(seed=20)
    one = g.floats("one", 1.0)
    x = g.conv("x", 8, 8, 3, "conv_in")                                  # [1,8,4,4]

    # a chain of activations (each a function of the previous)
    a = g.op("LeakyRelu", [x], "leaky_relu", alpha=0.1)
    a = g.op("PRelu", [a, g.randn("prelu.slope", [8, 1, 1], 0.05, 0.25)], "prelu")
    a = g.op("Elu", [a], "elu", alpha=1.0)
    a = g.op("Selu", [a], "selu")
    a = g.op("Celu", [a], "celu", alpha=1.5)
    a = g.op("HardSwish", [a], "hard_swish")
    a = g.op("Mish", [a], "mish")
    a = g.op("Gelu", [a], "gelu", approximate="none")
    a = g.op("Softplus", [a], "softplus")
    b1 = g.op("Softsign", [a], "softsign")                               # (-1, 1)
    b2 = g.op("Erf", [a], "erf")
    b3 = g.op("Sigmoid", [a], "sigmoid")
    b4 = g.op("HardSigmoid", [a], "hard_sigmoid", alpha=0.2, beta=0.5)
    t = g.op("Tanh", [x], "tanh")                                        # bounded in [-1, 1]
    b5 = g.op("Exp", [t], "exp")
    ab = g.op("Abs", [x], "abs")
    ab1 = g.op("Add", [ab, one], "abs_plus_one")
    b6 = g.op("Log", [ab1], "log")
    b7 = g.op("Sqrt", [ab], "sqrt")
    b8 = g.op("Pow", [x, g.floats("pow.exponent", 2.0)], "pow")
    b9 = g.op("Neg", [x], "neg")
    b10 = g.op("Reciprocal", [ab1], "reciprocal")
    b11 = g.op("Clip", [x, g.floats("clip.min", -0.5), g.floats("clip.max", 0.5)], "clip")

    # variadic / binary ops with broadcasting constants
    s = g.op("Sum", [b1, b2, b3, g.randn("sum.c", [8, 1, 1], 0.1)], "sum")
    s = g.op("Max", [s, b4, g.randn("max.c", [1, 8, 1, 1], 0.1)], "max")
    s = g.op("Min", [s, b5, g.randn("min.c", [4], 0.1, 3.0)], "min")
    s = g.op("Mean", [s, b6, b7, g.floats("mean.c", 0.25)], "mean")
    s = g.op("Sub", [s, g.randn("sub.c", [8, 1, 1], 0.1)], "sub")
    s = g.op("Sub", [b8, s], "sub_rev")
    s = g.op("Add", [s, b9], "add_neg")
    s = g.op("Mul", [s, b10], "mul_recip")
    s = g.op("Add", [s, b11], "add_clip")
    s = g.op("Div", [s, g.positive("div.c", [1, 8, 1, 1], 1.0, 2.0)], "div")
    s = g.op("Div", [s, g.floats("div.scalar", 2.0)], "div_scalar")
    g.op("Conv", [s, g.weight("conv_out.weight", [4, 8, 1, 1]), g.randn("conv_out.bias", [4], 0.05)],
         "conv_out", outputs="y", kernel_shape=[1, 1])
    return g.model(
        "ops_zoo_elementwise",
        [_vi("x", [1, 8, 4, 4])],
        [_vi("y", [1, 4, 4, 4])],
        opset=20, ir_version=9,
        doc="Unary activations and broadcasting binary/variadic ops after a Conv.",
    )


def ops_zoo_structural() -> onnx.ModelProto:
    """Op coverage: layout/pooling/normalization/reduction ops (opset 18).

    Imitates the structural ops real exporters emit (PyTorch ConvTranspose with
    groups, PixelShuffle as DepthToSpace, torch.chunk as Split, narrow/slicing,
    Conv1d/Conv3d with dilation, reductions). On x [1, 4, 8, 8]:
    Conv -> ConvTranspose (group=2, stride 2) -> SpaceToDepth -> DepthToSpace
    (DCR) -> SpaceToDepth -> DepthToSpace (CRD) -> MaxPool -> InstanceNormalization
    -> Split (2 on channels) with one half through Reshape + Conv1d (dilation 2)
    and the other through Unsqueeze + Conv3d (dilations 1,2,2) + Squeeze -> Concat
    -> Slice on channels -> Slice on spatial (with steps) -> LRN -> LpPool /
    GlobalMaxPool / ReduceSum(keepdims=1) / ReduceMax(keepdims=0) /
    ReduceMin(keepdims=1, over channels) / ReduceL2(keepdims=0) -> LogSoftmax.

    x [1, 4, 8, 8] -> logp [1, 6], feat [1, 6, 3, 3]
    """
    g = _G(seed=18)
    x = g.conv("x", 4, 8, 3, "conv_in")                                            # [1,8,8,8]
    x = g.op("Relu", [x], "relu_in")
    x = g.op("ConvTranspose", [x, g.weight("deconv.weight", [8, 4, 2, 2], fan_in=16),
                               g.randn("deconv.bias", [8], 0.05)],
             "deconv", kernel_shape=[2, 2], strides=[2, 2], group=2)             # [1,8,16,16]
    x = g.op("SpaceToDepth", [x], "s2d_1", blocksize=2)                            # [1,32,8,8]
    x = g.op("DepthToSpace", [x], "d2s_dcr", blocksize=2, mode="DCR")             # [1,8,16,16]
    x = g.op("SpaceToDepth", [x], "s2d_2", blocksize=2)                            # [1,32,8,8]
    x = g.op("DepthToSpace", [x], "d2s_crd", blocksize=2, mode="CRD")             # [1,8,16,16]
    x = g.op("MaxPool", [x], "maxpool", kernel_shape=[2, 2], strides=[2, 2])     # [1,8,8,8]
    x = g.op("InstanceNormalization", [x, g.randn("in.scale", [8], 0.1, 1.0),
                                       g.randn("in.bias", [8], 0.1)], "instnorm", epsilon=1e-5)
    h1, h2 = g.op("Split", [x, g.ints("split.sizes", [4, 4])], "split", n_out=2, axis=1)

    # Conv1d with dilation on the flattened spatial axis
    c1 = g.op("Reshape", [h1, g.ints("conv1d.shape_in", [1, 4, 64])], "conv1d_reshape_in")
    c1 = g.conv(c1, 4, 4, 3, "conv1d", dilation=2, nd=1)                           # [1,4,64]
    c1 = g.op("Reshape", [c1, g.ints("conv1d.shape_out", [1, 4, 8, 8])], "conv1d_reshape_out")
    # Conv3d with dilations (1, 2, 2) on a unit depth axis
    c2 = g.op("Unsqueeze", [h2, g.ints("conv3d.unsq_axes", [2])], "conv3d_unsqueeze")  # [1,4,1,8,8]
    c2 = g.conv(c2, 4, 4, [1, 3, 3], "conv3d", dilation=[1, 2, 2], nd=3)
    c2 = g.op("Squeeze", [c2, g.ints("conv3d.sq_axes", [2])], "conv3d_squeeze")      # [1,4,8,8]
    x = g.op("Concat", [c1, c2], "concat", axis=1)                                  # [1,8,8,8]
    x = g.op("Relu", [x], "relu_mid")

    x = g.op("Slice", [x, g.ints("slice_c.starts", [1]), g.ints("slice_c.ends", [7]),
                       g.ints("slice_c.axes", [1])], "slice_channels")             # [1,6,8,8]
    x = g.op("Slice", [x, g.ints("slice_hw.starts", [1, 0]), g.ints("slice_hw.ends", [7, 8]),
                       g.ints("slice_hw.axes", [2, 3]), g.ints("slice_hw.steps", [1, 1])],
             "slice_spatial")                                                       # [1,6,6,8]
    x = g.op("Slice", [x, g.ints("slice_w.starts", [0]), g.ints("slice_w.ends", [8]),
                       g.ints("slice_w.axes", [-1]), g.ints("slice_w.steps", [2])],
             "slice_spatial_step")                                                  # [1,6,6,4]
    x = g.op("Pad", [x, g.ints("pad.pads", [0, 0, 0, 1, 0, 0, 0, 1])], "pad")      # [1,6,6,6]
    x = g.op("LRN", [x], "lrn", size=3, alpha=1e-4, beta=0.75, bias=1.0)

    lp = g.op("LpPool", [x], "lppool", kernel_shape=[2, 2], strides=[2, 2], p=2)   # [1,6,3,3]
    gm = g.op("GlobalMaxPool", [x], "global_max_pool")                             # [1,6,1,1]
    rs = g.op("ReduceSum", [x, g.ints("reduce_sum.axes", [2, 3])], "reduce_sum", keepdims=1)
    rmax = g.op("ReduceMax", [x, g.ints("reduce_max.axes", [2, 3])], "reduce_max", keepdims=0)
    rmin = g.op("ReduceMin", [lp, g.ints("reduce_min.axes", [1])], "reduce_min", keepdims=1)
    rl2 = g.op("ReduceL2", [lp, g.ints("reduce_l2.axes", [3])], "reduce_l2", keepdims=0)  # [1,6,3]

    # logits head: [1,6]
    v = g.op("Add", [rs, gm], "add_pools")                                         # [1,6,1,1]
    v = g.op("Squeeze", [v, g.ints("head.sq_axes", [2, 3])], "head_squeeze")       # [1,6]
    v = g.op("Add", [v, rmax], "add_max")
    g.op("LogSoftmax", [v], "log_softmax", outputs="logp", axis=1)
    # feature head: [1,6,3,3]
    f = g.op("Sub", [lp, rmin], "sub_min")                                         # [1,6,3,3]
    l2 = g.op("Unsqueeze", [rl2, g.ints("feat.unsq_axes", [3])], "feat_unsqueeze")  # [1,6,3,1]
    g.op("Mul", [f, l2], "feat_mul", outputs="feat")
    return g.model(
        "ops_zoo_structural",
        [_vi("x", [1, 4, 8, 8])],
        [_vi("logp", [1, 6]), _vi("feat", [1, 6, 3, 3])],
        opset=18, ir_version=8,
        doc="Structural ops: ConvTranspose, DepthToSpace/SpaceToDepth, Split/Slice, "
            "Conv1d/Conv3d, pooling, reductions, LRN, LogSoftmax.",
    )


def upsample_opset9() -> onnx.ModelProto:
    """Op coverage: the deprecated ``Upsample`` op (opset 9, scales as an input).

    Imitates PyTorch 1.x ``nn.Upsample(scale_factor=2)`` / Keras ``UpSampling2D``
    exported at opset 9, before Resize existed: Conv -> Relu -> Upsample(nearest,
    scales [1, 1, 2, 2] input) -> Conv.

    x [1, 4, 4, 4] -> y [1, 4, 8, 8]
    """
    g = _G(seed=90)
    x = g.op("Relu", [g.conv("x", 4, 6, 3, "conv1")], "relu1")
    x = g.op("Upsample", [x, g.floats("upsample.scales", [1.0, 1.0, 2.0, 2.0])], "upsample",
             mode="nearest")
    g.op("Conv", [x, g.weight("conv2.weight", [4, 6, 3, 3]), g.randn("conv2.bias", [4], 0.05)],
         "conv2", outputs="y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.model(
        "upsample_opset9",
        [_vi("x", [1, 4, 4, 4])],
        [_vi("y", [1, 4, 8, 8])],
        opset=9, ir_version=4,
        doc="Deprecated Upsample (opset 9) between two Convs.",
    )


def gemm_variants() -> onnx.ModelProto:
    """Op coverage: Gemm with every transA/transB combination, alpha/beta != 1.

    Imitates the Gemm forms exporters emit: PyTorch ``nn.Linear`` (transB=1, C [N]),
    Keras Dense (transB=0), Caffe2/CNTK-style C of shape [1, N], and transA=1 forms
    whose activation comes through a Transpose. On x [3, 16]:
    Gemm(tA=0,tB=0, alpha=0.5, beta=2, C [32]) -> Relu ->
    Gemm(tA=0,tB=1, C [1, 32]) -> Transpose -> Gemm(tA=1,tB=0, alpha=1.5, C [32])
    -> Relu -> Transpose -> Gemm(tA=1,tB=1, beta=0.5, C [1, 16]) ->
    Gemm(no C) -> y [3, 10].

    x [3, 16] -> y [3, 10]
    """
    g = _G(seed=7)
    h = g.op("Gemm", ["x", g.weight("g00.B", [16, 32], fan_in=16), g.randn("g00.C", [32], 0.05)],
             "gemm_tA0_tB0", alpha=0.5, beta=2.0)                                   # [3,32]
    h = g.op("Relu", [h], "relu0")
    h = g.op("Gemm", [h, g.weight("g01.B", [32, 32]), g.randn("g01.C", [1, 32], 0.05)],
             "gemm_tA0_tB1", transB=1)                                               # [3,32]
    h = g.op("Transpose", [h], "transpose1", perm=[1, 0])                           # [32,3]
    h = g.op("Gemm", [h, g.weight("g10.B", [32, 32], fan_in=32), g.randn("g10.C", [32], 0.05)],
             "gemm_tA1_tB0", transA=1, alpha=1.5)                                   # [3,32]
    h = g.op("Relu", [h], "relu1")
    h = g.op("Transpose", [h], "transpose2", perm=[1, 0])                           # [32,3]
    h = g.op("Gemm", [h, g.weight("g11.B", [16, 32]), g.randn("g11.C", [1, 16], 0.05)],
             "gemm_tA1_tB1", transA=1, transB=1, beta=0.5)                          # [3,16]
    g.op("Gemm", [h, g.weight("gout.B", [16, 10], fan_in=16)], "gemm_no_c", outputs="y")
    return g.model(
        "gemm_variants",
        [_vi("x", [3, 16])],
        [_vi("y", [3, 10])],
        opset=13, ir_version=7,
        doc="Gemm with all transA/transB combinations, alpha/beta != 1, C as [N], [1, N], none.",
    )


BUILDERS = {
    "caffe2_opset9_cnn": caffe2_opset9_cnn,
    "paddle_constant_weights_cnn": paddle_constant_weights_cnn,
    "tf_nhwc_cnn": tf_nhwc_cnn,
    "torch_style_flatten_reshape": torch_style_flatten_reshape,
    "ops_zoo_elementwise": ops_zoo_elementwise,
    "ops_zoo_structural": ops_zoo_structural,
    "upsample_opset9": upsample_opset9,
    "gemm_variants": gemm_variants,
}
"""name -> builder, for ``pytest.mark.parametrize``."""


def make_feeds(model: onnx.ModelProto, seed: int = 0, dims: dict | None = None) -> dict:
    """Random float32 inputs for a model's real inputs (initializer-inputs skipped).

    Symbolic dims are taken from ``dims`` (name -> size), else 2.
    """
    rng = np.random.default_rng(seed)
    dims = dims or {}
    init_names = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        shape = []
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                shape.append(int(dims.get(d.dim_param, 2)))
        feeds[vi.name] = rng.standard_normal(shape).astype(F32)
    return feeds
