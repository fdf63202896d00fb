"""One roundtrip per op rule (and per opset form), plus pinning tests where a rule pins.

Most cases are a *sandwich*: x [1,3,4,4] -> Conv(conv1: 3->8) -> OP -> Conv(conv2: ->4) -> y,
so the op under test sits between two secret layers. Each case checks exactness and the
honest properties (``helpers.roundtrip``) and then what the analysis says about the axes
(``comp.spec()`` / ``comp.pins()``): e.g. that the channel class of conv1 reaches conv2
through the op, or that an op which is not equivariant on channels pins them and is named.
"""
from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import eeonnx
from eeonnx.errors import ClearBoundaryError
from eeonnx.compiler.rules import REGISTRY
from helpers import (BOOL, INT64, G, classes_of, compile_plain, is_secret, pinned_nodes, roundtrip,
                     sandwich)

C1 = "conv1.w"
C2 = "conv2.w"


# --------------------------------------------------------------------------
# expectations
# --------------------------------------------------------------------------
def same_channels(comp):
    """conv1's output-channel class reaches conv2's input channels unchanged."""
    s = comp.spec()
    assert is_secret(s[C1][0]), s
    assert s[C1][0] == s[C2][1], s
    assert s["conv1.b"][0] == s[C1][0], s
    assert not comp.pins(), comp.pins()


def channels_secret(comp):
    """Both sides of the op keep secret channels (the structure may change)."""
    s = comp.spec()
    assert is_secret(s[C1][0]) and is_secret(s[C2][1]), s
    assert classes_of(s[C1][0]) & classes_of(s[C2][1]), s
    assert not comp.pins(), comp.pins()


def per_channel(*names):
    """Like same_channels, and each named initializer's axis 0 is that class too."""
    def check(comp):
        same_channels(comp)
        s = comp.spec()
        for n in names:
            assert s[n][0] == s[C1][0], (n, s)
    return check


def pins_channels(node):
    """The op is not equivariant on channels: conv1's output axis is public, and the
    report names ``node``."""
    def check(comp):
        s = comp.spec()
        assert s[C1][0] == "P" and s["conv1.b"][0] == "P", s
        assert node in pinned_nodes(comp), comp.pins()
        # the layers on the far sides stay secret
        assert is_secret(s[C1][1]) and is_secret(s[C2][0]), s
    return check


def same_layout(*refs, secret=True):
    """All the given (initializer, axis) layouts are equal (and secret)."""
    def check(comp):
        s = comp.spec()
        got = [s[n][a] for n, a in refs]
        assert len(set(got)) == 1, (refs, got, s)
        if secret:
            assert is_secret(got[0]), (refs, got)
    return check


def spec_is(name, axis, expected):
    def check(comp):
        assert comp.spec()[name][axis] == expected, comp.spec()
    return check


def all_of(*checks):
    def check(comp):
        for c in checks:
            c(comp)
    return check


# --------------------------------------------------------------------------
# case table: id -> (builder, check, roundtrip kwargs)
# --------------------------------------------------------------------------
CASES: dict[str, tuple] = {}
_ATOM = re.compile(r"c\d+\[\d+\]")


def case(cid, check=same_channels, **kw):
    def deco(fn):
        assert cid not in CASES, cid
        CASES[cid] = (fn, check, kw)
        return fn
    return deco


def add_sandwich(cid, body, check=same_channels, *, opset=13, hw=(4, 4), k2=1, **kw):
    CASES[cid] = (lambda: sandwich(body, opset=opset, hw=hw, k2=k2), check, kw)


def positive(g, a):
    """|a| + 1 (for Log, Sqrt, Pow bases, ...)."""
    return g.node("Add", [g.node("Abs", [a]), g.floats(f"one{len(g.nodes)}", 1.0)])


# -- unary ops -------------------------------------------------------------
UNARY = [
    # op, attrs, opset, needs positive input
    ("Relu", {}, 13, False), ("LeakyRelu", {"alpha": 0.1}, 13, False), ("Elu", {}, 13, False),
    ("Selu", {}, 13, False), ("Celu", {"alpha": 1.5}, 13, False), ("Sigmoid", {}, 13, False),
    ("Tanh", {}, 13, False), ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, 13, False),
    ("HardSwish", {}, 14, False), ("Softplus", {}, 13, False), ("Softsign", {}, 13, False),
    ("Mish", {}, 18, False), ("Gelu", {}, 20, False), ("Gelu", {"approximate": "tanh"}, 20, False),
    ("Erf", {}, 13, False), ("Exp", {}, 13, False), ("Log", {}, 13, True), ("Sqrt", {}, 13, True),
    ("Abs", {}, 13, False), ("Neg", {}, 13, False), ("Reciprocal", {}, 13, True),
    ("Identity", {}, 13, False), ("Floor", {}, 13, False), ("Ceil", {}, 13, False),
    ("Round", {}, 13, False), ("Sign", {}, 13, False), ("Sin", {}, 13, False), ("Cos", {}, 13, False),
    ("ThresholdedRelu", {"alpha": 0.3}, 13, False), ("Shrink", {"lambd": 0.5, "bias": 0.1}, 13, False),
    ("Dropout", {}, 13, False), ("Dropout", {"ratio": 0.3}, 7, False),
    ("Softmax", {"axis": 1}, 13, False), ("Softmax", {"axis": -1}, 13, False),
    ("Softmax", {"axis": 1}, 11, False), ("Softmax", {"axis": 3}, 11, False),
    ("LogSoftmax", {"axis": 1}, 13, False), ("LogSoftmax", {"axis": 1}, 11, False),
    ("LogSoftmax", {"axis": 2}, 11, False),
]


def _unary_body(op, attrs, pos):
    def body(g, a):
        return g.node(op, [positive(g, a) if pos else a], **attrs), 8
    return body


for _op, _attrs, _opset, _pos in UNARY:
    _id = f"{_op}-{_opset}" + "".join(f"-{k}={v}" for k, v in _attrs.items())
    add_sandwich(_id, _unary_body(_op, _attrs, _pos), opset=_opset)


def _dropout_ratio_input(g, a):
    return g.node("Dropout", [a, g.floats("ratio", 0.25)]), 8


add_sandwich("Dropout-13-ratio-input", _dropout_ratio_input)


add_sandwich("Cast-double-roundtrip", lambda g, a: (
    g.node("Cast", [g.node("Cast", [a], to=TensorProto.DOUBLE)], to=TensorProto.FLOAT), 8))
add_sandwich("Cast-int32", lambda g, a: (
    g.node("Cast", [g.node("Cast", [g.node("Mul", [a, g.floats("ten", 10.0)])], to=TensorProto.INT32)],
           to=TensorProto.FLOAT), 8))
add_sandwich("CastLike-15", lambda g, a: (
    g.node("Cast", [g.node("CastLike", [a, g.const("like", np.array(0.0, np.float64))])],
           to=TensorProto.FLOAT), 8), opset=15)
add_sandwich("Not-IsNaN-IsInf", lambda g, a: (
    g.node("Add", [
        g.node("Cast", [g.node("Not", [g.node("Greater", [a, g.floats("zero", 0.0)])])], to=TensorProto.FLOAT),
        g.node("Cast", [g.node("Or", [g.node("IsNaN", [a]), g.node("IsInf", [a])])], to=TensorProto.FLOAT),
    ]), 8))
add_sandwich("Clip-6-attrs", lambda g, a: (g.node("Clip", [a], min=-0.5, max=0.5), 8), opset=6)
add_sandwich("Clip-11-inputs", lambda g, a: (
    g.node("Clip", [a, g.floats("lo", -0.5), g.floats("hi", 0.5)]), 8), opset=11)
add_sandwich("Clip-13-max-only", lambda g, a: (g.node("Clip", [a, "", g.floats("hi", 0.5)]), 8))


# -- broadcasting elementwise ----------------------------------------------
def _const_shapes(g, shape, name):
    if shape == "positive":
        return g.w(name, [8, 1, 1], 0.2, 1.5)
    return g.w(name, shape, 0.5) if shape != [] else g.floats(name, 0.7)


BROADCAST_SHAPES = {"c11": [8, 1, 1], "1c11": [1, 8, 1, 1], "w": [4], "scalar": [], "full": [1, 8, 4, 4]}

for _op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu"):
    for _sid, _shape in BROADCAST_SHAPES.items():
        if _op == "PRelu" and _sid == "full":
            continue

        def _bin_body(g, a, op=_op, shape=_shape):
            lhs = positive(g, a) if op == "Pow" else a
            k = g.w("k", shape, 0.3, 1.0) if op in ("Div", "Pow") and shape else _const_shapes(g, shape, "k")
            return g.node(op, [lhs, k]), 8

        if _shape in ([8, 1, 1], [1, 8, 1, 1]):
            _check = all_of(same_channels, lambda comp: _k_on_channels(comp))
        elif _shape == [4]:
            _check = all_of(same_channels, spec_is("k", 0, "P"))
        else:
            _check = same_channels
        add_sandwich(f"{_op}-{_sid}", _bin_body, _check)


