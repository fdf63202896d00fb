"""Random ONNX graphs built from eeonnx's op whitelist, for ``tests/test_fuzz.py``.

Two halves:

- :class:`FuzzGraph`, a shape-tracking builder on top of ``helpers.G``. Every
  method adds one op (or one small fixed pattern such as a channel shuffle),
  computes the output shape itself and records the call, so that any graph can
  be printed as the Python code that rebuilds it exactly (:meth:`FuzzGraph.code`;
  weights come from a seeded generator, in call order). A fuzz failure prints
  its graph in that form.
- :func:`graphs`, a hypothesis strategy that draws FuzzGraph call sequences that
  are valid by construction: every op is offered only for shapes it accepts, and
  every parameter is drawn from the values that keep the graph valid and small
  (each tensor at most ``MAX_NUMEL`` elements, new dims at most ``MAX_DIM``).
  Every drawn graph is then checked (:func:`validate`: ``onnx.checker`` with full
  shape inference, and one onnxruntime run whose shapes, for *every* value, must
  equal the tracked ones); a graph that fails that is a bug of this generator and
  raises :class:`GeneratorBug` instead of being filtered away.

What a draw covers: opsets 11, 12, 13, 17, 18 (attribute and input forms of axes,
splits, reductions); static shapes, or a symbolic batch dim 'N' on the first input;
weights as initializers or as Constant nodes; a second float input or a boolean mask
input meeting the first; token-id inputs (embeddings, Gather of activations) and
ArgMax/TopK results as integer values; Conv/ConvTranspose (groups, depthwise,
strides, dilations, pads, auto_pad), Gemm, MatMul and Einsum with weights or between
activations, tied weights, elementwise unaries/binaries with broadcasting,
normalisations, reductions, Softmax, Pad, pools, Resize, Concat/Split/Slice,
Reshape (merges, splits, regroupings, 0/-1, from a Shape), Transpose, channel
shuffles, DepthToSpace/SpaceToDepth, Tile/Expand, Gather/GatherElements with
constant indices, Where, CumSum, Trilu, LRN; and motifs of real models (multi-head
attention, ShuffleNet units, concat + grouped conv, concat + regroup, pixel shuffle).

Numerics: the fuzz test compares outputs relative to their largest value, so the
generator keeps to ops that are continuous in their inputs (a permuted summation
order moves results by ~1e-7, which must not flip a Floor, a Sign or a
comparison into a different branch), divides only by values bounded away from
zero, raises only to whole powers, and leaves out Log/Sqrt/Reciprocal of computed
values.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import strategies as st
from onnx import TensorProto, helper

from helpers import BOOL, CPU, FLOAT, INT64, G, _ir_for, random_feeds

MAX_DIM = 16
MAX_NUMEL = 4 * 16 * 6 * 6
OPSETS = (11, 12, 13, 17, 18)

# continuous elementwise unaries (Floor/Ceil/Round/Sign/Shrink/ThresholdedRelu jump,
# Log/Sqrt/Reciprocal blow up near 0: left out on purpose), with the opset they need
UNARY = {
    "Relu": 1, "LeakyRelu": 1, "Elu": 1, "Selu": 1, "Celu": 12, "Sigmoid": 1, "Tanh": 1,
    "HardSigmoid": 1, "HardSwish": 14, "Softplus": 1, "Softsign": 1, "Erf": 1, "Abs": 1,
    "Neg": 1, "Sin": 1, "Cos": 1, "Identity": 1, "Mish": 18,
}
BINARY = ("Add", "Sub", "Mul", "Max", "Min")
VARIADIC = ("Sum", "Mean", "Max", "Min")
WEIGHT_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")
REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
          "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp")


class GeneratorBug(AssertionError):
    """A drawn graph is not valid ONNX, or its shapes are not the tracked ones."""


def broadcast_shape(*shapes) -> tuple[int, ...] | None:
    """numpy broadcasting of static shapes, None if they do not broadcast."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        return None


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def fits(shape) -> bool:
    """Small enough (new dims are drawn up to MAX_DIM; merged axes may be bigger)."""
    return all(d >= 1 for d in shape) and numel(shape) <= MAX_NUMEL


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _recorded(fn):
    """Record a public builder call (not the ones made from inside another call)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        top = self._depth == 0
        self._depth += 1
        try:
            first = len(self.shapes)
            out = fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
        if top:
            self.calls.append((fn.__name__, args, kwargs, list(range(first, len(self.shapes)))))
        return out

    return wrapper


class FuzzGraph:
    """Shape-tracking graph builder. Values are ids (ints) into ``shapes``/``names``.

    Every op method takes value ids and plain parameters and returns the id (or
    ids) of what it adds. ``build()`` gives the ONNX model; ``code()`` the calls.
    """

    def __init__(self, opset: int = 17, seed: int = 0, const_nodes: bool = False):
        """``const_nodes``: float weights are Constant nodes, not initializers (as some
        exporters write them; normalize lifts them)."""
        self.opset = opset
        self.seed = seed
        self.const_nodes = const_nodes
        self.g = G(opset=opset, seed=seed, check=False)
        self.shapes: list[tuple[int, ...]] = []
        self.names: list[str] = []
        self.is_input: list[bool] = []
        self.outputs: list[int] = []
        self.calls: list = []
        self._depth = 0
        self._k = 0
        self.weights: dict[str, tuple] = {}  # float weights by name, for sharing
        self.dtypes: list[int] = []  # FLOAT or INT64 per value
        self.vocab: dict[int, int] = {}  # integer values: their values lie in [0, vocab)
        self.symbolic = False  # some input has a symbolic batch dim: outputs are declared without shapes
        self._ids: dict[str, int] = {}

    # -- plumbing ------------------------------------------------------------------
    def _name(self, stem: str) -> str:
        self._k += 1
        return f"{stem}{self._k}"

    def _new(self, name: str, shape, is_input: bool = False, dtype: int = FLOAT) -> int:
        shape = tuple(int(d) for d in shape)
        self.shapes.append(shape)
        self.names.append(name)
        self.is_input.append(is_input)
        self.dtypes.append(dtype)
        self._ids[name] = len(self.shapes) - 1
        return len(self.shapes) - 1

    def _node(self, op: str, inputs, shape, dtype: int | None = None, **attrs) -> int:
        """Add a node; its output has the dtype of its first value input (shape ops on
        integer ids stay integer, with their range), or ``dtype``."""
        name = self._name(op.lower())
        out = self.g.node(op, inputs, name=name, **attrs)
        srcs = [self._ids[i] for i in inputs if i in self._ids]
        if dtype is None:
            dtype = self.dtypes[self._ids[inputs[0]]] if inputs[0] in self._ids else FLOAT
        v = self._new(out, shape, dtype=dtype)
        if dtype == INT64 and any(u in self.vocab for u in srcs):
            self.vocab[v] = max(self.vocab.get(u, 0) for u in srcs)
        return v

    def is_float(self, v: int) -> bool:
        return self.dtypes[v] == FLOAT

    def _w(self, shape, positive: bool = False, scale: float | None = None) -> str:
        name = self._name("w")
        self.weights[name] = tuple(shape)
        if positive:  # bounded away from 0: divisors, variances
            self.g.floats(name, self.g.rng.uniform(0.5, 1.5, list(shape)).astype(np.float32))
        elif scale is not None:
            self.g.floats(name, (scale * self.g.rng.standard_normal(list(shape))).astype(np.float32))
        elif not len(shape):  # a scalar
            self.g.floats(name, np.array(self.g.rng.standard_normal(), dtype=np.float32))
        else:
            self.g.w(name, list(shape))
        if self.const_nodes:
            t = self.g.inits.pop()
            self.g.nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", value=t))
        return name

    def _ints(self, values) -> str:
        return self.g.ints(self._name("c"), list(values))

    def _scalar_i(self, value: int) -> str:
        return self.g.const(self._name("c"), np.array(value, dtype=np.int64))

    def _scalar_f(self, value: float) -> str:
        return self.g.const(self._name("c"), np.array(value, dtype=np.float32))

    def n(self, v: int) -> str:
        return self.names[v]

    def s(self, v: int) -> tuple[int, ...]:
        return self.shapes[v]

    # -- graph I/O -------------------------------------------------------------------
    @_recorded
    def input(self, shape, symbolic: bool = False) -> int:
        """A float input; ``symbolic``: its first dim is declared as 'N' (fed with 2)."""
        name = f"x{sum(self.is_input)}"
        if symbolic:
            assert shape[0] == 2, "a symbolic batch dim is run with size 2 (helpers.random_feeds)"
            self.symbolic = True
        self.g.input(name, (["N"] if symbolic else [shape[0]]) + list(shape[1:]) if shape else [])
        return self._new(name, shape, is_input=True)

    @_recorded
    def ids(self, shape, vocab: int) -> int:
        """An int64 input of token ids in [0, vocab) (helpers.random_feeds draws 0..2)."""
        assert vocab >= 3
        name = f"ids{sum(self.is_input)}"
        self.g.input(name, list(shape), INT64)
        v = self._new(name, shape, is_input=True, dtype=INT64)
        self.vocab[v] = vocab
        return v

    @_recorded
    def mask(self, shape) -> int:
        """A boolean input (helpers.random_feeds: fair coins)."""
        name = f"m{sum(self.is_input)}"
        self.g.input(name, list(shape), BOOL)
        return self._new(name, shape, is_input=True, dtype=BOOL)

    @_recorded
    def where_mask(self, m: int, v: int, weight_shape) -> int:
        """Where(mask, v, W) for a boolean input ``m`` and a weight W."""
        w = self._w(weight_shape)
        return self._node("Where", [self.n(m), self.n(v), w],
                          broadcast_shape(self.s(m), self.s(v), weight_shape), dtype=FLOAT)

    @_recorded
    def gather_act(self, v: int, u: int, axis: int) -> int:
        """Gather(v, u, axis): integer value u picks positions of an activation axis."""
        s = list(self.s(v))
        a = axis % len(s)
        return self._node("Gather", [self.n(v), self.n(u)], s[:a] + list(self.s(u)) + s[a + 1:], axis=axis)

    @_recorded
    def embed(self, v: int, dim: int) -> int:
        """Gather(W[vocab, dim], ids): an embedding table indexed by integer value v."""
        rows = self.vocab[v]
        w = self._w([rows, dim])
        return self._node("Gather", [w, self.n(v)], list(self.s(v)) + [dim], axis=0)

    @_recorded
    def argmax(self, v: int, axis: int, keepdims: int = 1, op: str = "ArgMax") -> int:
        s = list(self.s(v))
        a = axis % len(s)
        out = s[:a] + ([1] if keepdims else []) + s[a + 1:]
        r = self._node(op, [self.n(v)], out, dtype=INT64, axis=axis, keepdims=keepdims)
        self.vocab[r] = s[a]
        return r

    @_recorded
    def output(self, v: int) -> None:
        assert not self.is_input[v], "a graph input cannot be an output"
        if v not in self.outputs:
            self.outputs.append(v)

    def build(self, all_values: bool = False) -> onnx.ModelProto:
        """The model; ``all_values``: every non-input value is an output (validation)."""
        outs = [v for v in range(len(self.shapes)) if not self.is_input[v]] if all_values else self.outputs
        graph = helper.make_graph(
            list(self.g.nodes), "fuzz",
            list(self.g.inputs),
            [helper.make_tensor_value_info(self.names[v], self.dtypes[v],
                                           [None] * len(self.shapes[v]) if self.symbolic else list(self.shapes[v]))
             for v in outs],
            list(self.g.inits))
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="eeonnx-fuzz")
        m.ir_version = _ir_for(self.opset)
        return m

    def code(self) -> str:
        """Python that rebuilds this exact graph (ids are positional: v<k> is value k)."""
        const = ", const_nodes=True" if self.const_nodes else ""
        lines = [f"f = FuzzGraph(opset={self.opset}, seed={self.seed}{const})"]
        for name, args, kwargs, made in self.calls:
            parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
            call = f"f.{name}({', '.join(parts)})"
            note = "  # " + ", ".join(f"v{k} {list(self.shapes[k])}" for k in made) if made else ""
            lines.append(call + note)
        return "\n".join(lines)

    # -- elementwise -------------------------------------------------------------------
    @_recorded
    def unary(self, v: int, op: str) -> int:
        attrs = {}
        if op == "LeakyRelu":
            attrs["alpha"] = 0.1
        return self._node(op, [self.n(v)], self.s(v), **attrs)

    @_recorded
    def clip(self, v: int, lo: float | None, hi: float | None) -> int:
        ins = [self.n(v), self._scalar_f(lo) if lo is not None else "", self._scalar_f(hi) if hi is not None else ""]
        while ins and ins[-1] == "":
            ins.pop()
        return self._node("Clip", ins, self.s(v))

    @_recorded
    def dropout(self, v: int) -> int:
        return self._node("Dropout", [self.n(v)], self.s(v))

    @_recorded
    def cast(self, v: int) -> int:
        """Cast to double and back (two nodes)."""
        d = self.g.node("Cast", [self.n(v)], name=self._name("cast"), to=TensorProto.DOUBLE)
        return self._node("Cast", [d], self.s(v), to=TensorProto.FLOAT)

    @_recorded
    def softmax(self, v: int, axis: int, log: bool = False) -> int:
        return self._node("LogSoftmax" if log else "Softmax", [self.n(v)], self.s(v), axis=axis)

    @_recorded
    def binary(self, a: int, b: int, op: str) -> int:
        return self._node(op, [self.n(a), self.n(b)], broadcast_shape(self.s(a), self.s(b)))

    @_recorded
    def variadic(self, vs: list, op: str) -> int:
        return self._node(op, [self.n(v) for v in vs], broadcast_shape(*[self.s(v) for v in vs]))

    @_recorded
    def safe_div(self, a: int, b: int) -> int:
        """a / (|b| + 1): Abs, Add, Div."""
        ab = self.g.node("Abs", [self.n(b)], name=self._name("abs"))
        den = self.g.node("Add", [ab, self._scalar_f(1.0)], name=self._name("add"))
        return self._node("Div", [self.n(a), den], broadcast_shape(self.s(a), self.s(b)))

    @_recorded
    def where_max(self, a: int, b: int, flip: bool = False) -> int:
        """Where(a > b, a, b) (max) or Where(a > b, b, a) (min): continuous in a and b."""
        cond = self.g.node("Greater", [self.n(a), self.n(b)], name=self._name("greater"))
        x, y = (self.n(b), self.n(a)) if flip else (self.n(a), self.n(b))
        return self._node("Where", [cond, x, y], broadcast_shape(self.s(a), self.s(b)))

    @_recorded
    def with_weight(self, v: int, op: str, shape, weight_first: bool = False) -> int:
        """v (op) W for a weight W of ``shape`` (numpy broadcasting; Div: W in [0.5, 1.5];
        Max/Min: W ~ 0.1 N(0, 1), so that the result rarely saturates to a constant)."""
        w = self._w(shape, positive=(op == "Div"), scale=0.1 if op in ("Max", "Min") else None)
        ins = [w, self.n(v)] if weight_first and op != "Div" else [self.n(v), w]
        return self._node(op, ins, broadcast_shape(self.s(v), shape))

    @_recorded
    def pow(self, v: int, shape) -> int:
        """Pow(v, E) with a weight E of small whole exponents (1, 2, 3: continuous in v)."""
        name = self._name("w")
        self.weights[name] = tuple(shape)
        self.g.floats(name, self.g.rng.integers(1, 4, list(shape)).astype(np.float32))
        return self._node("Pow", [self.n(v), name], broadcast_shape(self.s(v), shape))

    @_recorded
    def prelu(self, v: int, shape) -> int:
        return self._node("PRelu", [self.n(v), self._w(shape)], self.s(v))

    # -- normalisation ---------------------------------------------------------------------
    @_recorded
    def batchnorm(self, v: int) -> int:
        c = self.s(v)[1]
        ins = [self.n(v), self._w([c]), self._w([c]), self._w([c]), self._w([c], positive=True)]
        return self._node("BatchNormalization", ins, self.s(v))

    @_recorded
    def instancenorm(self, v: int) -> int:
        c = self.s(v)[1]
        return self._node("InstanceNormalization", [self.n(v), self._w([c]), self._w([c])], self.s(v))

    @_recorded
    def layernorm(self, v: int, axis: int, bias: bool = True) -> int:
        norm = self.s(v)[axis:]
        ins = [self.n(v), self._w(norm)] + ([self._w(norm)] if bias else [])
        return self._node("LayerNormalization", ins, self.s(v), axis=axis)

    @_recorded
    def lrn(self, v: int) -> int:
        return self._node("LRN", [self.n(v)], self.s(v), size=3)

    # -- linear ---------------------------------------------------------------------------
    @_recorded
    def conv(self, v: int, cout: int, k: int = 1, group: int = 1, stride: int = 1, dilation: int = 1,
             pads=None, bias: bool = True, auto_pad: str | None = None) -> int:
        """``auto_pad``: 'SAME_UPPER', 'SAME_LOWER' or 'VALID' instead of ``pads``."""
        shape = self.s(v)
        nd = len(shape) - 2
        w = self._w([cout, shape[1] // group] + [k] * nd)
        ins = [self.n(v), w] + ([self._w([cout])] if bias else [])
        attrs = dict(kernel_shape=[k] * nd, group=group, strides=[stride] * nd, dilations=[dilation] * nd)
        if auto_pad:
            attrs["auto_pad"] = auto_pad
            if auto_pad == "VALID":
                spatial = [(shape[2 + i] - dilation * (k - 1) - 1) // stride + 1 for i in range(nd)]
            else:
                spatial = [-(-shape[2 + i] // stride) for i in range(nd)]
        else:
            pads = list(pads) if pads is not None else [0] * (2 * nd)
            attrs["pads"] = pads
            spatial = [(shape[2 + i] + pads[i] + pads[nd + i] - dilation * (k - 1) - 1) // stride + 1
                       for i in range(nd)]
        return self._node("Conv", ins, [shape[0], cout] + spatial, **attrs)

    @_recorded
    def conv_transpose(self, v: int, cout: int, k: int = 1, group: int = 1, stride: int = 1,
                       bias: bool = True) -> int:
        shape = self.s(v)
        nd = len(shape) - 2
        w = self._w([shape[1], cout // group] + [k] * nd)
        ins = [self.n(v), w] + ([self._w([cout])] if bias else [])
        spatial = [(shape[2 + i] - 1) * stride + k for i in range(nd)]
        return self._node("ConvTranspose", ins, [shape[0], cout] + spatial, kernel_shape=[k] * nd,
                          group=group, strides=[stride] * nd)

    @_recorded
    def gemm(self, v: int, n: int, trans_a: int = 0, trans_b: int = 0, bias_shape=None) -> int:
        a = self.s(v)
        m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
        w = self._w([n, k] if trans_b else [k, n])
        ins = [self.n(v), w] + ([self._w(bias_shape)] if bias_shape is not None else [])
        return self._node("Gemm", ins, [m, n], transA=trans_a, transB=trans_b, alpha=1.0, beta=1.0)

    @_recorded
    def matmul_w(self, v: int, n: int, batch=(), left: bool = False) -> int:
        """v @ W (W [*batch, K, n], or W [K] when n == 0) or, ``left``, W [*batch, n, K'] @ v."""
        a = self.s(v)
        if left:
            wshape = list(batch) + [n, a[-2]]
            out = list(broadcast_shape(a[:-2], batch)) + [n, a[-1]]
            return self._node("MatMul", [self._w(wshape), self.n(v)], out)
        if n == 0:
            return self._node("MatMul", [self.n(v), self._w([a[-1]])], a[:-1])
        wshape = list(batch) + [a[-1], n]
        if len(a) == 1:
            out = list(batch) + [n]
        else:
            out = list(broadcast_shape(a[:-2], batch)) + [a[-2], n]
        return self._node("MatMul", [self.n(v), self._w(wshape)], out)

    @_recorded
    def shared_matmul(self, v: int, w: str, trans: int = 0) -> int:
        """v @ W (trans=0) or Gemm(v, W, transB=1) with an existing weight W."""
        shp = self.weights[w]
        s = self.s(v)
        if trans:
            return self._node("Gemm", [self.n(v), w], [s[0], shp[0]], transB=1)
        return self._node("MatMul", [self.n(v), w], list(s[:-1]) + [shp[1]])

    @_recorded
    def matmul(self, a: int, b: int) -> int:
        sa, sb = self.s(a), self.s(b)
        return self._node("MatMul", [self.n(a), self.n(b)], _matmul_shape(sa, sb))

    @_recorded
    def gram(self, v: int, outer: bool = True) -> int:
        """v @ v^T (outer) or v^T @ v on the last two axes."""
        r = len(self.s(v))
        perm = list(range(r - 2)) + [r - 1, r - 2]
        t = self.g.node("Transpose", [self.n(v)], name=self._name("transpose"), perm=perm)
        s = self.s(v)
        if outer:
            return self._node("MatMul", [self.n(v), t], list(s[:-1]) + [s[-2]])
        return self._node("MatMul", [t, self.n(v)], list(s[:-2]) + [s[-1], s[-1]])

    @_recorded
    def einsum_w(self, v: int, n: int) -> int:
        """'...k,kn->...n' with a weight [K, n]."""
        s = self.s(v)
        return self._node("Einsum", [self.n(v), self._w([s[-1], n])], list(s[:-1]) + [n],
                          equation="...k,kn->...n")

    # -- shape ops -------------------------------------------------------------------------
    @_recorded
    def concat(self, vs: list, axis: int) -> int:
        shape = list(self.s(vs[0]))
        shape[axis] = sum(self.s(v)[axis] for v in vs)
        return self._node("Concat", [self.n(v) for v in vs], shape, axis=axis)

    @_recorded
    def concat_weight(self, v: int, axis: int, size: int, first: bool = False) -> int:
        """Concat v with a weight block of ``size`` along ``axis``."""
        wshape = list(self.s(v))
        wshape[axis] = size
        w = self._w(wshape)
        ins = [w, self.n(v)] if first else [self.n(v), w]
        shape = list(self.s(v))
        shape[axis] += size
        return self._node("Concat", ins, shape, axis=axis)

    @_recorded
    def split(self, v: int, axis: int, sizes, num_outputs: bool = False) -> list:
        """``num_outputs``: equal parts by the opset-18 attribute instead of sizes."""
        name = self._name("split")
        if num_outputs:
            assert self.opset >= 18 and len(set(sizes)) == 1
            outs = self.g.node("Split", [self.n(v)], name=name, n_out=len(sizes), axis=axis,
                               num_outputs=len(sizes))
        elif self.opset < 13:
            outs = self.g.node("Split", [self.n(v)], name=name, n_out=len(sizes), axis=axis, split=list(sizes))
        else:
            outs = self.g.node("Split", [self.n(v), self._ints(sizes)], name=name, n_out=len(sizes), axis=axis)
        ids = []
        for o, size in zip(outs, sizes):
            shape = list(self.s(v))
            shape[axis] = size
            ids.append(self._new(o, shape, dtype=self.dtypes[v]))
        return ids

    @_recorded
    def slice(self, v: int, axis: int, start: int, end: int, step: int = 1) -> int:
        shape = list(self.s(v))
        shape[axis] = len(range(*slice(start, end, step).indices(shape[axis])))
        ins = [self.n(v), self._ints([start]), self._ints([end]), self._ints([axis]), self._ints([step])]
        return self._node("Slice", ins, shape)

    @_recorded
    def reshape(self, v: int, target) -> int:
        """``target`` may hold 0 (copy the input dim) and one -1 (inferred)."""
        s = self.s(v)
        out = [s[i] if d == 0 else d for i, d in enumerate(target)]
        if -1 in out:
            rest = numel([d for d in out if d != -1])
            out[out.index(-1)] = numel(s) // rest
        return self._node("Reshape", [self.n(v), self._ints(target)], out)

    @_recorded
    def reshape_like(self, v: int, like: int) -> int:
        """Reshape(v, Shape(like)) (folded to a constant shape by normalize)."""
        shp = self.g.node("Shape", [self.n(like)], name=self._name("shape"))
        return self._node("Reshape", [self.n(v), shp], self.s(like))

    @_recorded
    def flatten(self, v: int, axis: int) -> int:
        s = self.s(v)
        return self._node("Flatten", [self.n(v)], [numel(s[:axis]), numel(s[axis:])], axis=axis)

    @_recorded
    def channel_shuffle(self, v: int, groups: int) -> int:
        """[N, g*c, *] -> [N, g, c, *] -> [N, c, g, *] -> [N, c*g, *]."""
        s = self.s(v)
        g, c = groups, s[1] // groups
        a = self.g.node("Reshape", [self.n(v), self._ints([s[0], g, c, *s[2:]])], name=self._name("reshape"))
        perm = [0, 2, 1] + list(range(3, len(s) + 1))
        b = self.g.node("Transpose", [a], name=self._name("transpose"), perm=perm)
        r = self._node("Reshape", [b, self._ints(list(s))], s, dtype=self.dtypes[v])
        if v in self.vocab:
            self.vocab[r] = self.vocab[v]
        return r

    @_recorded
    def transpose(self, v: int, perm) -> int:
        s = self.s(v)
        return self._node("Transpose", [self.n(v)], [s[p] for p in perm], perm=list(perm))

    @_recorded
    def squeeze(self, v: int, axes) -> int:
        s = self.s(v)
        drop = {a % len(s) for a in axes}
        out = [d for i, d in enumerate(s) if i not in drop]
        if self.opset < 13:
            return self._node("Squeeze", [self.n(v)], out, axes=list(axes))
        return self._node("Squeeze", [self.n(v), self._ints(axes)], out)

    @_recorded
    def unsqueeze(self, v: int, axes) -> int:
        s = list(self.s(v))
        r = len(s) + len(axes)
        ins = sorted(a % r for a in axes)
        out = []
        it = iter(s)
        for i in range(r):
            out.append(1 if i in ins else next(it))
        if self.opset < 13:
            return self._node("Unsqueeze", [self.n(v)], out, axes=list(axes))
        return self._node("Unsqueeze", [self.n(v), self._ints(axes)], out)

    @_recorded
    def tile(self, v: int, reps) -> int:
        s = self.s(v)
        return self._node("Tile", [self.n(v), self._ints(reps)], [d * r for d, r in zip(s, reps)])

    @_recorded
    def expand(self, v: int, shape) -> int:
        return self._node("Expand", [self.n(v), self._ints(shape)], broadcast_shape(self.s(v), shape))

    @_recorded
    def gather(self, v: int, axis: int, indices) -> int:
        idx = np.array(indices, dtype=np.int64)
        s = list(self.s(v))
        a = axis % len(s)
        out = s[:a] + list(idx.shape) + s[a + 1:]
        return self._node("Gather", [self.n(v), self.g.const(self._name("idx"), idx)], out, axis=axis)

    @_recorded
    def depth_to_space(self, v: int, block: int, mode: str = "DCR") -> int:
        n, c, h, w = self.s(v)
        return self._node("DepthToSpace", [self.n(v)], [n, c // (block * block), h * block, w * block],
                          blocksize=block, mode=mode)

    @_recorded
    def space_to_depth(self, v: int, block: int) -> int:
        n, c, h, w = self.s(v)
        return self._node("SpaceToDepth", [self.n(v)], [n, c * block * block, h // block, w // block],
                          blocksize=block)

    @_recorded
    def cumsum(self, v: int, axis: int, exclusive: int = 0, reverse: int = 0) -> int:
        return self._node("CumSum", [self.n(v), self._scalar_i(axis)], self.s(v), exclusive=exclusive,
                          reverse=reverse)

    @_recorded
    def trilu(self, v: int, upper: int = 1, k: int = 0) -> int:
        return self._node("Trilu", [self.n(v), self._scalar_i(k)], self.s(v), upper=upper)

    # -- reductions, pads, pools ----------------------------------------------------------
    @_recorded
    def reduce(self, v: int, op: str, axes, keepdims: int = 1) -> int:
        """``axes`` None: all axes (the attribute/input left out)."""
        s = self.s(v)
        red = set(range(len(s))) if axes is None else {a % len(s) for a in axes}
        out = [1 if i in red else d for i, d in enumerate(s)] if keepdims else \
            [d for i, d in enumerate(s) if i not in red]
        as_input = self.opset >= 18 or (op == "ReduceSum" and self.opset >= 13)
        if axes is None:
            return self._node(op, [self.n(v)], out, keepdims=keepdims)
        if as_input:
            return self._node(op, [self.n(v), self._ints(axes)], out, keepdims=keepdims)
        return self._node(op, [self.n(v)], out, keepdims=keepdims, axes=list(axes))

    @_recorded
    def pad(self, v: int, pads, mode: str = "constant", axes=None, value: float | None = None) -> int:
        """``pads``: [begins..., ends...] for ``axes`` (all axes when None; opset >= 18)."""
        s = list(self.s(v))
        axes_l = list(range(len(s))) if axes is None else [a % len(s) for a in axes]
        k = len(axes_l)
        for i, a in enumerate(axes_l):
            s[a] += pads[i] + pads[k + i]
        ins = [self.n(v), self._ints(pads)]
        if value is not None or axes is not None:
            ins.append(self._scalar_f(value) if value is not None else "")
        if axes is not None:
            ins.append(self._ints(axes))
        return self._node("Pad", ins, s, mode=mode)

    @_recorded
    def pool(self, v: int, op: str, k: int, stride: int = 1, pads=None, ceil: int = 0) -> int:
        s = self.s(v)
        nd = len(s) - 2
        pads = list(pads) if pads is not None else [0] * (2 * nd)
        spatial = []
        for i in range(nd):
            span = s[2 + i] + pads[i] + pads[nd + i] - k
            o = (-(-span // stride) if ceil else span // stride) + 1
            if ceil and (o - 1) * stride >= s[2 + i] + pads[i]:
                o -= 1
            spatial.append(o)
        attrs = dict(kernel_shape=[k] * nd, strides=[stride] * nd, pads=pads)
        if ceil:
            attrs["ceil_mode"] = 1
        if op == "LpPool":
            attrs["p"] = 2
        return self._node(op, [self.n(v)], list(s[:2]) + spatial, **attrs)

    @_recorded
    def global_pool(self, v: int, op: str) -> int:
        s = self.s(v)
        return self._node(op, [self.n(v)], list(s[:2]) + [1] * (len(s) - 2))

    @_recorded
    def resize(self, v: int, scales) -> int:
        s = self.s(v)
        out = [int(math.floor(d * sc)) for d, sc in zip(s, scales)]
        sc = self.g.floats(self._name("scales"), list(scales))
        roi = "" if self.opset >= 13 else self.g.floats(self._name("roi"), np.zeros([0], np.float32))
        return self._node("Resize", [self.n(v), roi, sc], out, mode="nearest")

    # -- indexing ops --------------------------------------------------------------------------
    @_recorded
    def topk(self, v: int, axis: int, k: int, largest: int = 1, indices: bool = False):
        """TopK values (sorted); with ``indices`` also the Indices output (returns both ids)."""
        s = list(self.s(v))
        a = axis % len(s)
        out = s[:a] + [k] + s[a + 1:]
        name = self._name("topk")
        vals, idx = self.g.node("TopK", [self.n(v), self._ints([k])], name=name, n_out=2, axis=axis,
                                largest=largest, sorted=1)
        r = self._new(vals, out)
        if not indices:
            return r
        i = self._new(idx, out, dtype=INT64)
        self.vocab[i] = s[a]
        return [r, i]

    @_recorded
    def gather_elements(self, v: int, axis: int, indices) -> int:
        idx = np.array(indices, dtype=np.int64)
        return self._node("GatherElements", [self.n(v), self.g.const(self._name("idx"), idx)], idx.shape,
                          axis=axis)

    @_recorded
    def where_const(self, v: int, cond_shape, weight_shape) -> int:
        """Where(C, v, W) with a constant boolean C and a weight W (both broadcast)."""
        cond = self.g.const(self._name("cond"), self.g.rng.random(list(cond_shape)) < 0.5)
        w = self._w(weight_shape)
        return self._node("Where", [cond, self.n(v), w], broadcast_shape(self.s(v), cond_shape, weight_shape),
                          dtype=FLOAT)

    @_recorded
    def einsum2(self, a: int, b: int, equation: str, shape) -> int:
        """Einsum of two values (the caller gives the output shape)."""
        return self._node("Einsum", [self.n(a), self.n(b)], shape, equation=equation)


def _matmul_shape(sa, sb):
    if len(sa) == 1 and len(sb) == 1:
        return []
    if len(sa) == 1:
        return list(sb[:-2]) + [sb[-1]]
    if len(sb) == 1:
        return list(sa[:-1])
    batch = broadcast_shape(sa[:-2], sb[:-2])
    return list(batch) + [sa[-2], sb[-1]]


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------
def validate(f: FuzzGraph) -> onnx.ModelProto:
    """The model, after checking it is valid ONNX that onnxruntime runs with the
    tracked shapes for every value; raises GeneratorBug otherwise."""
    model = f.build()
    try:
        onnx.checker.check_model(model, full_check=True)
        probe = f.build(all_values=True)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=CPU)
        got = sess.run(None, random_feeds(probe))
    except Exception as e:  # noqa: BLE001
        raise GeneratorBug(f"invalid graph ({type(e).__name__}: {e})\n{f.code()}") from e
    for o, arr in zip(sess.get_outputs(), got):
        v = f.names.index(o.name)
        if tuple(arr.shape) != f.shapes[v]:
            raise GeneratorBug(f"value v{v} '{o.name}': tracked {f.shapes[v]}, onnxruntime {arr.shape}\n{f.code()}")
    return model


# ----------------------------------------------------------------------------------
# the strategy
# ----------------------------------------------------------------------------------
def _pick(draw, f: FuzzGraph, ids) -> int:
    """A value id; shrinks towards the most recent one (chains)."""
    ids = list(ids)
    back = draw(st.integers(0, len(ids) - 1))
    return ids[len(ids) - 1 - back]


def _axis(draw, rank: int, neg: bool = True) -> int:
    a = draw(st.integers(0, rank - 1))
    if neg and draw(st.booleans()):
        a -= rank
    return a


def _subset(draw, items, k: int) -> list:
    """k distinct items, in a drawn order (never rejected, unlike unique lists)."""
    return list(draw(st.permutations(list(items))))[:k]


def _dim(draw, lo=1, hi=8) -> int:
    return draw(st.integers(lo, hi))


def _weight_shape(draw, shape, strong: bool = False) -> list[int]:
    """A shape that broadcasts onto ``shape``: a suffix of its axes, some set to 1.
    ``strong``: at least one axis of size > 1 is kept whole (when there is one)."""
    r = len(shape)
    keep = draw(st.integers(0, r))
    out = []
    for d in shape[r - keep:]:
        out.append(d if draw(st.integers(0, 2)) else 1)
    if strong and all(d == 1 for d in out):
        big = [i for i, d in enumerate(shape) if d > 1]
        if big:
            i = draw(st.sampled_from(big))
            out = [1] * (r - i - 1)
            out = [shape[i]] + out
    return out


# Each op: (name, applicable(f, shape) -> bool, apply(draw, f, v) -> None).
# Drawers may still give up (return without adding anything) when the drawn
# parameters would break the size limits.
def _ok_rank(lo, hi=8):
    return lambda f, s: lo <= len(s) <= hi


def _d_unary(draw, f, v):
    ops = [op for op, since in UNARY.items() if since <= f.opset]
    f.unary(v, draw(st.sampled_from(ops)))


def _d_clip(draw, f, v):
    lo = draw(st.sampled_from([None, -0.5, 0.0]))
    hi = draw(st.sampled_from([None, 0.5, 1.0]))
    f.clip(v, lo, hi)


def _d_misc_unary(draw, f, v):
    if draw(st.booleans()):
        f.dropout(v)
    else:
        f.cast(v)


def _d_softmax(draw, f, v):
    f.softmax(v, _axis(draw, len(f.s(v))), log=draw(st.booleans()))


def _partners(f, v, pred):
    return [u for u in range(len(f.shapes)) if f.dtypes[u] == f.dtypes[v] and pred(f.s(v), f.s(u))]


def _bcast_ok(a, b):
    out = broadcast_shape(a, b)
    return out is not None and fits(out)


def _d_binary(draw, f, v):
    cands = _partners(f, v, _bcast_ok)
    if not cands:
        return
    u = _pick(draw, f, cands)
    kind = draw(st.sampled_from(["binary", "binary", "where", "div"]))
    if kind == "binary":
        f.binary(v, u, draw(st.sampled_from(BINARY)))
    elif kind == "where":
        f.where_max(v, u, flip=draw(st.booleans()))
    else:
        f.safe_div(v, u)


def _d_variadic(draw, f, v):
    same = _partners(f, v, _bcast_ok)
    if not same:
        return
    k = draw(st.integers(2, 3))
    others = [_pick(draw, f, same) for _ in range(k - 1)]
    if broadcast_shape(*[f.s(x) for x in [v] + others]) is None:
        return
    f.variadic([v] + others, draw(st.sampled_from(VARIADIC)))


def _d_weight(draw, f, v, strong: bool = False):
    s = f.s(v)
    op = draw(st.sampled_from(WEIGHT_BINARY))
    wshape = _weight_shape(draw, s, strong)
    # sometimes a weight with more axes or bigger than v: v broadcasts onto it
    if draw(st.integers(0, 4)) == 0:
        extra = [draw(st.integers(1, 4))]
        wshape = extra + ([1] * len(s) if draw(st.booleans()) else list(s))
        wshape = wshape[-(len(s) + 1):]
    out = broadcast_shape(s, wshape)
    if out is None or not fits(out):
        return
    f.with_weight(v, op, wshape, weight_first=draw(st.booleans()))


def _d_pow(draw, f, v):
    f.pow(v, _weight_shape(draw, f.s(v), strong=True))


def _d_pixel_shuffle(draw, f, v):
    """ESPCN/pixel shuffle: a conv to b*b*C' channels, then DepthToSpace (or the reverse:
    SpaceToDepth, then a conv)."""
    n, c, h, w = f.s(v)
    b = draw(st.sampled_from([2, 3]))
    if draw(st.booleans()):
        cp = draw(st.integers(1, 3))
        if fits([n, cp * b * b, h, w]) and fits([n, cp, h * b, w * b]):
            y = f.conv(v, cp * b * b, k=1)
            f.depth_to_space(y, b, draw(st.sampled_from(["DCR", "CRD"])))
    elif h % b == 0 and w % b == 0:
        y = f.space_to_depth(v, b)
        group = draw(st.sampled_from([1, b * b]))
        f.conv(y, group * draw(st.integers(1, max(1, 8 // group))), k=1, group=group)


def _d_prelu(draw, f, v, strong: bool = False):
    s = f.s(v)
    f.prelu(v, _weight_shape(draw, s, strong))


def _d_batchnorm(draw, f, v):
    f.batchnorm(v)


def _d_instancenorm(draw, f, v):
    f.instancenorm(v)


def _d_layernorm(draw, f, v):
    r = len(f.s(v))
    f.layernorm(v, _axis(draw, r), bias=draw(st.booleans()))


def _d_lrn(draw, f, v):
    f.lrn(v)


def _d_conv(draw, f, v):
    s = f.s(v)
    nd = len(s) - 2
    c = s[1]
    group = draw(st.sampled_from(divisors(c)))
    if group == c and draw(st.booleans()):
        cout = c * draw(st.integers(1, 2))  # depthwise
    else:
        cout = group * draw(st.integers(1, max(1, 12 // group)))
    k = draw(st.sampled_from([1, 1, 2, 3]))
    stride = draw(st.sampled_from([1, 1, 2]))
    dilation = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
    pads = [draw(st.integers(0, (k - 1) * dilation)) for _ in range(2 * nd)] if k > 1 else None
    out = f.shapes[v][2:]
    span = [out[i] + (pads[i] + pads[nd + i] if pads else 0) - dilation * (k - 1) for i in range(nd)]
    if min(span) < 1 or cout > MAX_DIM:
        return
    spatial = [(sp - 1) // stride + 1 for sp in span]
    if not fits([s[0], cout] + spatial):
        return
    if draw(st.integers(0, 4)) == 0:  # auto_pad
        mode = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER", "VALID"]))
        if mode == "VALID" and min(out) < dilation * (k - 1) + 1:
            return
        if mode != "VALID":
            dilation = 1  # onnxruntime: no dilation with SAME_*
        f.conv(v, cout, k=k, group=group, stride=stride, dilation=dilation, bias=draw(st.booleans()),
               auto_pad=mode)
        return
    f.conv(v, cout, k=k, group=group, stride=stride, dilation=dilation, pads=pads, bias=draw(st.booleans()))


def _d_conv_transpose(draw, f, v):
    s = f.s(v)
    c = s[1]
    group = draw(st.sampled_from(divisors(c)))
    cout = group * draw(st.integers(1, max(1, 8 // group)))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from([1, 2]))
    out = [s[0], cout] + [(d - 1) * stride + k for d in s[2:]]
    if not fits(out):
        return
    f.conv_transpose(v, cout, k=k, group=group, stride=stride, bias=draw(st.booleans()))


def _d_gemm(draw, f, v):
    s = f.s(v)
    ta, tb = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    n = _dim(draw, 1, 12)
    m = s[1] if ta else s[0]
    bias = draw(st.sampled_from([None, "n", "1n", "mn", "1", "m1"]))
    bshape = {None: None, "n": [n], "1n": [1, n], "mn": [m, n], "1": [1], "m1": [m, 1]}[bias]
    f.gemm(v, n, trans_a=ta, trans_b=tb, bias_shape=bshape)


def _d_matmul_w(draw, f, v):
    s = f.s(v)
    n = _dim(draw, 1, 12)
    left = len(s) >= 2 and draw(st.integers(0, 3)) == 0
    batch = []
    if len(s) >= 3 and draw(st.booleans()):
        b = s[-3]
        batch = [draw(st.sampled_from([b, 1]))]
    if not left and draw(st.integers(0, 5)) == 0:
        f.matmul_w(v, 0)  # vector weight
        return
    if left:
        out = list(broadcast_shape(s[:-2], batch)) + [n, s[-1]]
    elif len(s) == 1:
        out = batch + [n]
    else:
        out = list(broadcast_shape(s[:-2], batch)) + [s[-2], n]
    if not fits(out):
        return
    f.matmul_w(v, n, batch=batch, left=left)


def _mm_ok(a, b):
    if len(a) < 1 or len(b) < 1:
        return False
    ka = a[-1]
    kb = b[-2] if len(b) >= 2 else b[0]
    if ka != kb:
        return False
    if len(a) >= 2 and len(b) >= 2 and broadcast_shape(a[:-2], b[:-2]) is None:
        return False
    out = _matmul_shape(a, b)
    return fits(out)


def _d_matmul(draw, f, v):
    cands = _partners(f, v, _mm_ok)
    if cands:
        f.matmul(v, _pick(draw, f, cands))
    elif len(f.s(v)) >= 2:
        s = f.s(v)
        outer = draw(st.booleans())
        out = list(s[:-1]) + [s[-2]] if outer else list(s[:-2]) + [s[-1], s[-1]]
        if fits(out):
            f.gram(v, outer)


def _d_einsum(draw, f, v):
    n = _dim(draw, 1, 8)
    if fits(list(f.s(v)[:-1]) + [n]):
        f.einsum_w(v, n)


def _concat_ok(axis):
    def ok(a, b):
        return len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != axis)
    return ok


def _d_concat(draw, f, v):
    s = f.s(v)
    axis = draw(st.integers(0, len(s) - 1))
    if draw(st.integers(0, 3)) == 0:
        size = _dim(draw, 1, 6)
        shape = list(s)
        shape[axis] += size
        if fits(shape):
            f.concat_weight(v, axis, size, first=draw(st.booleans()))
        return
    cands = _partners(f, v, _concat_ok(axis))
    k = draw(st.integers(1, 2))
    others = [_pick(draw, f, cands) for _ in range(k)]
    vs = [v] + others
    if draw(st.booleans()):
        vs = vs[::-1]
    shape = list(s)
    shape[axis] = sum(f.s(x)[axis] for x in vs)
    if fits(shape):
        f.concat(vs, axis - len(s) if draw(st.booleans()) else axis)


def _d_split(draw, f, v):
    s = f.s(v)
    axes = [i for i, d in enumerate(s) if d >= 2]
    axis = draw(st.sampled_from(axes))
    d = s[axis]
    k = draw(st.integers(2, min(3, d)))
    cuts = sorted(_subset(draw, range(1, d), k - 1))
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [d])]
    if f.opset >= 18 and d % k == 0 and draw(st.booleans()):
        f.split(v, axis, [d // k] * k, num_outputs=True)
        return
    f.split(v, axis, sizes)


def _d_slice(draw, f, v):
    s = f.s(v)
    axes = [i for i, d in enumerate(s) if d >= 2]
    axis = draw(st.sampled_from(axes))
    d = s[axis]
    step = draw(st.sampled_from([1, 1, 1, 2, -1]))
    if step > 0:
        lo = draw(st.integers(0, d - 1))
        hi = draw(st.integers(lo + 1, d))
        start = lo - d if draw(st.booleans()) else lo
        if hi < d:
            end = hi - d if draw(st.booleans()) else hi
        else:
            end = 2**62 if draw(st.booleans()) else d
    else:  # reversed: to the beginning (exporters' sentinels), or stopping before index 0
        start = draw(st.integers(1, d - 1)) - (d if draw(st.booleans()) else 0)
        end = draw(st.sampled_from([-(2**63), -(2**63 - 1), -(2**62), 0]))
    if len(range(*slice(start, end, step).indices(d))) < 1:
        return
    f.slice(v, axis - len(s) if draw(st.integers(0, 3)) == 0 else axis, start, end, step)


def _factorizations(n: int, parts: int) -> list[list[int]]:
    if parts == 1:
        return [[n]] if n <= 4 * MAX_DIM else []
    out = []
    for d in divisors(n):
        if d <= MAX_DIM:
            out += [[d] + rest for rest in _factorizations(n // d, parts - 1)]
    return out


def _reshape_kinds(s) -> list[str]:
    kinds = ["any", "like", "flatten"]
    if len(s) >= 2:
        kinds += ["merge", "merge"]
        if len(divisors(s[1])) > 2:
            kinds += ["shuffle"]
    if any(len(divisors(d)) > 2 for d in s):
        kinds += ["split", "split"]
    return kinds


def _d_reshape(draw, f, v):
    s = list(f.s(v))
    kind = draw(st.sampled_from(_reshape_kinds(s)))
    target = None
    if kind == "merge":
        i = draw(st.integers(0, len(s) - 2))
        target = s[:i] + [s[i] * s[i + 1]] + s[i + 2:]
    elif kind == "split":
        axes = [i for i, d in enumerate(s) if len(divisors(d)) > 2]
        i = draw(st.sampled_from(axes))
        a = draw(st.sampled_from(divisors(s[i])[1:-1]))
        target = s[:i] + [a, s[i] // a] + s[i + 1:]
    elif kind == "any":
        rank = draw(st.integers(1, 5))
        options = _factorizations(numel(s), rank)
        if options:
            target = draw(st.sampled_from(options))
    elif kind == "like":
        cands = [u for u in range(len(f.shapes)) if numel(f.s(u)) == numel(s) and f.s(u) != tuple(s)]
        if cands:
            f.reshape_like(v, _pick(draw, f, cands))
        return
    elif kind == "flatten":
        f.flatten(v, draw(st.integers(0, len(s))))
        return
    elif kind == "shuffle":
        f.channel_shuffle(v, draw(st.sampled_from(divisors(s[1])[1:-1])))
        return
    if target is None or not fits(target):
        return
    spec = list(target)
    if draw(st.booleans()):  # 0: copy the input dim (same position, same size)
        spec = [0 if i < len(s) and d == s[i] and draw(st.booleans()) else d for i, d in enumerate(spec)]
    if draw(st.booleans()):
        spec[draw(st.integers(0, len(spec) - 1))] = -1
    if spec.count(-1) == 1 and numel([d for d in spec if d not in (-1, 0)]) == 0:
        return
    f.reshape(v, spec)


def _d_flatten(draw, f, v):
    r = len(f.s(v))
    f.flatten(v, draw(st.integers(-r, r)))


def _d_transpose(draw, f, v):
    r = len(f.s(v))
    f.transpose(v, draw(st.permutations(list(range(r)))))


def _d_squeeze(draw, f, v):
    s = f.s(v)
    ones = [i for i, d in enumerate(s) if d == 1]
    if ones and draw(st.booleans()):
        axes = _subset(draw, ones, draw(st.integers(1, len(ones))))
        f.squeeze(v, [a - len(s) if draw(st.booleans()) else a for a in axes])
    elif len(s) < 5:
        r = len(s) + 1
        f.unsqueeze(v, [draw(st.integers(-r, r - 1))])


def _d_reduce(draw, f, v):
    s = f.s(v)
    op = draw(st.sampled_from(REDUCE))
    keep = draw(st.integers(0, 1))
    if draw(st.integers(0, 5)) == 0:
        axes = None
    else:
        axes = _subset(draw, range(len(s)), draw(st.integers(1, len(s))))
        axes = [a - len(s) if draw(st.booleans()) else a for a in axes]
    f.reduce(v, op, axes, keep)


def _d_pad(draw, f, v):
    s = f.s(v)
    mode = draw(st.sampled_from(["constant", "constant", "reflect", "edge"]))
    r = len(s)
    axes = list(range(r))
    use_axes = f.opset >= 18 and draw(st.booleans())
    if use_axes:
        axes = _subset(draw, range(r), draw(st.integers(1, r)))
    pads = []
    for _ in range(2):
        for a in axes:
            limit = s[a] - 1 if mode == "reflect" else 2
            p = draw(st.sampled_from([0, 0, 1, 2])) if limit > 0 else 0
            pads.append(min(p, limit))
    if mode == "constant" and draw(st.integers(0, 4)) == 0:  # a crop: negative pad
        i = draw(st.integers(0, len(pads) - 1))
        a = axes[i % len(axes)]
        if s[a] + pads[i % len(axes)] + pads[len(axes) + i % len(axes)] >= 2:
            pads[i] -= 1
    out = list(s)
    for i, a in enumerate(axes):
        out[a] += pads[i] + pads[len(axes) + i]
    if not fits(out):
        return
    value = draw(st.sampled_from([None, 0.5])) if mode == "constant" else None
    f.pad(v, pads, mode, axes=axes if use_axes else None, value=value)


def _d_pool(draw, f, v):
    s = f.s(v)
    if draw(st.integers(0, 2)) == 0:
        f.global_pool(v, draw(st.sampled_from(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])))
        return
    nd = len(s) - 2
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "LpPool"]))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    pads = [draw(st.integers(0, k - 1)) for _ in range(2 * nd)]
    ceil = draw(st.integers(0, 1)) if op != "LpPool" else 0
    if any(s[2 + i] + pads[i] + pads[nd + i] < k for i in range(nd)):
        return
    for i in range(nd):  # ceil_mode only where no window would start in the end padding
        span = s[2 + i] + pads[i] + pads[nd + i] - k  # (onnx and onnxruntime disagree there)
        if ceil and (-(-span // stride)) * stride >= s[2 + i] + pads[i]:
            ceil = 0
    f.pool(v, op, k, stride=stride, pads=pads, ceil=ceil)


def _d_d2s(draw, f, v):
    n, c, h, w = f.s(v)
    if draw(st.booleans()):
        blocks = [b for b in (2, 3) if c % (b * b) == 0 and fits([n, c // (b * b), h * b, w * b])]
        if blocks:
            f.depth_to_space(v, draw(st.sampled_from(blocks)), draw(st.sampled_from(["DCR", "CRD"])))
    else:
        blocks = [b for b in (2, 3) if h % b == 0 and w % b == 0 and fits([n, c * b * b, h // b, w // b])]
        if blocks:
            f.space_to_depth(v, draw(st.sampled_from(blocks)))


def _d_tile(draw, f, v):
    s = f.s(v)
    reps = [draw(st.sampled_from([1, 1, 2])) for _ in s]
    if fits([d * r for d, r in zip(s, reps)]):
        f.tile(v, reps)


def _d_expand(draw, f, v):
    s = f.s(v)
    target = [draw(st.integers(1, 4)) if d == 1 else (d if draw(st.integers(0, 3)) else 1) for d in s]
    if draw(st.booleans()):
        target = [draw(st.integers(1, 3))] + target
    out = broadcast_shape(s, target)
    if out is not None and fits(out):
        f.expand(v, target)


def _d_gather(draw, f, v):
    s = f.s(v)
    axis = draw(st.integers(0, len(s) - 1))
    d = s[axis]
    shape = draw(st.sampled_from([(), (1,), (2,), (3,), (2, 2)]))
    idx = np.array(draw(st.lists(st.integers(-d, d - 1), min_size=numel(shape), max_size=numel(shape))))
    idx = idx.reshape(shape).tolist()
    out = list(s[:axis]) + list(shape) + list(s[axis + 1:])
    if fits(out) and len(out) <= 5:
        f.gather(v, axis - len(s) if draw(st.booleans()) else axis, idx)


def _d_cumsum(draw, f, v):
    f.cumsum(v, _axis(draw, len(f.s(v))), draw(st.integers(0, 1)), draw(st.integers(0, 1)))


def _d_trilu(draw, f, v):
    f.trilu(v, draw(st.integers(0, 1)), draw(st.integers(-1, 1)))


def _d_resize(draw, f, v):
    s = f.s(v)
    scales = [1.0, 1.0] + [draw(st.sampled_from([1.0, 2.0])) for _ in s[2:]]
    out = [int(d * sc) for d, sc in zip(s, scales)]
    if fits(out):
        f.resize(v, scales)


def _spatial(f, s):
    return len(s) in (3, 4)


# -- motifs: small subgraphs of real architectures, made of the calls above -------------
def _d_attention(draw, f, v):
    """Multi-head self-attention on [N, T, F]: projections, heads split by Reshape and
    Transpose, q k^T, Softmax, weighted sum, heads merged, output projection."""
    n, t, _ = f.s(v)
    h, d = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    q, k, val = (f.matmul_w(v, h * d) for _ in range(3))
    heads = []
    for x in (q, k, val):
        x = f.reshape(x, [0, 0, h, d] if draw(st.booleans()) else [n, t, h, -1])
        heads.append(f.transpose(x, [0, 2, 1, 3]))
    q, k, val = heads
    kt = f.transpose(k, [0, 1, 3, 2])
    scores = f.softmax(f.matmul(q, kt), -1)
    y = f.transpose(f.matmul(scores, val), [0, 2, 1, 3])
    y = f.reshape(y, [n, t, h * d] if draw(st.booleans()) else [0, 0, -1])
    if draw(st.booleans()):
        y = f.binary(y, v, "Add") if f.s(v)[-1] == h * d else y
    f.matmul_w(y, draw(st.integers(1, 8)))


def _d_shuffle_unit(draw, f, v):
    """ShuffleNet: split channels, a conv on one part, concat, channel shuffle."""
    c = f.s(v)[1]
    cut = draw(st.integers(1, c - 1))
    a, b = f.split(v, 1, [cut, c - cut])
    b = f.conv(b, draw(st.integers(1, 8)), k=1, group=1)
    if draw(st.booleans()):
        b = f.unary(b, "Relu")
    y = f.concat([a, b] if draw(st.booleans()) else [b, a], 1)
    groups = divisors(f.s(y)[1])[1:-1]
    if groups:
        f.channel_shuffle(y, draw(st.sampled_from(groups)))


def _d_cat_group(draw, f, v):
    """Two branches concatenated on channels, then a grouped conv whose group
    boundaries may or may not fall on the concat boundary."""
    c = f.s(v)[1]
    a = f.conv(v, draw(st.integers(1, 6)), k=1)
    b = f.conv(v, draw(st.integers(1, 6)), k=1) if draw(st.booleans()) else v
    y = f.concat([a, b], 1)
    total = f.s(y)[1]
    group = draw(st.sampled_from(divisors(total)))
    cout = group * draw(st.integers(1, max(1, 8 // group)))
    if c and fits([f.s(y)[0], cout] + list(f.s(y)[2:])):
        f.conv(y, cout, k=1, group=group)


def _d_cat_regroup(draw, f, v):
    """Concat along an axis, then split that axis into (outer, inner) by a Reshape:
    Cat against Kron (block sizes a multiple of the inner size, or not)."""
    s = list(f.s(v))
    axis = draw(st.integers(0, len(s) - 1))
    extra = _dim(draw, 1, 6)
    y = f.concat_weight(v, axis, extra, first=draw(st.booleans())) if draw(st.booleans()) else None
    if y is None:
        shape = list(s)
        shape[axis] = extra
        other = [u for u in range(len(f.shapes)) if list(f.s(u)) == shape and f.is_float(u)]
        y = f.concat([v, other[-1]], axis) if other else f.concat([v, v], axis)
    size = f.s(y)[axis]
    inner = [d for d in divisors(size) if 1 < d < size]
    if not inner:
        return
    d = draw(st.sampled_from(inner))
    ys = list(f.s(y))
    z = f.reshape(y, ys[:axis] + [size // d, d] + ys[axis + 1:])
    if draw(st.booleans()):
        perm = list(range(len(ys) + 1))
        perm[axis], perm[axis + 1] = perm[axis + 1], perm[axis]
        z = f.transpose(z, perm)
        z = f.reshape(z, ys)
    _apply_anchor(draw, f, z)


def _apply_anchor(draw, f, v):
    if f.dtypes[v] == BOOL:
        return
    options = [o for o in (_anchor_table() if f.is_float(v) else INT_OPS[:1]) if o[1](f, f.s(v))]
    if options:
        _, _, apply = draw(st.sampled_from(options))
        apply(draw, f, v)


@functools.lru_cache(maxsize=1)
def _anchor_table():
    return [(name, ok, functools.partial(apply, strong=True) if name in ("weight", "prelu") else apply)
            for name, _, ok, apply in _OPS if name in ANCHORS]


def _d_shared(draw, f, v):
    """A weight used a second time (tied weights): MatMul with it, Gemm with it transposed."""
    k = f.s(v)[-1]
    cands = [(n, t) for n, shp in f.weights.items() if len(shp) == 2 for t in (0, 1) if shp[t] == k]
    if not cands:
        return
    name, t = draw(st.sampled_from(cands))
    if t == 1 and len(f.s(v)) != 2:
        return
    f.shared_matmul(v, name, trans=t)


# -- integer values (token ids, ArgMax results) ------------------------------------------
def _d_embed(draw, f, v):
    dim = _dim(draw, 1, 8)
    if fits(list(f.s(v)) + [dim]):
        f.embed(v, dim)


def _d_int_concat(draw, f, v):
    s = f.s(v)
    axis = draw(st.integers(0, len(s) - 1))
    cands = _partners(f, v, _concat_ok(axis))
    vs = [v, _pick(draw, f, cands)]
    shape = list(s)
    shape[axis] = sum(f.s(x)[axis] for x in vs)
    if fits(shape):
        f.concat(vs, axis)


def _d_topk(draw, f, v):
    s = f.s(v)
    axis = _axis(draw, len(s))
    k = draw(st.integers(1, s[axis]))
    f.topk(v, axis, k, largest=draw(st.integers(0, 1)), indices=_often(draw, 1, 3))


def _d_gather_elements(draw, f, v):
    s = list(f.s(v))
    axis = draw(st.integers(0, len(s) - 1))
    shape = [draw(st.integers(1, d)) for d in s]
    shape[axis] = draw(st.integers(1, 4))
    n = numel(shape)
    idx = np.array(draw(st.lists(st.integers(-s[axis], s[axis] - 1), min_size=n, max_size=n))).reshape(shape)
    f.gather_elements(v, axis - len(s) if draw(st.booleans()) else axis, idx.tolist())


def _d_where_const(draw, f, v):
    s = f.s(v)
    cond, w = _weight_shape(draw, s, strong=True), _weight_shape(draw, s)
    out = broadcast_shape(s, cond, w)
    if out is not None and fits(out):
        f.where_const(v, cond, w)


def _d_einsum2(draw, f, v):
    """Einsum of v with a partner: a @ b^T on the last axes, or a dot product along the last axis."""
    s = f.s(v)
    kind = draw(st.sampled_from(["abt", "dot"]))
    if kind == "abt" and len(s) >= 2:
        cands = _partners(f, v, lambda a, b: len(a) == len(b) and a[:-2] == b[:-2] and a[-1] == b[-1])
        u = _pick(draw, f, cands)
        letters = "bcd"[: len(s) - 2]
        out = list(s[:-1]) + [f.s(u)[-2]]
        if fits(out):
            f.einsum2(v, u, f"{letters}mk,{letters}nk->{letters}mn", out)
    else:
        cands = _partners(f, v, lambda a, b: a == b)
        u = _pick(draw, f, cands)
        f.einsum2(v, u, "...k,...k->...", list(s[:-1]))


def _d_gather_act(draw, f, u):
    """Integer value u indexes an axis of a float value (long enough for u's range)."""
    cands = [(v, a) for v in range(len(f.shapes)) if f.is_float(v) for a, d in enumerate(f.s(v))
             if d >= f.vocab.get(u, 10**9)]
    if not cands:
        return
    v, a = cands[len(cands) - 1 - draw(st.integers(0, len(cands) - 1))]
    s = f.s(v)
    out = list(s[:a]) + list(f.s(u)) + list(s[a + 1:])
    if fits(out) and len(out) <= 5:
        f.gather_act(v, u, a - len(s) if draw(st.booleans()) else a)


def _d_argmax(draw, f, v):
    s = f.s(v)
    f.argmax(v, _axis(draw, len(s)), draw(st.integers(0, 1)), draw(st.sampled_from(["ArgMax", "ArgMin"])))


INT_OPS = [  # what the body does with an integer value (the first entry is its anchor)
    ("embed", lambda f, s: True, _d_embed),
    ("embed", lambda f, s: True, _d_embed),
    ("embed", lambda f, s: True, _d_embed),
    ("reshape", _ok_rank(1), _d_reshape),
    ("transpose", _ok_rank(2), _d_transpose),
    ("slice", lambda f, s: any(d >= 2 for d in s), _d_slice),
    ("squeeze", _ok_rank(0), _d_squeeze),
    ("concat", _ok_rank(1), _d_int_concat),
    ("gather_act", lambda f, s: True, _d_gather_act),
]


_OPS = [  # (name, weight, applicable(f, shape), draw-and-apply(draw, f, v))
    # weighted ops anchor secret classes; shape ops are where layouts get interesting
    ("conv", 4, _spatial, _d_conv),
    ("weight", 3, _ok_rank(0), _d_weight),
    ("unary", 2, _ok_rank(0), _d_unary),
    ("matmul_w", 3, _ok_rank(1), _d_matmul_w),
    ("gemm", 1, _ok_rank(2, 2), _d_gemm),
    ("binary", 3, _ok_rank(0), _d_binary),
    ("concat", 3, _ok_rank(1), _d_concat),
    ("split", 3, lambda f, s: any(d >= 2 for d in s), _d_split),
    ("slice", 3, lambda f, s: any(d >= 2 for d in s), _d_slice),
    ("reshape", 4, _ok_rank(1), _d_reshape),
    ("transpose", 2, _ok_rank(2), _d_transpose),
    ("reduce", 2, _ok_rank(1), _d_reduce),
    ("softmax", 1, _ok_rank(1), _d_softmax),
    ("pad", 1, _ok_rank(1), _d_pad),
    ("pool", 2, _spatial, _d_pool),
    ("clip", 1, _ok_rank(0), _d_clip),
    ("misc_unary", 1, _ok_rank(0), _d_misc_unary),
    ("variadic", 1, _ok_rank(0), _d_variadic),
    ("prelu", 1, _ok_rank(1), _d_prelu),
    ("batchnorm", 1, _ok_rank(2), _d_batchnorm),
    ("instancenorm", 1, _ok_rank(3), _d_instancenorm),
    ("layernorm", 1, lambda f, s: f.opset >= 17 and len(s) >= 1, _d_layernorm),
    ("lrn", 1, _ok_rank(4, 4), _d_lrn),
    ("conv_transpose", 1, _spatial, _d_conv_transpose),
    ("matmul", 2, _ok_rank(1), _d_matmul),
    ("einsum", 1, lambda f, s: f.opset >= 12 and len(s) >= 1, _d_einsum),
    ("flatten", 1, _ok_rank(1), _d_flatten),
    ("squeeze", 1, _ok_rank(0), _d_squeeze),
    ("d2s", 1, _ok_rank(4, 4), _d_d2s),
    ("tile", 1, _ok_rank(1), _d_tile),
    ("expand", 1, _ok_rank(0), _d_expand),
    ("gather", 1, _ok_rank(1), _d_gather),
    ("cumsum", 1, _ok_rank(1), _d_cumsum),
    ("trilu", 1, lambda f, s: f.opset >= 14 and len(s) >= 2, _d_trilu),
    ("resize", 1, _spatial, _d_resize),
    ("attention", 1, lambda f, s: len(s) == 3, _d_attention),
    ("shuffle_unit", 1, lambda f, s: len(s) in (3, 4) and s[1] >= 2, _d_shuffle_unit),
    ("cat_group", 1, _spatial, _d_cat_group),
    ("cat_regroup", 2, _ok_rank(1), _d_cat_regroup),
    ("shared", 1, _ok_rank(1), _d_shared),
    ("argmax", 1, _ok_rank(1), _d_argmax),
    ("pow", 1, _ok_rank(0), _d_pow),
    ("pixel_shuffle", 1, _ok_rank(4, 4), _d_pixel_shuffle),
    ("topk", 1, _ok_rank(1), _d_topk),
    ("gather_elements", 1, _ok_rank(1), _d_gather_elements),
    ("where_const", 1, _ok_rank(1), _d_where_const),
    ("einsum2", 1, lambda f, s: f.opset >= 12 and len(s) >= 1, _d_einsum2),
]
OPS = [(name, ok, apply) for name, weight, ok, apply in _OPS for _ in range(weight)]
OP_NAMES = sorted({name for name, _, _ in OPS})


@st.composite
def input_shapes(draw):
    kind = draw(st.sampled_from(["nchw", "ncl", "ntf", "nf", "f"]))
    n = draw(st.integers(1, 2))
    if kind == "nchw":
        return [n, _dim(draw, 1, 8), _dim(draw, 1, 6), _dim(draw, 1, 6)]
    if kind == "ncl":
        return [n, _dim(draw, 1, 8), _dim(draw, 1, 8)]
    if kind == "ntf":
        return [n, _dim(draw, 1, 6), _dim(draw, 1, 12)]
    if kind == "nf":
        return [n, _dim(draw, 1, 12)]
    return [_dim(draw, 1, 12)]


ANCHORS = ("conv", "matmul_w", "gemm", "einsum", "weight", "prelu", "batchnorm", "instancenorm",
           "layernorm", "conv_transpose")


def _often(draw, yes: int = 4, no: int = 1) -> bool:
    return draw(st.sampled_from([True] * yes + [False] * no))


def _apply_one(draw, f, v, table) -> None:
    if f.dtypes[v] == BOOL:
        return
    if not f.is_float(v):
        table = INT_OPS
    options = [o for o in table if o[1](f, f.s(v))]
    if options:
        _, _, apply = draw(st.sampled_from(options))
        apply(draw, f, v)


def _meet(draw, f, v) -> None:
    """A second input, shaped to meet value v, and the op that combines them."""
    s = list(f.s(v))
    kind = draw(st.sampled_from(["binary", "concat", "matmul", "mask"] if s else ["binary"]))
    if kind == "mask":
        shape = [d if _often(draw, 3, 1) else 1 for d in s]
        if shape and draw(st.integers(0, 3)) == 0:
            shape = shape[1:]
        m = f.mask(shape or [1])
        f.where_mask(m, v, _weight_shape(draw, s))
        return
    if kind == "concat":
        axis = draw(st.integers(0, len(s) - 1))
        shape = list(s)
        shape[axis] = _dim(draw, 1, 6)
        out = list(s)
        out[axis] += shape[axis]
        if fits(out):
            x = f.input(shape)
            f.concat([x, v] if draw(st.booleans()) else [v, x], axis)
            return
        kind = "binary"
    if kind == "matmul":
        n = _dim(draw, 1, 8)
        left = len(s) >= 2 and draw(st.booleans())
        shape = [n, s[-2]] if left else ([s[-1], n] if len(s) >= 2 or draw(st.booleans()) else [s[-1]])
        a, b = (shape, s) if left else (s, shape)
        if fits(_matmul_shape(a, b)):
            x = f.input(shape)
            f.matmul(x, v) if left else f.matmul(v, x)
            return
        kind = "binary"
    shape = [d if _often(draw, 3, 1) else 1 for d in s]
    if shape and draw(st.integers(0, 3)) == 0:
        shape = shape[1:]
    x = f.input(shape or [1])
    how = draw(st.sampled_from(["binary", "binary", "where", "variadic"]))
    first, second = (x, v) if draw(st.booleans()) else (v, x)
    if how == "binary":
        f.binary(first, second, draw(st.sampled_from(BINARY)))
    elif how == "where":
        f.where_max(first, second, flip=draw(st.booleans()))
    else:
        f.variadic([first, second], draw(st.sampled_from(VARIADIC)))


@st.composite
def graphs(draw, max_steps: int = 6, ops=None, two_inputs: bool = True, first=("float",) * 4 + ("symbolic", "ids")):
    """A validated :class:`FuzzGraph`: 1-2 inputs, up to max_steps body steps, 1-2 outputs.

    Shape of a draw: an input, usually a weighted op on it (a secret class to carry),
    sometimes a second input that meets the first, a body of random ops on random
    earlier values (recent ones more likely), usually a weighted op at the end.
    ``ops``: restrict the body to these op names (see ``OP_NAMES``); ``first``: the kinds of
    the first input to draw from ("float", "symbolic": batch dim 'N', "ids": token ids)."""
    table = [o for o in OPS if ops is None or o[0] in ops]
    f = FuzzGraph(opset=draw(st.sampled_from(OPSETS)), seed=draw(st.integers(0, 3)),
                  const_nodes=_often(draw, 1, 5))
    first = draw(st.sampled_from(list(first)))
    if first == "ids":
        f.ids([_dim(draw, 1, 2), _dim(draw, 1, 6)][draw(st.integers(0, 1)):], vocab=_dim(draw, 3, 12))
    else:
        shape = draw(input_shapes())
        if first == "symbolic" and len(shape) >= 2:
            shape[0] = 2
        f.input(shape, symbolic=first == "symbolic" and len(shape) >= 2)
    if _often(draw):
        _apply_anchor(draw, f, 0)
    floats = [v for v in range(len(f.shapes)) if f.is_float(v)]
    if two_inputs and floats and _often(draw, 1, 3):
        _meet(draw, f, _pick(draw, f, floats))
    for _ in range(draw(st.integers(0, max_steps))):
        _apply_one(draw, f, _pick(draw, f, range(len(f.shapes))), table)
    if _often(draw):
        _apply_anchor(draw, f, len(f.shapes) - 1)
    made = [v for v in range(len(f.shapes)) if not f.is_input[v]]
    if not made:
        _apply_anchor(draw, f, len(f.shapes) - 1)
        if f.is_input[-1]:
            if f.is_float(len(f.shapes) - 1):
                _d_unary(draw, f, len(f.shapes) - 1)
            else:
                f.embed(len(f.shapes) - 1, 2)
        made = [len(f.shapes) - 1]
    f.output(made[-1])
    if len(made) > 1 and _often(draw, 1, 3):
        f.output(_pick(draw, f, made[:-1]))
    validate(f)
    return f
