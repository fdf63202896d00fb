"""Test harness: build tiny ONNX models, compile them, run the artifact, check what must hold.

``roundtrip(model, tmp_path)`` is the main entry point: it saves the model, compiles
it with ``eeonnx.compile`` (by default with the boundary at the model's inputs and
outputs: ``split="none", min_key_bits=0``; pass ``split="auto"`` for the client split),
runs the original and encode -> server -> decode on onnxruntime (CPU) with random
inputs, and asserts

- decoded outputs equal the original's (relative to the output's largest value),
- no server input is a plain float input, no server output is a plain output,
- without a split: encode/decode only apply the classes' group elements: a permutation
  (positions, or the values of token ids) is checked as "the same values, moved"; a class
  above the permutations (diagonal, linear, orthogonal, per-head: ``--transforms max``) as
  "x times its recorded element on plain indices, then permuted" (decode: the inverse),
  to 1e-5 of the largest value, the element first checked to lie in its group
  (:class:`GroupTruth`, :func:`assert_in_group`);
  with a split: every content tensor on the wire has the requested key bits,
- at least one server initializer differs byte-wise from the original, and every
  server initializer that stands for an original one (the manifest's ``server_names``)
  holds the same values (permuted) or, under a continuous class, gives the original back
  (to 1e-5 of its largest value) when its permutations and recorded group elements are
  undone (a norm gain moved into its consumers is applied to the original first),
- the server graph is the normalized model's graph (same nodes, op types, attributes),
  less the nodes a split moved to the client,
- the artifact contract: encode inputs are the model's inputs, decode outputs its
  outputs, and encode/server/decode line up by position and dtype.

It returns the :class:`eeonnx.compiler.pipeline.Compilation` for further asserts (``.spec()``,
``.pins()``, ``.classes``, ``.key_bits``), or a :class:`Roundtrip` with ``full=True``.
``compile_plain`` is ``eeonnx.compile`` with the same defaults.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

import eeonnx

CPU = ["CPUExecutionProvider"]
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL


# --------------------------------------------------------------------------
# model building
# --------------------------------------------------------------------------
class G:
    """A tiny graph builder on top of ``onnx.helper``.

    Weights are initializers with random values from a seeded generator, so a
    builder call is deterministic. ``build()`` fills in output shapes by ONNX
    shape inference (or one onnxruntime run when inference cannot tell).
    """

    def __init__(self, opset: int = 13, seed: int = 0, ir_version: int | None = None, check: bool = True):
        self.opset = opset
        self.check = check
        self.ir_version = ir_version
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = itertools.count()

    # -- values ------------------------------------------------------------
    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def w(self, name: str, shape, scale: float | None = None, offset: float = 0.0) -> str:
        """A random float32 weight (standard normal scaled by 1/sqrt(fan-in))."""
        shape = list(shape)
        if scale is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
            scale = 1.0 / np.sqrt(max(fan_in, 1))
        a = offset + scale * self.rng.standard_normal(shape)
        return self.const(name, a.astype(np.float32))

    def ints(self, name: str, values) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def floats(self, name: str, values) -> str:
        return self.const(name, np.array(values, dtype=np.float32))

    def input(self, name: str, shape, elem: int = FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem: int = FLOAT, shape=None) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    # -- nodes -------------------------------------------------------------
    def node(self, op: str, inputs, outputs=None, *, name: str | None = None, n_out: int = 1,
             domain: str = "", **attrs):
        """Add a node; returns its output name (or the list of names when n_out > 1)."""
        name = name or f"{op.lower()}{next(self._count)}"
        if outputs is None:
            outputs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        elif isinstance(outputs, str):
            outputs = [outputs]
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name,
                                           domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def conv(self, x: str, cin: int, cout: int, k: int = 1, *, nd: int = 2, name: str,
             bias: bool = True, group: int = 1, outputs=None, **attrs) -> str:
        """Conv with weight ``{name}.w`` [cout, cin/group, k...] and bias ``{name}.b`` [cout]."""
        ks = [k] * nd
        w = self.w(f"{name}.w", [cout, cin // group] + ks)
        ins = [x, w] + ([self.w(f"{name}.b", [cout], 0.1)] if bias else [])
        attrs.setdefault("pads", [(k - 1) // 2] * (2 * nd))
        return self.node("Conv", ins, outputs, name=name, kernel_shape=ks, group=group, **attrs)

    # -- model -------------------------------------------------------------
    def build(self, extra_opsets=()) -> onnx.ModelProto:
        ir_version = self.ir_version or _ir_for(self.opset)
        inputs = list(self.inputs)
        if ir_version < 4:  # IR 3: every initializer is also a graph input
            inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits]
        graph = helper.make_graph(self.nodes, "test", inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        m = helper.make_model(graph, opset_imports=opsets, producer_name="eeonnx-tests")
        m.ir_version = ir_version
        m = fill_output_shapes(m)
        if self.check:
            onnx.checker.check_model(m, full_check=True)
        return m


def _ir_for(opset: int) -> int:
    """The lowest IR version that onnxruntime accepts for an opset."""
    return {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8,
            19: 9, 20: 9, 21: 10}.get(opset, 3 if opset < 7 else 10)


def fill_output_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    """Declare output shapes the builder left open (shape inference, else one ORT run)."""
    missing = [o for o in m.graph.output if not o.type.tensor_type.HasField("shape")]
    if not missing:
        return m
    try:
        inferred = {o.name: o for o in shape_inference.infer_shapes(m).graph.output}
    except Exception:  # noqa: BLE001 - custom domains etc.
        inferred = {}
    todo = []
    for o in missing:
        io = inferred.get(o.name)
        if io is not None and io.type.tensor_type.HasField("shape") and all(
                d.HasField("dim_value") or d.dim_param for d in io.type.tensor_type.shape.dim):
            o.type.CopyFrom(io.type)
        else:
            todo.append(o)
    if todo:
        try:
            res = run_original(m, random_feeds(m))
        except Exception:  # noqa: BLE001 - leave the shape open
            return m
        for o in todo:
            idx = [x.name for x in m.graph.output].index(o.name)
            shape = list(res[idx].shape)
            o.type.tensor_type.shape.Clear()
            for d in shape:
                o.type.tensor_type.shape.dim.add().dim_value = d
    return m


def sandwich(body, *, cin: int = 3, mid: int = 8, cout: int = 4, hw=(4, 4), opset: int = 13,
             seed: int = 0, k2: int = 1, y_shape=None, extra_opsets=()) -> onnx.ModelProto:
    """x [1, cin, *hw] -> Conv(conv1: cin->mid, 1x1) -> body -> Conv(conv2: ->cout) -> y.

    ``body(g, a)`` gets the builder and the name of conv1's output [1, mid, *hw] and
    returns ``(name, channels)`` of its result, a rank-(2+len(hw)) NC* tensor.
    Weights: conv1.w [mid, cin, 1..], conv1.b [mid], conv2.w [cout, channels, ...], conv2.b.
    ``y_shape`` declares the output shape (else it is inferred); ``extra_opsets`` adds
    opset imports for custom domains.
    """
    g = G(opset=opset, seed=seed)
    nd = len(hw)
    g.input("x", [1, cin, *hw])
    a = g.conv("x", cin, mid, 1, nd=nd, name="conv1")
    b, c = body(g, a)
    g.conv(b, c, cout, k2, nd=nd, name="conv2", outputs="y")
    g.output("y", shape=y_shape)
    return g.build(extra_opsets)


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------
_NP = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
       TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
       TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_}


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_feeds(model: onnx.ModelProto, dims: dict | None = None, seed: int = 0) -> dict:
    """float: standard normal; integers: 0..3; bool: fair coin. Symbolic dims from ``dims`` else 2."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for vi in real_inputs(model):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else int(dims.get(d.dim_param, 2)) for d in tt.shape.dim]
        dt = _NP[tt.elem_type]
        if np.issubdtype(dt, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            feeds[vi.name] = rng.integers(0, 3, shape).astype(dt)
    return feeds


def _options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def run_original(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), _options(), providers=CPU)
    return sess.run(None, feeds)


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4, what: str = "") -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if not np.issubdtype(want.dtype, np.floating):
        assert np.array_equal(got, want), f"{what}: integer/bool values differ"
        return
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{what}: NaN positions differ"
    g, w = got[~nan].astype(np.float64), want[~nan].astype(np.float64)
    if w.size == 0:
        return
    inf = ~np.isfinite(w)
    assert np.array_equal(g[inf], w[inf]), f"{what}: infinities differ"
    g, w = g[~inf], w[~inf]
    if w.size == 0:
        return
    scale = max(float(np.abs(w).max()), 1e-3)
    err = float(np.abs(g - w).max())
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