def _k_on_channels(comp):
    s = comp.spec()
    k = s["k"]
    assert k[-3] == s[C1][0] and k[-2:] == ["P", "P"], s


def _two_activations(op):
    def body(g, a):
        return g.node(op, [a, g.node("Relu", [a]), g.node("Tanh", [a])] if op in ("Sum", "Max", "Min", "Mean")
                      else [a, g.node("Relu", [a])]), 8
    return body


for _op in ("Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean"):
    add_sandwich(f"{_op}-two-activations", _two_activations(_op))

add_sandwich("Mod-fmod", lambda g, a: (g.node("Mod", [a, g.w("k", [8, 1, 1], 0.1, 0.9)], fmod=1), 8),
             per_channel("k"))
add_sandwich("Where", lambda g, a: (
    g.node("Where", [g.node("Greater", [a, g.floats("zero", 0.0)]), a, g.w("k", [8, 1, 1])]), 8),
    per_channel("k"))
for _op, _opset in (("Equal", 13), ("Less", 13), ("LessOrEqual", 16), ("Greater", 13), ("GreaterOrEqual", 16)):
    add_sandwich(f"{_op}-{_opset}", lambda g, a, op=_op: (
        g.node("Cast", [g.node(op, [g.node("Round", [a]), g.const("k", np.array(
            [-1, 0, 1, 0, -1, 1, 0, 2], np.float32).reshape(8, 1, 1))])], to=TensorProto.FLOAT), 8),
        per_channel("k"), opset=_opset)
for _op in ("And", "Or", "Xor"):
    add_sandwich(f"{_op}", lambda g, a, op=_op: (
        g.node("Cast", [g.node(op, [g.node("Greater", [a, g.floats("zero", 0.0)]),
                                    g.node("Less", [a, g.w("k", [8, 1, 1], 0.5)])])],
               to=TensorProto.FLOAT), 8), per_channel("k"))
add_sandwich("BitShift-11", lambda g, a: (
    g.node("Cast", [g.node("BitShift", [
        g.node("Cast", [g.node("Abs", [g.node("Mul", [a, g.floats("ten", 10.0)])])], to=TensorProto.UINT32),
        g.const("k", np.arange(8, dtype=np.uint32).reshape(8, 1, 1) % 3)], direction="LEFT")],
        to=TensorProto.FLOAT), 8), per_channel("k"), opset=11)
add_sandwich("Expand", lambda g, a: (
    g.node("Expand", [g.node("GlobalAveragePool", [a]), g.ints("shape", [1, 8, 4, 4])]), 8))
add_sandwich("Expand-const-per-channel", lambda g, a: (
    g.node("Add", [a, g.node("Expand", [g.w("k", [8, 1, 1]), g.ints("shape", [8, 4, 4])])]), 8))


@case("Add-second-input")
def _add_second_input():
    """A second float graph input added to the activation is encoded with conv1's class."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.input("z", [1, 8, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    g.conv(g.node("Add", [a, "z"]), 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


# -- linear ----------------------------------------------------------------
def _gemm_model(ta, tb, c_shape):
    g = G(seed=ta * 2 + tb)
    g.input("x", [16, 3] if ta else [3, 16])
    b = g.w("B", [8, 16] if tb else [16, 8])
    ins = ["x", b] + ([g.w("C", c_shape, 0.1)] if c_shape is not None else [])
    h = g.node("Gemm", ins, name="gemm", transA=ta, transB=tb, alpha=0.7, beta=1.3)
    h = g.node("Relu", [h])
    g.node("Gemm", [h, g.w("W2", [8, 5]), g.w("C2", [5], 0.1)], outputs="y")
    g.output("y")
    return g.build()


def _gemm_check(ta, tb, c_shape):
    def check(comp):
        s = comp.spec()
        n_axis, k_axis = (0, 1) if tb else (1, 0)
        assert is_secret(s["B"][n_axis]) and s["B"][n_axis] == s["W2"][0], s
        assert is_secret(s["B"][k_axis]), s  # the input features: encoded on x
        if c_shape is not None:
            assert s["C"][-1] == s["B"][n_axis], s
        assert not comp.pins()
    return check


for _ta in (0, 1):
    for _tb in (0, 1):
        for _c in ([8], [1, 8], None):
            CASES[f"Gemm-tA{_ta}-tB{_tb}-C{_c}"] = (
                lambda ta=_ta, tb=_tb, c=_c: _gemm_model(ta, tb, c), _gemm_check(_ta, _tb, _c), {})


@case("MatMul-2d-weight", lambda comp: _mm_chain_check(comp))
def _matmul_2d():
    g = G()
    g.input("x", [3, 16])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("W1", [16, 8])])])
    g.node("MatMul", [h, g.w("W2", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


def _mm_chain_check(comp):
    s = comp.spec()
    assert is_secret(s["W1"][-1]) and s["W1"][-1] == s["W2"][-2], s
    assert is_secret(s["W1"][-2]) and is_secret(s["W2"][-1]), s


@case("MatMul-batched-activation", _mm_chain_check)
def _matmul_batched():
    g = G()
    g.input("x", [2, 3, 16])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("W1", [16, 8])])])
    g.node("MatMul", [h, g.w("W2", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


@case("MatMul-batched-weight", _mm_chain_check)
def _matmul_batched_weight():
    g = G()
    g.input("x", [2, 3, 16])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("W1", [2, 16, 8])])])
    g.node("MatMul", [h, g.w("W2", [1, 8, 5])], outputs="y")
    g.output("y")
    return g.build()


@case("MatMul-1d", lambda comp: _mm_1d_check(comp))
def _matmul_1d():
    """x [16] (1-D left operand), then W [8, 16] @ h (1-D right operand)."""
    g = G()
    g.input("x", [16])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("W1", [16, 8])])])       # [8]
    h = g.node("Relu", [g.node("MatMul", [g.w("W2", [6, 8]), h])])          # [6]
    g.node("MatMul", [h, g.w("W3", [6, 5])], outputs="y")                   # [5]
    g.output("y")
    return g.build()


def _mm_1d_check(comp):
    s = comp.spec()
    assert is_secret(s["W1"][1]) and s["W1"][1] == s["W2"][1], s
    assert is_secret(s["W2"][0]) and s["W2"][0] == s["W3"][0], s


@case("MatMul-attention", lambda comp: _attention_check(comp))
def _attention():
    """softmax(x Wq (x Wk)^T) x Wv Wo: two activations multiplied."""
    g = G()
    g.input("x", [1, 4, 8])
    q = g.node("MatMul", ["x", g.w("Wq", [8, 6])])
    k = g.node("MatMul", ["x", g.w("Wk", [8, 6])])
    v = g.node("MatMul", ["x", g.w("Wv", [8, 5])])
    sc = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 2, 1])])
    p = g.node("Softmax", [sc], axis=-1)
    g.node("MatMul", [g.node("MatMul", [p, v]), g.w("Wo", [5, 3])], outputs="y")
    g.output("y")
    return g.build()


def _attention_check(comp):
    s = comp.spec()
    assert is_secret(s["Wq"][1]) and s["Wq"][1] == s["Wk"][1], s
    assert s["Wq"][0] == s["Wk"][0] == s["Wv"][0] and is_secret(s["Wq"][0]), s
    assert is_secret(s["Wv"][1]) and s["Wv"][1] == s["Wo"][0], s


# -- convolutions ------------------------------------------------------------
def _conv_mid(name, cin, cout, k=3, nd=2, **attrs):
    def body(g, a):
        return g.conv(a, cin, cout, k, nd=nd, name=name, **attrs), cout
    return body


def _mid_check(group, depthwise=False):
    """conv1 -> mid (grouped) -> conv2: mid's output channels reach conv2; its input side
    is conv1's class (group 1) or shares conv1's group class (group > 1)."""
    def check(comp):
        s = comp.spec()
        assert is_secret(s[C1][0]) and is_secret(s["mid.w"][0]), s
        assert s["mid.w"][0] == s[C2][1] == s["mid.b"][0], s
        if group == 1:
            assert s["mid.w"][1] == s[C1][0], s
        else:  # Kron(group order, within group): the group order is one class on both sides
            assert classes_of(s[C1][0]) & classes_of(s["mid.w"][0]), s
        if depthwise:
            assert s["mid.w"][0] == s[C1][0], s
        assert not comp.pins(), comp.pins()
    return check


add_sandwich("Conv-2d-k3", _conv_mid("mid", 8, 6), _mid_check(1))
add_sandwich("Conv-group2", _conv_mid("mid", 8, 6, group=2), _mid_check(2))
add_sandwich("Conv-depthwise", _conv_mid("mid", 8, 8, group=8), _mid_check(8, depthwise=True))
add_sandwich("Conv-depthwise-mult2", _conv_mid("mid", 8, 16, group=8), _mid_check(8))
add_sandwich("Conv-dilation2", _conv_mid("mid", 8, 6, dilations=[2, 2], pads=[2, 2, 2, 2]), _mid_check(1),
             hw=(6, 6))
add_sandwich("Conv-stride2-nobias", lambda g, a: (
    g.conv(a, 8, 6, 3, name="mid", bias=False, strides=[2, 2]), 6),
    lambda comp: (_nobias_check(comp)), hw=(6, 6))
add_sandwich("Conv-1d", _conv_mid("mid", 8, 6, nd=1, group=2), _mid_check(2), hw=(7,), k2=3)
add_sandwich("Conv-3d", _conv_mid("mid", 8, 6, nd=3, dilations=[1, 2, 1], pads=[1, 2, 1, 1, 2, 1]),
             _mid_check(1), hw=(3, 5, 3))


def _nobias_check(comp):
    s = comp.spec()
    assert is_secret(s["mid.w"][0]) and s["mid.w"][0] == s[C2][1] and s["mid.w"][1] == s[C1][0], s


def _deconv(group, stride=2):
    def body(g, a):
        w = g.w("mid.w", [8, 6 // group, 2, 2])
        return g.node("ConvTranspose", [a, w, g.w("mid.b", [6], 0.1)], name="mid",
                      kernel_shape=[2, 2], strides=[stride, stride], group=group), 6
    return body


def _deconv_check(comp):
    s = comp.spec()
    assert is_secret(s["mid.w"][0]) and s["mid.w"][0] == s[C1][0], s
    assert s["mid.b"][0] == s[C2][1] and is_secret(s[C2][1]), s
    assert not comp.pins()


add_sandwich("ConvTranspose", _deconv(1), _deconv_check)
def _deconv_group_check(comp):
    s = comp.spec()
    assert classes_of(s[C1][0]) & classes_of(s[C2][1]), s  # the shared group order


add_sandwich("ConvTranspose-group2", _deconv(2), all_of(_deconv_check, _deconv_group_check))
add_sandwich("ConvTranspose-stride1", _deconv(2, stride=1), _deconv_check)


# -- normalisation -------------------------------------------------------------
def _bn(opset, **attrs):
    def body(g, a):
        ps = [g.w("bn.scale", [8], 0.1, 1.0), g.w("bn.bias", [8], 0.1), g.w("bn.mean", [8], 0.1),
              g.w("bn.var", [8], 0.1, 1.0)]
        return g.node("BatchNormalization", [a] + ps, name="bn", epsilon=1e-3, **attrs), 8
    return body


BN_PARAMS = ("bn.scale", "bn.bias", "bn.mean", "bn.var")
add_sandwich("BatchNormalization-7", _bn(7), per_channel(*BN_PARAMS), opset=7)
add_sandwich("BatchNormalization-9", _bn(9, momentum=0.9), per_channel(*BN_PARAMS), opset=9)
add_sandwich("BatchNormalization-14", _bn(14, training_mode=0), per_channel(*BN_PARAMS), opset=14)
add_sandwich("BatchNormalization-15", _bn(15), per_channel(*BN_PARAMS), opset=15)


def _bn7_per_activation(g, a):
    ps = [g.w("bn.scale", [8, 4, 4], 0.1, 1.0), g.w("bn.bias", [8, 4, 4], 0.1),
          g.w("bn.mean", [8, 4, 4], 0.1), g.w("bn.var", [8, 4, 4], 0.1, 1.0)]
    return g.node("BatchNormalization", [a] + ps, name="bn", spatial=0), 8


add_sandwich("BatchNormalization-7-spatial0", _bn7_per_activation, per_channel(*BN_PARAMS), opset=7)
add_sandwich("InstanceNormalization", lambda g, a: (g.node(
    "InstanceNormalization", [a, g.w("in.scale", [8], 0.1, 1.0), g.w("in.bias", [8], 0.1)], epsilon=1e-5), 8),
    per_channel("in.scale", "in.bias"))
add_sandwich("LRN", lambda g, a: (g.node("LRN", [a], name="lrn", size=3, alpha=1e-3, beta=0.75, bias=1.0), 8),
             pins_channels("lrn"))


# -- pooling ---------------------------------------------------------------------
add_sandwich("MaxPool", lambda g, a: (g.node("MaxPool", [a], kernel_shape=[2, 2], strides=[2, 2]), 8))
add_sandwich("MaxPool-pads-dilations", lambda g, a: (g.node(
    "MaxPool", [a], kernel_shape=[2, 2], pads=[1, 1, 0, 0], dilations=[2, 2]), 8), opset=12)
add_sandwich("AveragePool", lambda g, a: (g.node(
    "AveragePool", [a], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), 8))
add_sandwich("LpPool", lambda g, a: (g.node("LpPool", [a], kernel_shape=[2, 2], strides=[2, 2], p=2), 8))
add_sandwich("GlobalAveragePool", lambda g, a: (g.node("GlobalAveragePool", [a]), 8))
add_sandwich("GlobalMaxPool", lambda g, a: (g.node("GlobalMaxPool", [a]), 8))
add_sandwich("GlobalLpPool", lambda g, a: (g.node("GlobalLpPool", [a], p=3), 8))
add_sandwich("MaxPool-1d", lambda g, a: (g.node("MaxPool", [a], kernel_shape=[2]), 8), hw=(5,))


def _maxpool_indices(g, a):
    y, idx = g.node("MaxPool", [a], name="maxpool_idx", n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    return g.node("Add", [y, g.node("Mul", [g.node("Cast", [idx], to=TensorProto.FLOAT),
                                              g.floats("small", 1e-3)])]), 8


add_sandwich("MaxPool-indices", _maxpool_indices, pins_channels("maxpool_idx"))


# -- padding and resampling -------------------------------------------------------
add_sandwich("Pad-2-attrs", lambda g, a: (g.node(
    "Pad", [a], pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="constant", value=0.5), 8), opset=2)
add_sandwich("Pad-11-inputs", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1]), g.floats("pv", 0.25)]), 8), opset=11)
add_sandwich("Pad-13-reflect", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], mode="reflect"), 8))
add_sandwich("Pad-13-edge-crop", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [0, 0, -1, 1, 0, 0, 1, -1])], mode="edge"), 8))
add_sandwich("Pad-18-axes", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [1, 1, 2, 0]), "", g.ints("axes", [2, -1])]), 8), opset=18)
add_sandwich("Pad-13-channels", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [0, 1, 0, 0, 0, 1, 0, 0])], name="pad_c"), 10), pins_channels("pad_c"))
add_sandwich("Pad-18-axes-channels", lambda g, a: (g.node(
    "Pad", [a, g.ints("pads", [1, 0]), "", g.ints("axes", [1])], name="pad_c"), 9), pins_channels("pad_c"),
    opset=18)


def _resize(opset, how, **attrs):
    def body(g, a):
        if how == "scales10":
            ins = [a, g.floats("scales", [1, 1, 2, 2])]
        elif how == "scales":
            ins = [a, g.floats("roi", np.zeros([0], np.float32)), g.floats("scales", [1, 1, 2, 2])]
        elif how == "scales-noroi":
            ins = [a, "", g.floats("scales", [1, 1, 2, 2])]
        elif how == "sizes":
            ins = [a, "", "", g.ints("sizes", [1, 8, 7, 6])]
        elif how == "axes":
            ins = [a, "", g.floats("scales", [2, 1.5])]
        elif how == "channels":
            ins = [a, "", g.floats("scales", [1, 2, 1, 1])]
        return g.node("Resize", ins, name="resize", **attrs), 16 if how == "channels" else 8
    return body


add_sandwich("Resize-10", _resize(10, "scales10", mode="nearest"), opset=10)
add_sandwich("Resize-11-nearest", _resize(11, "scales", mode="nearest"), opset=11)
add_sandwich("Resize-11-linear", _resize(11, "scales", mode="linear", coordinate_transformation_mode="half_pixel"),
             opset=11)
add_sandwich("Resize-13-cubic", _resize(13, "scales-noroi", mode="cubic"))
add_sandwich("Resize-13-sizes", _resize(13, "sizes", mode="linear"))
add_sandwich("Resize-18-axes", _resize(18, "axes", mode="linear", axes=[2, 3]), opset=18)
add_sandwich("Resize-18-antialias", _resize(18, "scales-noroi", mode="linear", antialias=1), opset=18)
add_sandwich("Resize-13-channels", _resize(13, "channels", mode="nearest"), pins_channels("resize"))
add_sandwich("Upsample-9", lambda g, a: (g.node(
    "Upsample", [a, g.floats("scales", [1, 1, 2, 2])], mode="nearest"), 8), opset=9)
add_sandwich("Upsample-7-attr", lambda g, a: (g.node(
    "Upsample", [a], scales=[1.0, 1.0, 2.0, 2.0], mode="linear"), 8), opset=7)
add_sandwich("Upsample-9-channels", lambda g, a: (g.node(
    "Upsample", [a, g.floats("scales", [1, 2, 1, 1])], name="up_c", mode="nearest"), 16), pins_channels("up_c"),
    opset=9)


# -- depth/space ------------------------------------------------------------------
def _kron_check(c1_form, c2_form):
    """conv1.w axis 0 and conv2.w axis 1 have the given forms, with '{c}' the shared class
    (written as in the spec: name[size])."""
    def check(comp):
        s = comp.spec()
        (cls,) = _ATOM.findall(s[C2][1] if c2_form == "{c}" else s[C1][0])
        assert s[C1][0] == c1_form.format(c=cls), s
        assert s[C2][1] == c2_form.format(c=cls), s
        assert not comp.pins()
    return check


add_sandwich("DepthToSpace-DCR", lambda g, a: (g.node("DepthToSpace", [a], blocksize=2, mode="DCR"), 2),
             _kron_check("kron(P, {c})", "{c}"))
add_sandwich("DepthToSpace-CRD", lambda g, a: (g.node("DepthToSpace", [a], blocksize=2, mode="CRD"), 2),
             _kron_check("kron({c}, P)", "{c}"))
add_sandwich("DepthToSpace-11-default", lambda g, a: (g.node("DepthToSpace", [a], blocksize=2), 2),
             _kron_check("kron(P, {c})", "{c}"), opset=11)
add_sandwich("SpaceToDepth", lambda g, a: (g.node("SpaceToDepth", [a], blocksize=2), 32),
             _kron_check("{c}", "kron(P, {c})"))


# -- shape ops ----------------------------------------------------------------------
def _flatten_model(axis):
    """x [1,3,4,4] -> conv1 (3->8) -> Flatten(axis) -> MatMul W -> y."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    f = g.node("Flatten", [a], name="flatten", axis=axis)
    dims = [1, 8, 4, 4]
    cols = int(np.prod(dims[axis if axis >= 0 else axis + 4:]))
    g.node("MatMul", [f, g.w("W", [cols, 5])], outputs="y")
    g.output("y")
    return g.build()