def _same_multiset(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        return False
    if np.issubdtype(a.dtype, np.floating):
        return np.array_equal(np.sort(a), np.sort(b), equal_nan=True)
    return np.array_equal(np.sort(a), np.sort(b))


def _nibbles(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a).reshape(-1)
    return np.concatenate([a & 15, a >> 4])


def _assert_bijection(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Integer ids mapped by value: equal ids map to equal ids, different to different."""
    assert a.shape == b.shape
    pairs = set(zip(np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist()))
    assert len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs}), \
        f"value map of '{what}' is not a bijection"


def original_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the original model, by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


# --------------------------------------------------------------------------
# groups: what a server tensor is under its classes' transforms
# --------------------------------------------------------------------------
class GroupTruth:
    """The compile's record of every class (client/rekey.json, client/rekey.npz), read
    back to say what a server tensor must be.

    A class of group g has an element T_c (its recorded transform) and a permutation p_c.
    A tensor with layout terms t and exponent e_c per class is, on the server,
    ``fold(plain).take(p_t, axis)`` on every axis, fold applying T_c at e_c = +1 and
    T_c^-T at -1 (``passes.fold.transform``: per-axis maps and maps across axes, such as
    per-head blocks). Every element is checked to belong to its group when read
    (:func:`assert_in_group`)."""

    def __init__(self, out):
        from eeonnx.compiler.rekey import ClassVars, load_transforms

        # the record as written (not rekey's refusals: a packed weight makes an artifact
        # not re-keyable, but its record still states every class)
        self.record = json.loads((Path(out) / "client" / "rekey.json").read_text(encoding="utf-8"))
        self.sizes = {c["name"]: int(c["size"]) for c in self.record["classes"]}
        self.perms = {c["name"]: np.asarray(c["perm"], dtype=np.int64) for c in self.record["classes"]}
        self.groups = {c["name"]: c["group"] for c in self.record["classes"]}
        self.classes = ClassVars(self.sizes)
        self.transforms = load_transforms(str(out), self.record, self.classes)
        self.groups.update({c["name"]: "pair rotation-scale" for c in self.record.get("pairs", [])})
        for n, t in self.transforms.items():
            assert_in_group(self.groups[n], t, n)

    def entry(self, rel: str, name: str) -> dict | None:
        return self.record["files"].get(rel, {}).get(name)

    def continuous(self, entry: dict | None) -> bool:
        """The tensor carries some class's continuous transform or a rotary pair map
        (not only permutations)."""
        return bool(entry) and (any(e and n in self.transforms for n, e in entry.get("exp", {}).items())
                                or bool(entry.get("pairs")))

    def _factor(self, exp: dict, inverse: bool):
        exp = {n: e for n, e in exp.items() if e and n in self.transforms}
        return self.classes.factor(exp, lambda n, e: self.transforms[n].factor(e, inverse))

    def axis_map(self, term: dict, exp: dict, inverse: bool = False):
        """The map of one axis on plain indices: None, a vector, or a matrix (x -> x M)."""
        from eeonnx.compiler import groups

        return groups.term_map(self.classes.term(term), self._factor(exp, inverse))

    def index(self, term: dict) -> np.ndarray:
        from eeonnx.compiler.rekey import materialize_json

        return materialize_json(term, self.perms, self.sizes)

    def plain(self, array: np.ndarray, entry: dict) -> np.ndarray:
        """The plain tensor behind a server tensor (float64) from its record entry:
        un-permuted, pair maps undone, class maps undone (the fold's reverse order)."""
        from eeonnx.compiler import pairs as P
        from eeonnx.compiler.passes.fold import transform

        out = np.asarray(array, dtype=np.float64)
        for axis, term in enumerate(entry["fold"]):
            out = np.take(out, np.argsort(self.index(term)), axis=axis)
        terms = [self.classes.term(t) for t in entry["fold"]]
        for p in entry.get("pairs", []):
            tr = self.transforms[p["of"]]
            out = P.apply(out, terms, self.classes.site(p["site"]).uid, tr.blocks(p["e"], inverse=True), tr.head)
        return transform(out, terms, self._factor(entry.get("exp", {}), True))


def apply_axis_map(a: np.ndarray, axis: int, m: np.ndarray | None, inverse: bool = False) -> np.ndarray:
    """``a`` along ``axis`` multiplied by m (x -> x m; a vector: elementwise), or by m^-1."""
    if m is None:
        return a
    if m.ndim == 1:
        shape = [1] * a.ndim
        shape[axis] = -1
        return a / m.reshape(shape) if inverse else a * m.reshape(shape)
    m = np.linalg.inv(m) if inverse else m
    return np.moveaxis(np.tensordot(a, m, axes=([axis], [0])), -1, axis)


def assert_in_group(group: str, t, what: str = "") -> None:
    """A class's element belongs to its group: scales positive (a diagonal, or the scale
    part diag(s) of diag(s) Q), orthogonal factors orthogonal (per block for per-head
    maps), and nothing else for a diagonal; its map at exponent +1 is finite."""
    scale, ortho = getattr(t, "scale", None), getattr(t, "ortho", None)
    if scale is not None:
        assert np.isfinite(scale).all() and (np.asarray(scale) > 0).all(), f"class {what}: scales not positive"
    if group == "diagonal":
        assert ortho is None and np.asarray(t.factor(1)).ndim == 1, f"class {what}: a diagonal with a dense part"
    if ortho is not None:
        q = np.asarray(ortho)
        qtq = np.einsum("...ji,...jk->...ik", q, q)
        assert np.allclose(qtq, np.broadcast_to(np.eye(q.shape[-1]), qtq.shape), atol=1e-9), \
            f"class {what}: orthogonal factor is not orthogonal"
    if group == "orthogonal-ones":
        assert np.allclose(np.ones(len(ortho)) @ np.asarray(ortho), 1, atol=1e-9), \
            f"class {what}: orthogonal-ones does not fix the all-ones vector"


# --------------------------------------------------------------------------
# server names: by default the server model's names are opaque (x0, w3, t7, n2);
# the manifest's "server_names" maps original value names to them
# --------------------------------------------------------------------------
def _artifact_dir(out_or_comp) -> Path:
    return Path(getattr(out_or_comp, "out", None) or out_or_comp)


def _manifest(out_or_comp) -> dict:
    with open(_artifact_dir(out_or_comp) / "client" / "manifest.json", encoding="utf-8") as f:
        return json.load(f)


def server_names(out_or_comp) -> dict[str, str]:
    """original value name -> server name (the identity for names an artifact kept)."""
    return _manifest(out_or_comp).get("server_names", {})


def server_name(out_or_comp, original: str) -> str:
    """The server model's name of an original value (input, output, initializer, activation)."""
    return server_names(out_or_comp).get(original, original)


def original_name(out_or_comp, server: str) -> str:
    """The original name of a server value (inverse of :func:`server_name`)."""
    inverse = {v: k for k, v in server_names(out_or_comp).items()}
    return inverse.get(server, server)


def original_names(out_or_comp, servers) -> list[str]:
    """The original names of a list of server names (e.g. the manifest's ``server_inputs``)."""
    inverse = {v: k for k, v in server_names(out_or_comp).items()}
    return [inverse.get(n, n) for n in servers]


def server_weights(out_or_comp) -> dict[str, np.ndarray]:
    """The server model's initializers and Constant values, keyed by their ORIGINAL names."""
    inverse = {v: k for k, v in server_names(out_or_comp).items()}
    srv = onnx.load(_artifact_dir(out_or_comp) / "server" / "model.onnx")
    return {inverse.get(n, n): a for n, a in original_tensors(srv).items()}


def server_tensor(out_or_comp, original: str) -> np.ndarray:
    """The server's (transformed) tensor that stands for the original initializer ``original``."""
    weights = server_weights(out_or_comp)
    assert original in weights, f"no server tensor for '{original}'"
    return weights[original]


def normalized_proto(model: onnx.ModelProto, dims=None) -> onnx.ModelProto:
    """The original model after eeonnx's normalize pass (independently of a compile)."""
    from eeonnx.compiler.passes import load, normalize

    m = load.load_model(copy.deepcopy(model))
    normalize.NormalizePass(dims)(m)
    return ir.serde.serialize_model(m)


_CLASS_SIZE = re.compile(r"\b(c\d+)\[(\d+)\]")
LUCKY_SPACE = 40320  # 8!: a permutation space this small draws the identity with a real chance


def _space(layouts) -> int:
    """Number of permutations of the distinct classes named in layout strings."""
    from math import factorial, prod

    sizes = {name: int(n) for text in layouts for name, n in _CLASS_SIZE.findall(text or "")}
    return prod(factorial(n) for n in sizes.values())


def drawn_identity(c) -> bool:
    """A crossing that uniform draws made the identity: no secret axis got a non-identity
    permutation and the value map (token ids) is the identity too. Permutations are uniform
    over all n!, so small classes do that by chance (a 2-class half of the time); allowed only
    when the crossing's whole permutation space is at most LUCKY_SPACE."""
    if any(p is not None for p in c.index):
        return False
    if c.value_index is not None and not np.array_equal(c.value_index, np.arange(c.value_index.size)):
        return False
    return _space(list(c.layout) + [c.value_layout]) <= LUCKY_SPACE


def all_drawn_identity(comp) -> bool:
    """Every class of the compile drew the identity, and they could (small space)."""
    from math import factorial, prod

    if any(not np.array_equal(p, np.arange(p.size)) for p in comp.perms.values()):
        return False
    return prod(factorial(c.size) for c in comp.classes.values()) <= LUCKY_SPACE


def _types(vis) -> list[int]:
    return [v.type.tensor_type.elem_type for v in vis]


def _node_sig(n: onnx.NodeProto, inner: bool = False):
    """op, domain, attributes (tensor values without their names); a subgraph attribute by its nodes' signatures (its
    weights are permuted on the server: tensors inside compare by type and shape)."""
    def attr(a):
        if a.type == onnx.AttributeProto.GRAPH:
            return repr([_node_sig(m, True) for m in a.g.node])
        if a.type == onnx.AttributeProto.GRAPHS:
            return repr([[_node_sig(m, True) for m in g.node] for g in a.graphs])
        if inner and a.type == onnx.AttributeProto.TENSOR:
            return repr((a.t.data_type, list(a.t.dims)))
        if a.type == onnx.AttributeProto.TENSOR:  # the tensor's name is not part of the function
            a = copy.deepcopy(a)               # (the server's are cleared: see anonymize)
            a.t.name = ""
        return a.SerializeToString()
    return (n.op_type, n.domain or "", sorted((a.name, attr(a)) for a in n.attribute))


@dataclass
class Roundtrip:
    comp: object
    out: Path
    feeds: dict
    reference: dict  # original output name -> array (the original model's outputs)
    encoded: dict  # server input name -> array
    server: dict  # server output name -> array
    decoded: dict  # original output name -> array
    manifest: dict


def _compile_defaults(compile_kw: dict) -> dict:
    """Tests of op rules keep the boundary at the model's inputs/outputs: no client split
    and no key-bit threshold, unless the caller asks (``split="auto"``, ``min_key_bits``)."""
    params = inspect.signature(eeonnx.compile).parameters
    kw = dict(compile_kw)
    if "split" in params:
        kw.setdefault("split", "none")
        if kw["split"] == "none":
            kw.setdefault("min_key_bits", 0.0)
    return kw


def compile_plain(model, out, **compile_kw):
    """``eeonnx.compile`` with the boundary at the model's inputs/outputs (see roundtrip)."""
    return eeonnx.compile(model, out, **_compile_defaults(compile_kw))


def roundtrip(model: onnx.ModelProto, tmp_path, feeds=None, dims=None, *, rtol: float = 1e-4,
              seed: int = 0, full: bool = False, **compile_kw):
    """Compile ``model`` into ``tmp_path/out`` and check the artifact (see the module docstring).

    Unless ``split`` is given, compiles with ``split="none", min_key_bits=0`` (the boundary
    stays at the model's inputs and outputs, so the server graph is the whole model).
    Returns the Compilation, or a :class:`Roundtrip` with every array when ``full``.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "model.onnx"
    onnx.save(model, src)
    out = tmp_path / "out"
    compile_kw = _compile_defaults(compile_kw)
    comp = eeonnx.compile(src, out, dims=dims, **compile_kw)
    allow_clear = set(compile_kw.get("allow_clear", ())) | set(compile_kw.get("allow_weak", ()))
    plan = getattr(comp, "split", None)
    split = plan is not None and plan.active

    if feeds is None:
        feeds = random_feeds(model, dims, seed)
    ref_list = run_original(model, feeds)
    ref = {o.name: r for o, r in zip(model.graph.output, ref_list)}

    client = eeonnx.Client(out)
    server = eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    manifest = client.manifest
    with open(out / "client" / "manifest.json", encoding="utf-8") as f:
        assert json.load(f) == manifest

    # -- artifact contract on names and order --------------------------------
    enc_proto = onnx.load(out / "client" / "encode.onnx")
    dec_proto = onnx.load(out / "client" / "decode.onnx")
    srv_proto = onnx.load(out / "server" / "model.onnx")
    orig_in = real_inputs(model)
    assert [i.name for i in enc_proto.graph.input] == [i.name for i in orig_in], \
        f"encode inputs {[i.name for i in enc_proto.graph.input]} are not the model's inputs"
    assert _types(enc_proto.graph.input) == _types(orig_in)
    assert [o.name for o in dec_proto.graph.output] == [o.name for o in model.graph.output]
    assert _types(dec_proto.graph.output) == _types(model.graph.output)
    # encode outputs line up with the server's (non-state) inputs, server outputs with decode
    # inputs, by position (a graph cannot use one name as input and output, so names may differ)
    state = {n for s in manifest.get("state", []) for n in (s["server_input"], s["server_output"])}
    srv_in = [i for i in real_inputs(srv_proto) if i.name not in state]
    srv_out = [o for o in srv_proto.graph.output if o.name not in state]
    assert [i.name for i in srv_in] == client.server_inputs
    assert [o.name for o in srv_out] == client.server_outputs
    assert set(client.server_inputs) <= set(server.input_names)
    assert _types(enc_proto.graph.output) == _types(srv_in)
    assert _types(srv_out) == _types(dec_proto.graph.input)

    # -- exactness -------------------------------------------------------------
    encoded = client.encode(feeds)
    served = server.run(encoded)
    decoded = client.decode(served)
    assert set(decoded) == set(ref)
    for name, want in ref.items():
        assert_close(decoded[name], want, rtol, what=f"output '{name}'")

    # -- honesty: nothing crosses the wire in the clear ----------------------------
    crossing_in = {c["name"]: c for c in manifest["inputs"]}
    crossing_out = {c["name"]: c for c in manifest["outputs"]}
    lucky_in = {c.name for c in comp.inputs if drawn_identity(c)}
    lucky_out = {c.name for c in comp.outputs if drawn_identity(c)}
    plain_floats = [np.asarray(feeds[vi.name]) for vi in orig_in
                    if np.issubdtype(np.asarray(feeds[vi.name]).dtype, np.floating) and vi.name not in allow_clear
                    and vi.name not in lucky_in]
    for name, e in encoded.items():  # no server input is a plain float input
        for x in plain_floats:
            assert not (e.shape == x.shape and np.array_equal(e, x)), f"server input '{name}' is a plain input"
    for name, d in decoded.items():  # no server output is a plain output
        if name in allow_clear or crossing_out[name].get("clear") or name in lucky_out:
            continue
        for s_name, s in served.items():
            assert not (s.shape == d.shape and np.array_equal(s, d)), \
                f"server output '{s_name}' is the plain output '{name}'"
    if not split:
        truth = GroupTruth(out)
        enc_index = {c.name: i for i, c in enumerate(comp.inputs)}
        dec_index = {c.name: i for i, c in enumerate(comp.outputs)}
        for vi in orig_in:  # encode only applies its classes' group elements (positions, or ids' values)
            c = crossing_in[vi.name]
            x, e = np.asarray(feeds[vi.name]), encoded[c["wire_name"]]
            assert e.shape == x.shape and e.dtype == x.dtype
            maps = _boundary_maps(truth, "client/encode.onnx", f"encode{enc_index[vi.name]}", x.ndim)
            if "value_layout" in c:
                assert vi.name in lucky_in or not np.array_equal(e, x), f"ids '{vi.name}' reach the server unchanged"
                _assert_bijection(x, e, vi.name)
            elif np.issubdtype(x.dtype, np.floating) and not any(m is not None for m in maps):
                assert _same_multiset(e, x), f"encode of '{vi.name}' is not a permutation of its values"
            elif np.issubdtype(x.dtype, np.floating):
                # a continuous class: x times its element on plain indices, then the permutation
                want = np.asarray(x, dtype=np.float64)
                for axis, m in enumerate(maps):
                    want = apply_axis_map(want, axis, m)
                for axis, p in enumerate(comp.inputs[enc_index[vi.name]].index):
                    if p is not None:
                        want = np.take(want, p, axis=axis)
                assert_close(e.astype(np.float64), want, 1e-5, what=f"encode of '{vi.name}' (group element)")
        for name, d in decoded.items():  # decode only undoes its classes' group elements
            c = crossing_out[name]
            s = served[c["wire_name"]]
            maps = _boundary_maps(truth, "client/decode.onnx", f"decode{dec_index[name]}", np.ndim(s), True)
            if "value_layout" in c:
                _assert_bijection(s, d, name)
            elif not any(m is not None for m in maps):
                assert _same_multiset(s, d), f"decode of '{name}' is not a permutation of its values"
            else:
                want = np.asarray(s, dtype=np.float64)
                for axis, p in enumerate(comp.outputs[dec_index[name]].index):
                    if p is not None:
                        want = np.take(want, np.argsort(p), axis=axis)
                for axis, m in enumerate(maps):
                    want = apply_axis_map(want, axis, m, inverse=True)
                assert_close(d.astype(np.float64), want, 1e-5, what=f"decode of '{name}' (group element)")
    else:
        summary = manifest["split"]
        for wire, bits in summary["wire_bits"].items():
            if wire not in allow_clear:
                assert bits >= summary["min_key_bits"] - 1e-6, (wire, bits, summary)

    # -- the weights are the original ones under the classes' group elements, nothing else --
    # permutation classes: the same values, moved (the sorted values are equal); a tensor
    # under a continuous class (or a moved norm gain): un-permuting and undoing each
    # class's recorded element (GroupTruth: the record, read back) gives the original
    # (the gain moved, rules/norm_groups) to float rounding
    truth = GroupTruth(out)
    prefold = {v.name: ops for v, ops in (getattr(comp, "prefold", {}) or {}).items()}
    orig_t = original_tensors(model)
    changed, matched = [], 0
    for name, s in server_weights(out).items():  # initializers and Constant values, by original name
        if name not in orig_t:
            continue
        matched += 1
        o = orig_t[name]
        assert s.shape == o.shape and s.dtype == o.dtype, f"initializer '{name}' changed shape/dtype"
        entry = truth.entry("server/model.onnx", server_name(out, name))  # the record: server names
        if truth.continuous(entry) or (entry and name in prefold):
            from eeonnx.compiler.rules.norm_groups import apply_prefold

            want = o.astype(np.float64)
            want = apply_prefold(want, prefold[name]) if name in prefold else want
            assert_close(truth.plain(s, entry), want, 1e-5, what=f"initializer '{name}' (group element undone)")
        else:
            # packed 4-bit weights (MatMulNBits) are repacked: the same nibbles, moved
            assert _same_multiset(s, o) or (s.dtype == np.uint8 and _same_multiset(_nibbles(s), _nibbles(o))), \
                f"initializer '{name}' holds other values than the original"
        if s.tobytes() != o.tobytes():
            changed.append(name)
    assert changed or (split and not matched) or all_drawn_identity(comp), \
        "no server initializer differs from the original"

    # -- same graph as the normalized model (less the client's layers) --------------
    norm = normalized_proto(model, dims)
    norm_sigs = [_node_sig(n) for n in norm.graph.node]
    srv_sigs = [_node_sig(n) for n in srv_proto.graph.node]
    if manifest.get("server_structure", {}).get("structure") == "original":
        # the original's nodes, less Identity nodes over constants (now initializers);
        # Constant nodes keep their place (their values may be permuted)
        def sig(n):
            return (n.op_type, n.domain or "") if n.op_type == "Constant" else _node_sig(n)

        orig_sigs = Counter(map(repr, map(sig, model.graph.node)))
        got_sigs = Counter(map(repr, map(sig, srv_proto.graph.node)))
        assert not got_sigs - orig_sigs, "server has nodes not in the original"
        assert all("Identity" in k for k in orig_sigs - got_sigs), "server lost non-Identity nodes"
    elif not split:
        assert len(srv_sigs) == len(norm_sigs)
        assert Counter(n.op_type for n in srv_proto.graph.node) == Counter(n.op_type for n in norm.graph.node)
        assert srv_sigs == norm_sigs
    else:
        assert len(srv_sigs) == len(norm_sigs) - len(plan.prefix) - len(plan.suffix)
        assert not Counter(map(repr, srv_sigs)) - Counter(map(repr, norm_sigs)), "server has nodes not in the model"
    assert manifest["nodes"]["server"] == len(srv_proto.graph.node)

    if full:
        return Roundtrip(comp, out, feeds, ref, encoded, served, decoded, manifest)
    return comp


def _boundary_maps(truth: GroupTruth, rel: str, tag: str, rank: int, inverse: bool = False) -> list:
    """Per axis of a crossing (encode ``tag`` = encode{i}, decode{i}): None, or the map its
    classes' elements give on plain indices, computed from the record's terms and exponents
    (what encode multiplies by before its gathers; decode's inverse after them)."""
    out = []
    for axis in range(rank):
        entry = truth.entry(rel, f"{tag}_map_axis{axis}")
        out.append(None if entry is None else truth.axis_map(entry["map"], entry.get("exp", {})))
    return out


def same_artifact_file(a, b, rel: str) -> bool:
    """Artifact file ``rel`` of directories a and b is the same, less what is random per compile
    by design: the server model's ``eeonnx.artifact_id`` and, in the manifest, that id and the
    server file's digest (which covers the id)."""
    a, b = Path(a) / rel, Path(b) / rel
    if rel.endswith("model.onnx"):
        ma, mb = onnx.load(a), onnx.load(b)
        for m in (ma, mb):
            props = [p for p in m.metadata_props if p.key != "eeonnx.artifact_id"]
            assert len(props) == len(m.metadata_props) - 1, f"{rel} has no artifact id"
            del m.metadata_props[:]
            m.metadata_props.extend(props)
        return ma.SerializeToString() == mb.SerializeToString()
    if rel.endswith("manifest.json"):
        ja, jb = (json.loads(p.read_text(encoding="utf-8")) for p in (a, b))
        assert ja["artifact_id"] != jb["artifact_id"], "two compiles share an artifact id"
        for j in (ja, jb):
            del j["artifact_id"], j["server"]["sha256"]
        return ja == jb
    return a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------
# spec helpers
# --------------------------------------------------------------------------
_CLASS = re.compile(r"\bc\d+\b")


def classes_of(layout: str) -> set[str]:
    """Secret class names in one axis layout string of ``Compilation.spec()``."""
    return set(_CLASS.findall(layout))


def is_secret(layout: str) -> bool:
    return bool(classes_of(layout))


def pinned_nodes(comp) -> set[str]:
    return {p["node"] for p in comp.pins()}