def _flatten_check(into_w):
    def check(comp):
        s = comp.spec()
        assert is_secret(s[C1][0]), s
        if into_w:  # the channel class is a factor of W's rows
            assert classes_of(s[C1][0]) <= classes_of(s["W"][0]), s
        assert not comp.pins(), comp.pins()
    return check


CASES["Flatten-axis1"] = (lambda: _flatten_model(1), _flatten_check(True), {})
CASES["Flatten-axis2"] = (lambda: _flatten_model(2), _flatten_check(False), {})
CASES["Flatten-axis0"] = (lambda: _flatten_model(0), _flatten_check(True), {})


def _tf_flatten_model(axis):
    """NHWC [1,4,4,3] @ W1 [3,8] -> Flatten(axis) -> @ W2 [8,5]: the channel axis is last."""
    g = G()
    g.input("x", [1, 4, 4, 3])
    a = g.node("MatMul", ["x", g.w("W1", [3, 8])])
    f = g.node("Flatten", [a], name="flatten", axis=axis)
    g.node("MatMul", [f, g.w("W2", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


def _tf_flatten_check(comp):
    s = comp.spec()
    assert is_secret(s["W1"][1]) and s["W1"][1] == s["W2"][0], s
    assert not comp.pins(), comp.pins()


CASES["Flatten-axis3-nhwc"] = (lambda: _tf_flatten_model(3), _tf_flatten_check, {})


@case("Flatten-symbolic-batch", lambda comp: _flatten_sym_check(comp), dims=None)
def _flatten_symbolic():
    """[N,8,4,4] -> Flatten(axis=2) -> [N*8, 16]: the channel merges with a symbolic dim."""
    g = G()
    g.input("x", ["N", 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    f = g.node("Flatten", [a], name="flatten", axis=2)
    g.node("MatMul", [f, g.w("W", [16, 5])], outputs="y")
    g.output("y")
    return g.build()


def _flatten_sym_check(comp):
    s = comp.spec()
    assert s[C1][0] == "P", s
    assert "flatten" in pinned_nodes(comp), comp.pins()
    assert is_secret(s["W"][1]) and is_secret(s[C1][1]), s


def _reshape_spatial(g, a):
    r = g.node("Reshape", [a, g.ints("s1", [1, 8, 16])])
    r = g.node("Relu", [r])
    return g.node("Reshape", [r, g.ints("s2", [1, 8, 4, 4])]), 8


add_sandwich("Reshape-merge-spatial", _reshape_spatial)
add_sandwich("Reshape-zero-minus-one", lambda g, a: (g.node(
    "Reshape", [g.node("Reshape", [a, g.ints("s1", [0, 0, -1])]), g.ints("s2", [0, 8, 4, -1])]), 8))
add_sandwich("Reshape-14-allowzero0", lambda g, a: (g.node(
    "Reshape", [g.node("Reshape", [a, g.ints("s1", [0, 0, -1])]), g.ints("s2", [1, 8, 4, 4])], allowzero=0), 8),
    opset=14)


def _channel_shuffle(g, a):
    r = g.node("Reshape", [a, g.ints("s1", [1, 2, 4, 4, 4])])
    t = g.node("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return g.node("Reshape", [t, g.ints("s2", [1, 8, 4, 4])]), 8


def _shuffle_check(comp):
    s = comp.spec()
    # conv1's channels are Kron(a[2], b[4]); after the shuffle conv2 sees Kron(b, a)
    m = re.fullmatch(r"kron\((c\d+)\[2\], (c\d+)\[4\]\)", s[C1][0])
    assert m, s
    assert s[C2][1] == f"kron({m.group(2)}[4], {m.group(1)}[2])", s
    assert not comp.pins()


add_sandwich("Reshape-channel-shuffle", _channel_shuffle, _shuffle_check)


@case("Reshape-head-split", lambda comp: _head_split_check(comp))
def _head_split():
    """[1,16] @ W1 [16,64] -> [1,4,16] (heads) -> per-head W2 [4,16,8] -> [1,32] @ W3."""
    g = G()
    g.input("x", [1, 16])
    h = g.node("MatMul", ["x", g.w("W1", [16, 64])])
    h = g.node("Reshape", [h, g.ints("s1", [1, 4, 16])])
    h = g.node("Transpose", [h], perm=[1, 0, 2])                                # [4,1,16]
    h = g.node("Relu", [g.node("MatMul", [h, g.w("W2", [4, 16, 8])])])           # [4,1,8]
    h = g.node("Transpose", [h], perm=[1, 0, 2])                                # [1,4,8]
    h = g.node("Reshape", [h, g.ints("s2", [1, 32])])
    g.node("MatMul", [h, g.w("W3", [32, 5])], outputs="y")
    g.output("y")
    return g.build()


def _head_split_check(comp):
    s = comp.spec()
    heads, dim = s["W2"][0], s["W2"][1]
    assert is_secret(heads) and is_secret(dim), s
    assert s["W1"][1] == f"kron({heads}, {dim})", s
    assert s["W3"][0] == f"kron({heads}, {s['W2'][2]})", s
    assert not comp.pins()


@case("Reshape-4x6-as-6x4", lambda comp: _regroup_check(comp))
def _regroup():
    """[1,24] -> [1,4,6] -> [1,6,4] -> [1,24]: 4x6 and 6x4 do not refine each other."""
    g = G()
    g.input("x", [1, 16])
    h = g.node("MatMul", ["x", g.w("W1", [16, 24])])
    h = g.node("Reshape", [h, g.ints("s1", [1, 4, 6])], name="to4x6")
    h = g.node("Reshape", [h, g.ints("s2", [1, 6, 4])], name="to6x4")
    h = g.node("Reshape", [h, g.ints("s3", [1, 24])], name="back")
    g.node("MatMul", [h, g.w("W2", [24, 5])], outputs="y")
    g.output("y")
    return g.build()


def _regroup_check(comp):
    s = comp.spec()
    assert s["W1"][1] == "P" and s["W2"][0] == "P", s
    assert "to6x4" in pinned_nodes(comp), comp.pins()


@case("Transpose-nchw-to-nhwc", lambda comp: _nhwc_check(comp))
def _transpose():
    g = G()
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    t = g.node("Transpose", [a], perm=[0, 2, 3, 1])
    g.node("MatMul", [t, g.w("W", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


def _nhwc_check(comp):
    s = comp.spec()
    assert is_secret(s[C1][0]) and s[C1][0] == s["W"][0], s
    assert not comp.pins()


add_sandwich("Transpose-roundtrip", lambda g, a: (g.node(
    "Transpose", [g.node("Transpose", [a], perm=[2, 3, 0, 1])], perm=[2, 3, 0, 1]), 8))
add_sandwich("Transpose-default-perm", lambda g, a: (g.node(
    "Transpose", [g.node("Relu", [g.node("Transpose", [a])])]), 8))
add_sandwich("Squeeze-Unsqueeze-11-attrs", lambda g, a: (g.node(
    "Squeeze", [g.node("Relu", [g.node("Unsqueeze", [a], axes=[2])])], axes=[2]), 8), opset=11)
add_sandwich("Squeeze-Unsqueeze-13-inputs", lambda g, a: (g.node(
    "Squeeze", [g.node("Relu", [g.node("Unsqueeze", [a, g.ints("ax1", [0, -1])])]), g.ints("ax2", [0, -1])]), 8))
add_sandwich("Squeeze-13-no-axes", lambda g, a: (g.node(
    "Unsqueeze", [g.node("Squeeze", [g.node("GlobalAveragePool", [a])]), g.ints("ax", [0, 2, 3])]), 8))


def _concat_channels(g, a):
    b = g.conv("x", 3, 5, name="convb")
    return g.node("Concat", [a, b], axis=1), 13


def _concat_check(comp):
    s = comp.spec()
    assert is_secret(s[C1][0]) and is_secret(s["convb.w"][0]), s
    assert s[C2][1] == f"cat({s[C1][0]}, {s['convb.w'][0]})", s
    assert not comp.pins()


add_sandwich("Concat-channels", _concat_channels, _concat_check)
add_sandwich("Concat-spatial", lambda g, a: (g.node(
    "Concat", [a, g.conv("x", 3, 8, name="convb")], axis=-1), 8),
    all_of(same_channels, same_layout((C1, 0), ("convb.w", 0))))
add_sandwich("Concat-self-reversed", lambda g, a: (g.node("Concat", [a, g.node("Neg", [a])], axis=1), 16),
             lambda comp: _self_concat_check(comp))


def _self_concat_check(comp):
    s = comp.spec()
    assert s[C2][1] == f"cat({s[C1][0]}, {s[C1][0]})" and is_secret(s[C1][0]), s


def _split_swap(opset, form):
    def body(g, a):
        if form == "attr":
            h1, h2 = g.node("Split", [a], n_out=2, axis=1, split=[3, 5])
        elif form == "input":
            h1, h2 = g.node("Split", [a, g.ints("split", [3, 5])], n_out=2, axis=1)
        elif form == "num_outputs":
            h1, h2 = g.node("Split", [a], n_out=2, axis=-3, num_outputs=2)
        elif form == "equal":
            h1, h2 = g.node("Split", [a], n_out=2, axis=1)
        return g.node("Concat", [h2, g.node("Relu", [h1])], axis=1), 8
    return body


def _split_check(comp):
    """conv1 = cat(A, B), conv2 sees cat(B, A)."""
    s = comp.spec()
    m = re.fullmatch(r"cat\((c\d+\[\d+\]), (c\d+\[\d+\])\)", s[C1][0])
    assert m, s
    assert s[C2][1] == f"cat({m.group(2)}, {m.group(1)})", s
    assert not comp.pins()


add_sandwich("Split-11-attr", _split_swap(11, "attr"), _split_check, opset=11)
add_sandwich("Split-11-equal", _split_swap(11, "equal"), _split_check, opset=11)
add_sandwich("Split-13-input", _split_swap(13, "input"), _split_check)
add_sandwich("Split-18-num-outputs", _split_swap(18, "num_outputs"), _split_check, opset=18)


def _split3(g, a):
    parts = g.node("Split", [a], n_out=3, axis=1, num_outputs=3)                # 3, 3, 2
    return g.node("Concat", [parts[2], parts[0], parts[1]], axis=1), 8


add_sandwich("Split-18-uneven", _split3, channels_secret, opset=18)
add_sandwich("Split-spatial", lambda g, a: (g.node("Concat", list(reversed(
    g.node("Split", [a, g.ints("split", [1, 3])], n_out=2, axis=2))), axis=2), 8))


def _slice(opset, form, name="slice"):
    def body(g, a):
        if form == "attrs-channels":
            return g.node("Slice", [a], name=name, starts=[1], ends=[7], axes=[1]), 6
        if form == "attrs-noaxes":
            return g.node("Slice", [a], name=name, starts=[0, 2], ends=[1, 8]), 6
        if form == "inputs-channels":
            return g.node("Slice", [a, g.ints("st", [2]), g.ints("en", [100]), g.ints("ax", [-3])], name=name), 6
        if form == "inputs-spatial-steps":
            return g.node("Slice", [a, g.ints("st", [0, 3]), g.ints("en", [4, -100]), g.ints("ax", [2, 3]),
                                    g.ints("sp", [2, -1])], name=name), 8
        if form == "inputs-channels-step2":
            return g.node("Slice", [a, g.ints("st", [0]), g.ints("en", [8]), g.ints("ax", [1]),
                                    g.ints("sp", [2])], name=name), 4
        if form == "inputs-channels-reversed":
            return g.node("Slice", [a, g.ints("st", [-1]), g.ints("en", [-100]), g.ints("ax", [1]),
                                    g.ints("sp", [-1])], name=name), 8
    return body


def _slice_channel_check(comp):
    s = comp.spec()
    assert is_secret(s[C2][1]) and classes_of(s[C2][1]) <= classes_of(s[C1][0]), s
    assert s[C1][0].startswith("cat("), s
    assert not comp.pins()


add_sandwich("Slice-9-attrs-channels", _slice(9, "attrs-channels"), _slice_channel_check, opset=9)
add_sandwich("Slice-9-attrs-noaxes", _slice(9, "attrs-noaxes"), _slice_channel_check, opset=9)
add_sandwich("Slice-13-inputs-channels", _slice(13, "inputs-channels"), _slice_channel_check)
add_sandwich("Slice-13-spatial-steps", _slice(13, "inputs-spatial-steps"))
add_sandwich("Slice-13-channels-step2", _slice(13, "inputs-channels-step2"), pins_channels("slice"))
add_sandwich("Slice-13-channels-reversed", _slice(13, "inputs-channels-reversed"), pins_channels("slice"))


@case("Slice-dynamic-start-spatial")
def _slice_dynamic_spatial():
    """A run-time start on a spatial axis: only that (positional) axis is affected."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.input("st", [1], INT64)
    a = g.conv("x", 3, 8, name="conv1")
    r = g.node("Slice", [a, "st", g.ints("en", [100]), g.ints("ax", [3])], name="slice")
    r = g.node("ReduceMean", [r], axes=[3], keepdims=1)                       # [1, 8, 4, 1]
    g.conv(g.node("Add", [a, r]), 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


@case("Slice-dynamic-start-channels", lambda comp: _dyn_slice_check(comp))
def _slice_dynamic_channels():
    """A run-time start on the channel axis: the block cannot be located, channels are pinned."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.input("st", [1], INT64)                                                  # 0..2 at run time
    a = g.conv("x", 3, 8, name="conv1")
    r = g.node("Slice", [a, "st", g.ints("en", [100]), g.ints("ax", [1])], name="slice")
    r = g.node("ReduceMean", [r], axes=[1], keepdims=1)                       # [1, 1, 4, 4]
    g.conv(g.node("Mul", [a, r]), 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def _dyn_slice_check(comp):
    s = comp.spec()
    assert s[C1][0] == "P" and "slice" in pinned_nodes(comp), (s, comp.pins())


def _rotate_half(g, a):
    """rotate_half on channels: cat(-x2, x1) with x1, x2 the halves (RoPE)."""
    x1 = g.node("Slice", [a, g.ints("st1", [0]), g.ints("en1", [4]), g.ints("ax1", [1])])
    x2 = g.node("Slice", [a, g.ints("st2", [4]), g.ints("en2", [8]), g.ints("ax2", [1])])
    rot = g.node("Concat", [g.node("Neg", [x2]), x1], axis=1)
    return g.node("Add", [a, g.node("Mul", [rot, g.w("sin", [8, 1, 1])])]), 8


def _rotate_half_check(comp):
    s = comp.spec()
    m = re.fullmatch(r"cat\((c\d+\[4\]), (c\d+\[4\])\)", s[C1][0])
    assert m and m.group(1) == m.group(2), s
    assert s[C2][1] == s[C1][0] == s["sin"][0]
    assert not comp.pins()


add_sandwich("Slice-Concat-rotate-half", _rotate_half, _rotate_half_check)


def _gather(idx, axis, name="gather"):
    def body(g, a):
        r = g.node("Gather", [a, g.ints("idx", idx)], name=name, axis=axis)
        c = len(idx) if axis in (1, -3) else 8
        return r, c
    return body


add_sandwich("Gather-spatial", _gather([0, 2, 3], 3))
add_sandwich("Gather-channels", _gather([0, 2, 3, 7, 1], 1), pins_channels("gather"))
add_sandwich("Gather-channels-negative-axis", _gather([5, 1], -3), pins_channels("gather"))


def _gather_nd_spatial(g, a):
    """batch_dims=2 over (N, C): per-channel constant row indices pick 3 rows of H."""
    idx = np.random.default_rng(0).integers(0, 4, [1, 8, 3, 1]).astype(np.int64)
    return g.node("GatherND", [a, g.const("rows", idx)], batch_dims=2), 8


def _gather_nd_check(comp):
    same_channels(comp)
    s = comp.spec()
    assert s["rows"][1] == s[C1][0], s  # the indices move with their channels


add_sandwich("GatherND-batch-dims-2", _gather_nd_spatial, _gather_nd_check)
add_sandwich("GatherND-channels", lambda g, a: (g.node(
    "GatherND", [a, g.ints("nc", [[[0, 5], [0, 2]]])], name="gnd"), 2), pins_channels("gnd"))


@case("Gather-embedding", lambda comp: _embedding_check(comp, tied=False))
def _embedding():
    """Token ids into an embedding table: the ids carry the vocabulary class on their values."""
    g = G()
    g.input("ids", [1, 5], INT64)
    e = g.node("Gather", [g.w("emb", [4, 8]), "ids"], name="embed", axis=0)        # ids in 0..2
    g.node("MatMul", [g.node("Relu", [e]), g.w("W", [8, 4])], outputs="y")
    g.output("y")
    return g.build()


@case("Gather-embedding-tied-logits", lambda comp: _embedding_check(comp, tied=True))
def _embedding_tied():
    """Tied input/output embeddings: ids are mapped by value, logits permuted by the same class."""
    g = G()
    g.input("ids", [5], INT64)
    e = g.node("Gather", [g.w("emb", [6, 8]), "ids"], name="embed", axis=0)        # [5, 8]
    h = g.node("Gemm", [g.node("Tanh", [e]), g.w("W", [8, 8]), g.w("b", [8], 0.1)])
    g.node("Gemm", [h, "emb"], transB=1, outputs="logits")                          # [5, 6]
    g.output("logits")
    return g.build()


def _embedding_check(comp, tied):
    s = comp.spec()
    assert is_secret(s["emb"][0]) and is_secret(s["emb"][1]), s
    assert s["emb"][1] == s["W"][0], s
    (ids,) = [c for c in comp.inputs if c.name == "ids"]
    assert ids.value_layout == s["emb"][0] and not ids.clear, ids
    if tied:
        (logits,) = [c for c in comp.outputs if c.name == "logits"]
        assert logits.layout[1] == s["emb"][0], logits
    assert not comp.pins(), comp.pins()


@case("Gather-ids-read-as-numbers", lambda comp: _ids_arith_check(comp))
def _embedding_arith():
    """ids + 1 computes on the ids: the vocabulary axis must stay public, and the node is named."""
    g = G()
    g.input("ids", [1, 5], INT64)
    shifted = g.node("Add", ["ids", g.ints("one", 1)], name="shift_ids")
    e = g.node("Gather", [g.w("emb", [4, 8]), shifted], name="embed", axis=0)
    g.node("MatMul", [g.node("Relu", [e]), g.w("W", [8, 4])], outputs="y")
    g.output("y")
    return g.build()


def _ids_arith_check(comp):
    s = comp.spec()
    assert s["emb"][0] == "P" and is_secret(s["emb"][1]), s
    assert pinned_nodes(comp) & {"shift_ids", "embed"}, comp.pins()


@case("Gather-ids-reshaped-two-tables", lambda comp: _two_tables_check(comp))
def _ids_two_tables():
    """The same ids (one copy reshaped) index two tables: both tables share the vocabulary class."""
    g = G()
    g.input("ids", [1, 6], INT64)
    e1 = g.node("Gather", [g.w("E1", [4, 8]), g.node("Reshape", ["ids", g.ints("s", [2, 3])])])
    e2 = g.node("Reshape", [g.node("Gather", [g.w("E2", [4, 8]), "ids"]), g.ints("s2", [2, 3, 8])])
    g.node("MatMul", [g.node("Add", [e1, e2]), g.w("W", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


def _two_tables_check(comp):
    s = comp.spec()
    assert is_secret(s["E1"][0]) and s["E1"][0] == s["E2"][0], s
    (ids,) = comp.inputs
    assert ids.value_layout == s["E1"][0]


def _ids_out_check(comp):
    ids = [c for c in comp.inputs if c.name == "ids"][0]
    out = [c for c in comp.outputs if c.name == "ids_out"][0]
    assert ids.value_layout and out.value_layout == ids.value_layout == comp.spec()["E"][0], (ids, out)


@case("Gather-ids-passed-through", _ids_out_check)
def _ids_out():
    """ids are also a model output: decode maps them back by value."""
    g = G()
    g.input("ids", [1, 6], INT64)
    g.node("Identity", ["ids"], outputs="ids_out")
    e = g.node("Gather", [g.w("E", [4, 8]), "ids"])
    g.node("MatMul", [e, g.w("W", [8, 5])], outputs="y")
    g.output("y")
    g.output("ids_out", INT64)
    return g.build()


def _ids_two_sizes():
    g = G()
    g.input("ids", [1, 6], INT64)
    e1 = g.node("Gather", [g.w("E1", [4, 8]), "ids"], name="gather4")
    e2 = g.node("Gather", [g.w("E2", [3, 8]), "ids"], name="gather3")
    g.node("MatMul", [g.node("Add", [e1, e2]), g.w("W", [8, 5])], outputs="y")
    g.output("y")
    return g.build()


def test_ids_into_tables_of_different_sizes(tmp_path):
    """ids index a 4-row and a 3-row table: no common value layout, the ids (content) are refused;
    allowed in the clear, both tables stay unpermuted on their rows and the result is exact."""
    with pytest.raises(ClearBoundaryError) as e:
        compile_plain(_ids_two_sizes(), tmp_path / "refused")
    assert "'ids'" in str(e.value)
    comp = roundtrip(_ids_two_sizes(), tmp_path / "ok", allow_clear=["ids"])
    s = comp.spec()
    assert s["E1"][0] == "P" and s["E2"][0] == "P" and is_secret(s["E1"][1]), s
    assert pinned_nodes(comp) & {"gather4", "gather3"}, comp.pins()


@case("Conv-tied-weight", same_layout(("W", 0), ("W", 1)))
def _tied_conv():
    """One square weight used by two convs: its two axes are one class."""
    g = G()
    g.input("x", [1, 8, 4, 4])
    w = g.w("W", [8, 8, 1, 1])
    a = g.node("Relu", [g.node("Conv", ["x", w], kernel_shape=[1, 1])])
    g.node("Conv", [a, w], kernel_shape=[1, 1], outputs="y")
    g.output("y")
    return g.build()


def _mlp_dtype(elem, np_dtype):
    def build():
        g = G()
        g.input("x", [3, 16], elem)
        rng = np.random.default_rng(0)
        h = g.node("Relu", [g.node("MatMul", ["x", g.const("W1", (rng.standard_normal([16, 8]) / 4).astype(np_dtype))])])
        g.node("MatMul", [h, g.const("W2", (rng.standard_normal([8, 5]) / 3).astype(np_dtype))], outputs="y")
        g.output("y", elem)
        return g.build()
    return build


CASES["MatMul-float16"] = (_mlp_dtype(TensorProto.FLOAT16, np.float16), _mm_chain_check, {"rtol": 2e-3})
CASES["MatMul-double"] = (_mlp_dtype(TensorProto.DOUBLE, np.float64), _mm_chain_check, {})


def _two_outputs_check(comp):
    assert [c.name for c in comp.outputs] == ["y", "feat"]
    assert [c.secret_axes for c in comp.outputs] == [[1], [1]], [c.layout for c in comp.outputs]


@case("Two-outputs-one-consumed", _two_outputs_check)
def _two_outputs():
    """An intermediate that is also a model output, listed after the final output."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.conv("x", 3, 8, name="conv1", outputs="feat")
    g.conv(g.node("Relu", ["feat"]), 8, 4, name="conv2", outputs="y")
    g.output("y")
    g.output("feat")
    return g.build()


@case("Bool-mask-input")
def _mask():
    """A boolean mask input broadcast over channels: public structure, passes unchanged."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.input("mask", [1, 1, 4, 4], BOOL)
    a = g.conv("x", 3, 8, name="conv1")
    a = g.node("Mul", [a, g.node("Cast", ["mask"], to=TensorProto.FLOAT)])
    g.conv(a, 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


@case("Concat-with-second-input", lambda comp: _concat_input_check(comp))
def _concat_input():
    """A second float input joins the channels through Concat: it gets its own class."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    g.input("z", [1, 2, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    g.conv(g.node("Concat", [a, "z"], axis=1), 10, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def _concat_input_check(comp):
    s = comp.spec()
    z = [c for c in comp.inputs if c.name == "z"][0]
    assert z.secret_axes == [1]
    assert s[C2][1] == f"cat({s[C1][0]}, {z.layout[1]})", (s, z.layout)


# -- reductions ----------------------------------------------------------------
REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _reduce(op, opset, keepdims, axes_form):
    def body(g, a):
        x = positive(g, a) if op in ("ReduceLogSum",) else a
        axes = [3] if not keepdims else [2, 3]
        if axes_form == "input":
            r = g.node(op, [x, g.ints("axes", axes)], keepdims=keepdims)
        else:
            r = g.node(op, [x], axes=axes, keepdims=keepdims)
        if not keepdims:
            r = g.node("Unsqueeze", [r, g.ints("uax", [3])])
        return r, 8
    return body


for _op in REDUCE_OPS:
    _attr_opset = 13 if _op != "ReduceSum" else 11
    add_sandwich(f"{_op}-{_attr_opset}-attr-keepdims1", _reduce(_op, _attr_opset, 1, "attr"), opset=_attr_opset)
    add_sandwich(f"{_op}-18-input-keepdims0", _reduce(_op, 18, 0, "input"), opset=18)
add_sandwich("ReduceSum-13-input-keepdims1", _reduce("ReduceSum", 13, 1, "input"))
add_sandwich("ReduceMean-13-attr-keepdims0", _reduce("ReduceMean", 13, 0, "attr"))


def _reduce_channels(g, a):
    return g.node("ReduceMean", [a], axes=[1], keepdims=1), 1


def _reduce_channels_check(comp):
    s = comp.spec()
    assert is_secret(s[C1][0]), s          # a mean over all channels is invariant
    assert s[C2][1] == "P" and is_secret(s[C2][0]), s
    assert not comp.pins()


add_sandwich("ReduceMean-over-channels", _reduce_channels, _reduce_channels_check)
add_sandwich("ReduceSum-18-noop-empty-axes", lambda g, a: (g.node(
    "ReduceSum", [a, g.ints("axes", np.zeros([0], np.int64))], noop_with_empty_axes=1), 8), opset=18)


# -- constants and shape readers (mostly folded away by normalize) -----------------------
add_sandwich("Constant", lambda g, a: (g.node("Add", [a, g.node(
    "Constant", [], value=onnx.numpy_helper.from_array(  # not a progression: see test_exposed.py for those
        np.array([0.3, -0.7, 0.9, 0.1, -0.2, 0.5, -0.9, 0.6], np.float32).reshape(8, 1, 1), "cv"))]), 8))
add_sandwich("ConstantOfShape", lambda g, a: (g.node("Add", [a, g.node(
    "ConstantOfShape", [g.ints("cs", [1, 1, 4])],
    value=onnx.numpy_helper.from_array(np.array([0.5], np.float32)))]), 8))
add_sandwich("Range", lambda g, a: (g.node("Add", [a, g.node(
    "Range", [g.floats("r0", 0.0), g.floats("r1", 2.0), g.floats("r2", 0.5)])]), 8))
add_sandwich("EyeLike", lambda g, a: (g.node("Mul", [a, g.node("EyeLike", [g.w("sq", [4, 4])], k=1)]), 8))
add_sandwich("Shape-Reshape", lambda g, a: (g.node("Reshape", [
    g.node("Relu", [g.node("Reshape", [a, g.ints("s1", [1, 8, 16])])]), g.node("Shape", [a])]), 8))
add_sandwich("Size", lambda g, a: (g.node("Div", [a, g.node("Cast", [g.node("Size", [a])],
                                                             to=TensorProto.FLOAT)]), 8))
add_sandwich("RandomNormal-seeded", lambda g, a: (g.node("Add", [a, g.node(
    "RandomNormal", [], shape=[1, 1, 4, 4], seed=3.0)]), 8))
add_sandwich("RandomUniform-seeded", lambda g, a: (g.node("Add", [a, g.node(
    "RandomUniform", [], shape=[1, 1, 1, 4], seed=5.0)]), 8))


def _shape_symbolic_check(comp):
    s = comp.spec()
    assert is_secret(s[C1][0]) and classes_of(s[C1][0]) <= classes_of(s["W"][1]), s
    assert s["zero"] == ["P"] and s["rest"] == ["P"], s
    assert "Shape" in {n.op_type for n in comp.model.graph}  # the batch is only known at run time


@case("Shape-symbolic-batch", _shape_symbolic_check, dims=None)
def _shape_symbolic():
    """Symbolic batch: the Shape -> Gather -> Concat -> Reshape chain stays in the server graph."""
    g = G()
    g.input("x", ["N", 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    n = g.node("Gather", [g.node("Shape", [a]), g.ints("zero", [0])], axis=0)
    shape = g.node("Concat", [n, g.ints("rest", [-1])], axis=0)
    f = g.node("Reshape", [a, shape])
    g.node("Gemm", [f, g.w("W", [5, 128]), g.w("B", [5], 0.1)], transB=1, outputs="y")
    g.output("y")
    return g.build()


# -- sequence-model ops: Einsum, LayerNormalization, Tile, Trilu, CumSum ------------
def _chain(op_body, xshape=(2, 3, 16), w1=(16, 8), w2=(8, 5), opset=17):
    """x -> MatMul W1 -> body -> MatMul W2 -> y."""
    def build():
        g = G(opset=opset)
        g.input("x", list(xshape))
        h = g.node("MatMul", ["x", g.w("W1", list(w1))])
        h = op_body(g, h)
        g.node("MatMul", [h, g.w("W2", list(w2))], outputs="y")
        g.output("y")
        return g.build()
    return build


def _hidden_kept(comp):
    s = comp.spec()
    assert is_secret(s["W1"][1]) and s["W1"][1] == s["W2"][0], s
    assert not comp.pins(), comp.pins()


def _hidden_pinned(node):
    def check(comp):
        s = comp.spec()
        assert s["W1"][1] == "P" and s["W2"][0] == "P", s
        assert node in pinned_nodes(comp), comp.pins()
        assert is_secret(s["W1"][0]) and is_secret(s["W2"][1]), s
    return check


def _einsum_model(eq, xshape, wshape, w2shape):
    def build():
        g = G()
        g.input("x", list(xshape))
        h = g.node("Relu", [g.node("Einsum", ["x", g.w("W1", list(wshape))], equation=eq)])
        g.node("MatMul", [h, g.w("W2", list(w2shape))], outputs="y")
        g.output("y")
        return g.build()
    return build


def _einsum_check(w1_axis):
    def check(comp):
        s = comp.spec()
        assert is_secret(s["W1"][w1_axis]) and s["W1"][w1_axis] == s["W2"][0], s
        assert not comp.pins(), comp.pins()
    return check


CASES["Einsum-bij,jk->bik"] = (_einsum_model("bij,jk->bik", [2, 3, 16], [16, 8], [8, 5]), _einsum_check(1), {})
CASES["Einsum-implicit"] = (_einsum_model("ij,jk", [3, 16], [16, 8], [8, 5]), _einsum_check(1), {})
CASES["Einsum-ellipsis"] = (_einsum_model("...j,jk->...k", [2, 3, 16], [16, 8], [8, 5]), _einsum_check(1), {})
CASES["Einsum-ellipsis-implicit"] = (_einsum_model("...j,jk", [2, 3, 16], [16, 8], [8, 5]), _einsum_check(1), {})
CASES["Einsum-weight-transposed"] = (_einsum_model("ij,kj->ik", [3, 16], [8, 16], [8, 5]), _einsum_check(0), {})
CASES["Einsum-diagonal"] = (_einsum_model("ii,ij->ij", [16, 16], [16, 8], [8, 5]), _einsum_check(1), {})
CASES["Einsum-batched-weight"] = (_einsum_model("...ij,...jk->...ik", [2, 3, 16], [2, 16, 8], [8, 5]),
                                  _einsum_check(2), {})
CASES["Einsum-output-transposed"] = (_einsum_model("ij,jk->ki", [3, 16], [16, 8], [3, 5]),
                                     same_layout(("W1", 1)), {})
CASES["LayerNormalization-17"] = (_chain(lambda g, h: g.node(
    "LayerNormalization", [h, g.w("ln.s", [8], 0.1, 1.0), g.w("ln.b", [8], 0.1)], axis=-1)),
    all_of(_hidden_kept, same_layout(("W1", 1), ("ln.s", 0), ("ln.b", 0))), {})
CASES["LayerNormalization-17-stats-used"] = (_chain(lambda g, h: g.node("Add", g.node(
    "LayerNormalization", [h, g.w("ln.s", [8], 0.1, 1.0)], n_out=3, axis=-1)[:2])), _hidden_kept, {})
CASES["Tile"] = (_chain(lambda g, h: g.node("Tile", [h, g.ints("reps", [1, 2, 2])]), w2=(16, 5)),
                 lambda comp: _tile_check(comp), {})


def _tile_check(comp):
    s = comp.spec()
    assert is_secret(s["W1"][1]) and s["W2"][0] == f"cat({s['W1'][1]}, {s['W1'][1]})", s
CASES["Trilu-feature-axis"] = (_chain(lambda g, h: g.node("Trilu", [h], name="trilu", upper=1),
                                      xshape=(2, 8, 16), opset=14), _hidden_pinned("trilu"), {})
CASES["CumSum-sequence-axis"] = (_chain(lambda g, h: g.node("CumSum", [h, g.ints("ax", 1)]), opset=14),
                                 _hidden_kept, {})
CASES["CumSum-feature-axis"] = (_chain(lambda g, h: g.node("CumSum", [h, g.ints("ax", -1)], name="cumsum",
                                                           exclusive=1, reverse=1), opset=14),
                                _hidden_pinned("cumsum"), {})


# --------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------
#: case id -> reason: cases that fail because of a known compiler bug (strict xfail)
KNOWN_BUGS: dict[str, str] = {}


def _params(ids, bugs):
    return [pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=bugs[i])) if i in bugs else i
            for i in ids]


@pytest.mark.parametrize("cid", _params(sorted(CASES), KNOWN_BUGS))
def test_op(cid, tmp_path):
    build, check, kw = CASES[cid]
    comp = roundtrip(build(), tmp_path, **kw)
    if check is not None:
        check(comp)


#: rule modules whose ops must each have a case in this file; the other rule modules
#: (contrib, indexing, recurrent, ...) have test files of their own
CORE_RULE_MODULES = {f"eeonnx.compiler.rules.{m}" for m in ("elementwise", "linear", "reduce", "shape", "spatial")}


def test_every_core_registry_op_has_a_case():
    covered = set()
    for build, _check, _kw in CASES.values():
        covered |= {n.op_type for n in build().graph.node}
    core = {op for (_dom, op), rules in REGISTRY.items() for r in rules if r.apply.__module__ in CORE_RULE_MODULES}
    missing = core - covered
    assert not missing, f"registry ops without a test case: {sorted(missing)}"


def test_every_registry_op_is_named_by_some_test():
    """Adding an op is one registry entry plus one test: each op type appears (quoted) in a test file."""
    here = os.path.dirname(os.path.abspath(__file__))
    text = ""
    for f in os.listdir(here):
        if f.startswith("test_") and f.endswith(".py"):
            with open(os.path.join(here, f), encoding="utf-8") as fh:
                text += fh.read()
    missing = sorted(op for (_dom, op) in REGISTRY if f'"{op}"' not in text and f"'{op}'" not in text)
    assert not missing, f"registry ops that no test file names: {missing}"


def test_registry_lookup_respects_opsets():
    from eeonnx.compiler.rules import lookup

    assert lookup("", "Relu", 13) is not None
    assert lookup("ai.onnx", "Conv", 1) is not None
    assert lookup("", "NonMaxSuppression", 11) is None
    assert lookup("com.example", "Relu", 1) is None
    for (domain, op), entries in REGISTRY.items():
        for r in entries:
            assert lookup(domain, op, r.since) is r or lookup(domain, op, r.since) is not None
            if r.until is not None:
                assert lookup(domain, op, r.until + 1) is not r


# --------------------------------------------------------------------------
# models/zoo.py: exporter-style models
# --------------------------------------------------------------------------
from models import zoo  # noqa: E402


def _zoo_dims(name):
    return {"N": 3} if name == "torch_style_flatten_reshape" else None


@pytest.mark.parametrize("name", _params(sorted(set(zoo.BUILDERS) - {"ops_zoo_structural"}), KNOWN_BUGS))
def test_zoo_roundtrip(name, tmp_path):
    model = zoo.BUILDERS[name]()
    dims = _zoo_dims(name)
    feeds = zoo.make_feeds(model, seed=3, dims=dims)
    comp = roundtrip(model, tmp_path, feeds=feeds, dims=dims)
    assert comp.classes and comp.key_bits > 0
    assert not comp.pins(), comp.pins()


def test_zoo_symbolic_batch_without_dims(tmp_path):
    """The torch-style flatten keeps its Shape/Gather/Concat chain; any batch size runs."""
    model = zoo.torch_style_flatten_reshape()
    comp = roundtrip(model, tmp_path / "a", feeds=zoo.make_feeds(model, dims={"N": 2}))
    server = eeonnx.Server(tmp_path / "a" / "out" / "server" / "model.onnx", providers=["CPUExecutionProvider"])
    client = eeonnx.Client(tmp_path / "a" / "out")
    feeds = zoo.make_feeds(model, seed=5, dims={"N": 5})
    from helpers import assert_close, run_original
    assert_close(client.infer(server, feeds)[model.graph.output[0].name], run_original(model, feeds)[0])
    assert comp.classes


def test_zoo_structural_refused_then_allowed(tmp_path):
    """Its LRN pins the channels that reach the `logp` head: that output would travel in the
    clear, so compile refuses and names it; allow_clear accepts it and the rest is exact."""
    model = zoo.ops_zoo_structural()
    with pytest.raises(ClearBoundaryError) as e:
        compile_plain(model, tmp_path / "refused")
    outputs = [o.name for o in model.graph.output]
    named = [o for o in outputs if f"'{o}'" in str(e.value)]
    assert named, str(e.value)
    assert not (tmp_path / "refused").exists()
    # allow every output that cannot be secret; the roundtrip must then be exact
    comp = roundtrip(model, tmp_path / "ok", allow_clear=tuple(outputs))
    assert "lrn" in pinned_nodes(comp), comp.pins()
    clear = {c.name for c in comp.outputs if c.clear}
    assert named[0] in clear
    assert is_secret(comp.spec()["conv_in.weight"][1])  # the input channels stay secret


# --------------------------------------------------------------------------
# regressions for compiler bugs this suite found (strict xfail while a bug is open)
# --------------------------------------------------------------------------
def _flatten_nhwc_neg():
    return _tf_flatten_model(-1)


def _flatten_nchw_neg():
    return _flatten_model(-3)


@pytest.mark.parametrize("build,w_in,w_out", [(_flatten_nhwc_neg, ("W1", 1), ("W2", 0)),
                                              (_flatten_nchw_neg, (C1, 0), ("W", 0))],
                         ids=["nhwc-axis-1", "nchw-axis-3"])
def test_flatten_negative_axis_keeps_channels_secret(build, w_in, w_out, tmp_path):
    """Flatten's axis counts from the back when negative (axis + rank): regression test."""
    comp = roundtrip(build(), tmp_path)
    s = comp.spec()
    assert is_secret(s[w_in[0]][w_in[1]]), s
    assert classes_of(s[w_in[0]][w_in[1]]) <= classes_of(s[w_out[0]][w_out[1]]), s
    assert not comp.pins(), comp.pins()


def _reduce_runtime_axes(op, opset):
    g = G(opset=opset)
    g.input("x", [1, 3, 4, 4])
    g.input("axes", [2], INT64)
    a = g.conv("x", 3, 8, name="conv1")
    r = g.node(op, [a, "axes"], name="reduce", keepdims=1)
    g.conv(r, 8, 4, name="conv2", outputs="y")
    g.output("y", shape=[1, 4, 1, 1])
    return g.build()


@pytest.mark.parametrize("op,opset", [("ReduceSum", 13), ("ReduceMean", 18)])
def test_reduce_with_runtime_axes_is_exact(op, opset, tmp_path):
    """Axes only known at run time: the reduction must not be assumed to cover the channels
    (regression: it used to be analysed as a reduction over every axis, with a wrong result).
    Never silently wrong: refused, or exact once the unprotected output is allowed."""
    model = _reduce_runtime_axes(op, opset)
    feeds = {"x": np.random.default_rng(0).standard_normal([1, 3, 4, 4]).astype(np.float32),
             "axes": np.array([2, 3], np.int64)}
    try:
        compile_plain(model, tmp_path / "plain")
    except ClearBoundaryError as e:
        assert "'y'" in str(e)
        roundtrip(model, tmp_path / "allowed", feeds=feeds, allow_clear=["y"])
    else:
        roundtrip(model, tmp_path / "exact", feeds=feeds)


def _silent_add_transposed():
    """Add(a, a with C and H swapped) ties conv1's channels to a spatial axis."""
    g = G()
    g.input("x", [1, 3, 8, 8])
    a = g.conv("x", 3, 8, name="conv1")
    b = g.node("Add", [a, g.node("Transpose", [a], perm=[0, 2, 1, 3])], name="add_c_h")
    g.conv(b, 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def _silent_channels_into_space():
    """conv1's channels are transposed into conv2's spatial H axis."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 4, name="conv1")
    g.conv(g.node("Transpose", [a], perm=[0, 2, 1, 3]), 4, 4, 3, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def _silent_dropout_mask():
    """Dropout's mask multiplied back in (normalize turns the mask into ConstantOfShape)."""
    def body(g, a):
        y, mask = g.node("Dropout", [a], n_out=2)
        return g.node("Mul", [y, g.node("Cast", [mask], to=TensorProto.FLOAT)]), 8
    return sandwich(body)


@pytest.mark.parametrize("build", [_silent_add_transposed, _silent_channels_into_space],
                         ids=["add-transposed", "channels-into-space"])
def test_lost_channel_secrecy_is_reported(build, tmp_path):
    from eeonnx.errors import StrictPinError

    model = build()
    comp = roundtrip(model, tmp_path)  # exact either way
    if is_secret(comp.spec()[C1][0]):
        return
    assert comp.pins(), f"conv1's channels are public ({comp.spec()[C1]}) and no pin is reported"
    with pytest.raises(StrictPinError):
        compile_plain(model, tmp_path / "strict", strict=True)


def test_lost_channel_secrecy_is_reported_dropout_mask(tmp_path):
    """Dropout's mask (a ConstantOfShape after normalize) multiplied in: reported or kept (regression)."""
    from eeonnx.errors import StrictPinError

    model = _silent_dropout_mask()
    comp = roundtrip(model, tmp_path)
    if not is_secret(comp.spec()[C1][0]):
        assert comp.pins(), f"conv1's channels are public ({comp.spec()[C1]}) and no pin is reported"
        with pytest.raises(StrictPinError):
            compile_plain(model, tmp_path / "strict", strict=True)


def test_initializer_listed_as_input_ir4(tmp_path):
    """IR >= 4 initializers also listed as graph inputs (overridable defaults, old torch exports)
    are weights, not encode inputs: the client feeds x alone (regression test)."""
    g = G()
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    g.conv(a, 8, 4, name="conv2", outputs="y")
    g.output("y")
    model = g.build()
    model.graph.input.extend([onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                              for t in model.graph.initializer])
    onnx.checker.check_model(model, full_check=True)
    roundtrip(model, tmp_path)
