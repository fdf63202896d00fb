"""Fuzzing the compiler with random graphs from the op whitelist (``fuzz_graphs``).

Each drawn graph (already checked to be valid ONNX that onnxruntime runs) is
compiled with ``split="none", min_key_bits=0``, ``transforms="permutation"`` (see
``TRANSFORMS``) and a drawn key, and run through
``helpers.roundtrip`` (decode(server(encode(x))) == original(x) on onnxruntime
CPU, rel. err <= 1e-4 of the output's largest value; encode/decode only permute;
weights only permuted; the server graph is the normalized model's), then
:func:`check_honest`:

- every server initializer is exactly the original taken by the compiler's index
  arrays, permuted on every axis where the spec shows a secret class, and differs
  from the original there (when its values are distinct);
- encode applies exactly each input's layout, and changes every float input (every
  float input must have a secret axis); decode exactly inverts each output's layout,
  and every output is encrypted (a secret axis, or permuted id values).

A refusal (an ``EEError`` such as ClearBoundaryError when nothing secret reaches
an input or output) is an accepted outcome; a wrong output, a broken honest
property or any other exception is a failure. Two harness checks are proxies that
data can defeat (an output constant along its secret axes equals its own
permutation); those are accepted only when the tensor is shown to be invariant
under its permutation ("degenerate data", see ``_DATA_PROXY``).

Profiles: ``test_fuzz_fast`` runs in the default suite (derandomized, so CI is
reproducible: 600 tiny graphs, about 30 s on 2 shared cores, ~300 of them compile);
``test_fuzz_long`` is marked slow (``pytest -m slow tests/test_fuzz.py``; bigger
graphs; the number of examples comes from ``EEONNX_FUZZ_EXAMPLES``, default 5000;
not derandomized, so each run explores new graphs; ``--hypothesis-seed`` replays).
``--hypothesis-show-statistics`` shows how many graphs compiled and how many were refused.

A failure prints the graph as FuzzGraph calls (``f.code()``) and the key. Bugs found
are kept at the end of this file as plain regression tests.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import eeonnx
from eeonnx.errors import EEError
from eeonnx.compiler.keys import Key
from fuzz_graphs import FuzzGraph, graphs, validate
from helpers import (G, classes_of, compile_plain, normalized_proto, original_tensors, random_feeds, roundtrip,
                     run_original, drawn_identity, server_name, server_names, LUCKY_SPACE)

RTOL = 1e-4  # helpers.roundtrip's default
# check_honest's properties are exact for permutations (every server initializer is the
# original taken by index arrays, encode/decode are gathers): the fuzz compiles with
# permutations only. The default (--transforms max) is fuzzed for exactness by
# tests/test_groups.py::test_fuzz_transforms_are_exact, and helpers.roundtrip checks its
# group elements on every other test graph.
TRANSFORMS = "permutation"
FAST_EXAMPLES = 600
LONG_EXAMPLES = int(os.environ.get("EEONNX_FUZZ_EXAMPLES", "5000"))
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _encrypt(plain: np.ndarray, c) -> np.ndarray:
    """What the wire carries for a plain tensor crossing ``c`` (boundary.Crossing)."""
    out = plain
    for axis, p in enumerate(c.index):
        if p is not None:
            out = np.take(out, p, axis=axis)
    if c.value_index is not None:
        out = np.argsort(c.value_index)[out]
    return out


def _drew_identity(comp, layout: str) -> bool:
    """Every class in this axis layout drew the identity, in a space small enough to do so by chance."""
    from math import factorial, prod

    by_name = {c.name: (uid, c.size) for uid, c in comp.classes.items()}
    names = classes_of(layout)
    if prod(factorial(by_name[n][1]) for n in names) > LUCKY_SPACE:
        return False
    return all(np.array_equal(comp.perms[by_name[n][0]], np.arange(by_name[n][1])) for n in names)


def check_honest(rt, model: onnx.ModelProto) -> None:
    """The honest properties beyond helpers.roundtrip (see the module docstring)."""
    comp = rt.comp
    spec = comp.spec()
    index = comp.weight_index
    srv = onnx.load(rt.out / "server" / "model.onnx")
    orig = original_tensors(model)
    inverse = {v: k for k, v in server_names(rt.out).items()}  # the server's names are opaque
    for t in srv.graph.initializer:
        name = inverse.get(t.name, t.name)
        if name not in orig:
            continue
        s, o = numpy_helper.to_array(t), orig[name]
        want = o
        for axis, p in enumerate(index.get(name, [])):
            if p is not None:
                want = np.take(want, p, axis=axis)
        assert np.array_equal(s, want), f"initializer '{name}' is not the original permuted by its index arrays"
        layout = spec.get(name, [])
        secret = [a for a, lay in enumerate(layout) if classes_of(lay)]
        # uniform draws make a small class the identity by chance (a 2-class half of the time):
        # then, and only then, its axis may stay unpermuted
        lucky = [a for a in secret if _drew_identity(comp, layout[a])]
        for a in secret:
            assert a in lucky or (name in index and index[name][a] is not None), \
                f"spec shows '{name}' axis {a} secret ({layout[a]}), but it is not permuted"
        if secret and len(lucky) < len(secret) and np.unique(o).size == o.size:  # (repeated values may stay)
            assert s.tobytes() != o.tobytes(), f"'{name}' has secret axes {layout} but is unchanged"
    assert comp.key_bits > 0
    man = rt.manifest
    for c in comp.inputs:  # encode applies exactly the crossing's permutations
        x, e = np.asarray(rt.feeds[c.name]), rt.encoded[server_name(rt.out, c.wire_name)]
        assert np.array_equal(e, _encrypt(x, c)), f"encode of '{c.name}' is not its layout {c.layout}"
        if np.issubdtype(x.dtype, np.floating):  # random floats: any real permutation moves them
            assert c.secret_axes and not c.clear, f"float input '{c.name}' crosses in the clear"
            assert drawn_identity(c) or not np.array_equal(e, x), \
                f"input '{c.name}' has secret axes but encode left it unchanged"
    for c in comp.outputs:  # decode inverts exactly the crossing's permutations
        s, d = rt.server[server_name(rt.out, c.wire_name)], rt.decoded[c.name]
        assert np.array_equal(s, _encrypt(d, c)), f"decode of '{c.name}' does not invert its layout {c.layout}"
        assert c.encrypted and not c.clear, f"output '{c.name}' crosses in the clear"
    assert [c["name"] for c in man["inputs"]] == [c.name for c in comp.inputs]


# The harness's "no server output is the plain output" and "ids reach the server
# unchanged" are proxies that data can defeat: an output constant along its secret axes
# (Relu of an all-negative row, a saturated Max) equals its own permutation; a few token
# ids can all be fixed points of the id permutation. Such a case is retried with other
# inputs, and accepted only if that tensor is provably invariant under its permutation.
_DATA_PROXY = [
    ("output", re.compile(r"server output '.*' is the plain output '(?P<name>.*)'")),
    ("input", re.compile(r"ids '(?P<name>.*)' reach the server unchanged")),
    ("weights", re.compile(r"no server initializer differs from the original(?P<name>)")),
]
FIXED_KEY = hashlib.sha256(b"eeonnx-fuzz").digest()


def _invariant(model, comp, feeds, kind: str, name: str) -> bool:
    """The plain tensor equals its encrypted form (all its permutations included);
    "weights": every permuted initializer does (e.g. a boolean mask, the only weight)."""
    if kind == "weights":
        orig = original_tensors(model)
        if not comp.weight_index:
            return False
        for name, index in comp.weight_index.items():
            moved = orig[name]
            for axis, p in enumerate(index):
                if p is not None:
                    moved = np.take(moved, p, axis=axis)
            if not np.array_equal(moved, orig[name]):
                return False
        return True
    if kind == "output":
        plain = dict(zip([o.name for o in model.graph.output], run_original(model, feeds)))[name]
        crossing = comp.outputs
    else:
        plain, crossing = np.asarray(feeds[name]), comp.inputs
    (c,) = [c for c in crossing if c.name == name]
    if not c.encrypted:
        return False  # nothing was permuted: not a data artifact
    moved = _encrypt(plain, c)
    if not np.issubdtype(plain.dtype, np.floating):
        return np.array_equal(moved, plain)
    # up to the roundtrip tolerance: copies made by broadcasting (Expand, Tile) may differ
    # in the last bit in the original, while the server computed one exact copy
    return bool(np.abs(moved - plain).max(initial=0) <= RTOL * max(np.abs(plain).max(initial=0), 1e-3))


def _data_artifact(e: AssertionError):
    for kind, pattern in _DATA_PROXY:
        m = pattern.search(str(e))
        if m:
            return kind, m.group("name")
    return None


def wrong_inferred_shape(f: FuzzGraph, model: onnx.ModelProto) -> str | None:
    """A value whose static shape after eeonnx's normalize differs from what onnxruntime
    computes: the known bug of test_normalized_shapes_after_einsum_with_ellipsis
    (onnxruntime's symbolic shape inference, trusted for dims ONNX leaves unknown). The fuzz
    tests skip such graphs, so that they keep finding other bugs."""
    norm = normalized_proto(model)
    for vi in list(norm.graph.value_info) + list(norm.graph.output):
        if vi.name not in f.names:
            continue
        want = f.shapes[f.names.index(vi.name)]
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(want) or any(d.HasField("dim_value") and d.dim_value != w for d, w in zip(dims, want)):
            return vi.name
    return None


def check_graph(f: FuzzGraph, key: bytes = FIXED_KEY) -> str:
    """Compile and check one graph; returns the outcome: 'ok', 'refused: <EEError class>',
    'degenerate data' or 'skipped: <why>' (server state, a known bug)."""
    model = validate(f)
    if f.symbolic and eeonnx.check(model).state:
        # an input that grows along a symbolic axis into an output is a KV cache by
        # definition (passes/state.py): server state, which roundtrip does not drive
        return "skipped: server state"
    if f.symbolic and wrong_inferred_shape(f, model):
        return "skipped: known bug (wrong inferred shape)"
    with tempfile.TemporaryDirectory(prefix="eeonnx-fuzz-") as tmp:
        for seed in range(3):
            out = os.path.join(tmp, str(seed))
            try:
                rt = roundtrip(model, out, seed=seed, full=True, key=Key(key), transforms=TRANSFORMS)
            except EEError as e:
                return f"refused: {type(e).__name__}"
            except AssertionError as e:
                artifact = _data_artifact(e)
                if artifact is None:
                    raise
                comp = compile_plain(model, os.path.join(tmp, f"check{seed}"), key=Key(key), transforms=TRANSFORMS)
                if not _invariant(model, comp, random_feeds(model, seed=seed), *artifact):
                    raise
                if artifact[0] == "weights":
                    return "degenerate data"
                continue  # a data artifact: try other inputs
            check_honest(rt, model)
            return "ok"
        return "degenerate data"


def _run(f: FuzzGraph, key: bytes) -> None:
    note(f.code())
    note(f"key = {key!r}")
    outcome = check_graph(f, key)
    event(outcome)


@settings(max_examples=FAST_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=_HEALTH, print_blob=False)
@given(graphs(), st.binary(min_size=32, max_size=32))
def test_fuzz_fast(f, key):
    _run(f, key)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, deadline=None, database=None, suppress_health_check=_HEALTH)
@given(graphs(max_steps=12), st.binary(min_size=32, max_size=32))
def test_fuzz_long(f, key):
    _run(f, key)


def test_code_rebuilds_the_same_graph():
    """What a failure prints (FuzzGraph calls) rebuilds exactly the graph that failed."""
    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=_HEALTH)
    @given(graphs(max_steps=8))
    def check(f):
        scope = {"FuzzGraph": FuzzGraph}
        exec(f.code(), scope)  # noqa: S102 - our own generated code
        assert scope["f"].build().SerializeToString() == f.build().SerializeToString()

    check()


# --------------------------------------------------------------------------
# regression tests: graphs the fuzzer found (minimized), as plain tests
# --------------------------------------------------------------------------
def _input_concat_into_output(both: bool):
    """x [2,3] @ W -> a [2,4]; y = Concat(a, extra [1,4], axis 0) [3,4]: a graph input
    concatenated into a graph output along a *static* axis."""
    g = G(opset=17)
    g.input("x", [2, 3])
    g.input("extra", [1, 4])
    a = g.node("MatMul", ["x", g.w("w", [3, 4])], outputs="a")
    g.node("Concat", [a, "extra"], outputs="y", axis=0)
    g.output("y")
    if both:
        g.output("a")
    return g.build()


@pytest.mark.parametrize("both", [False, True], ids=["y", "y+a"])
def test_static_concat_of_an_input_is_not_server_state(tmp_path, both):
    """Found by the fuzzer: the state pass paired 'extra' with 'y' as a KV cache although
    y [3,4] can never be fed back as extra [1,4]. 'extra' then bypassed encode (the artifact
    contract broke: encode inputs != model inputs), and with 'y' the only output decode.onnx
    was empty and the Client could not even load it (onnxruntime Fail). Fixed by requiring
    a growing (symbolic) axis and no other reader (passes/state.py)."""
    model = _input_concat_into_output(both)
    assert eeonnx.check(model).state == []
    rt = roundtrip(model, tmp_path, full=True)
    assert rt.comp.state == []
    assert [c["name"] for c in rt.manifest["inputs"]] == ["x", "extra"]
    assert all(c["secret_axes"] for c in rt.manifest["inputs"])


def test_duplicate_graph_output(tmp_path):
    """Found while probing the boundary next to the fuzzer: onnx.checker and onnxruntime accept
    a graph whose output list names the same value twice, but compile writes a decode.onnx that
    onnxruntime refuses to load ("Duplicate definition-site for (y__ee)"), a crash rather than
    a refusal. Either a refusal (EEError) or a working artifact makes this test pass."""
    g = G(opset=17)
    g.input("x", [2, 3])
    g.node("MatMul", ["x", g.w("w", [3, 4])], outputs="y")
    g.output("y", shape=[2, 4])
    g.output("y", shape=[2, 4])
    model = g.build()
    try:
        roundtrip(model, tmp_path)
    except EEError:
        pass  # refusing such a graph is acceptable


def test_slice_negative_step_on_symbolic_axis(tmp_path):
    """Found by the fuzzer (minimized; a wrong output, since fixed in normalize): x [N, 5] ->
    Slice(starts=1, ends=INT64_MIN, step=-1) on axis 0 (x[1::-1], rows 1 and 0) ->
    r [min(N, 2), 5] -> Sub(r, W [2, 1]) -> MatMul(W2 [5, 3]).

    onnxruntime's SymbolicShapeInference._infer_Slice maps an end <= -int_max to
    ``0 if start > 0 else -1``; for a negative step it must be -1 whatever the start, so it
    computes a length of 1. ONNX's own inference leaves the dim unknown, so
    passes/normalize.py:infer_shapes took ORT's static 1. The Slice rule does pin the
    reversed axis, but rules/elementwise.py:broadcast skipped r's axis 0 as a broadcast
    size-1 axis, so W's axis 0 was not tied to it: W got a secret class c0 and was permuted
    on axis 0 while r was not (decoded output off by up to 100%). Run with N=2 (helpers)."""
    g = G(opset=17)
    g.input("x", ["N", 5])
    g.node("Slice", ["x", g.ints("starts", [1]), g.ints("ends", [-2**63]), g.ints("axes", [0]),
                     g.ints("steps", [-1])], outputs="r")
    g.node("Sub", ["r", g.w("w", [2, 1])], outputs="d")
    g.node("MatMul", ["d", g.w("w2", [5, 3])], outputs="y")
    g.output("y")
    model = g.build()
    try:
        roundtrip(model, tmp_path)
    except EEError:
        pass  # refusing (e.g. an unknown dim) is acceptable


def _static_shape_mismatches(model: onnx.ModelProto, feeds: dict) -> list:
    """(value, shape after normalize, shape at run time) where a static dim disagrees."""
    norm = normalized_proto(model)
    names = [vi.name for vi in norm.graph.value_info]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    got = dict(zip([o.name for o in probe.graph.output], run_original(probe, feeds)))
    out = []
    for vi in norm.graph.value_info:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        real = list(got[vi.name].shape)
        if len(dims) != len(real) or any(d is not None and d != r for d, r in zip(dims, real)):
            out.append((vi.name, dims, real))
    return out


@pytest.mark.xfail(strict=True, reason="onnxruntime's symbolic Einsum inference gets '...' wrong "
                   "([N,3,6] x [6,4] -> [6,4,4]); normalize no longer takes ORT's dims for the Einsum "
                   "itself, but dims ORT derived from that guess further down (Flatten) still slip in")
def test_normalized_shapes_after_einsum_with_ellipsis():
    """Found by the fuzzer (its shape cross-check): x [N, 3, 6] -> Einsum('...k,kn->...n', W [6, 4])
    -> e [N, 3, 4] -> Flatten(axis=2) -> f [N*3, 4]. ONNX infers e exactly and leaves f's first
    dim unknown; onnxruntime's SymbolicShapeInference infers e as [6, 4, 4] (the ellipsis takes
    W's dims), so normalize gives f the static shape [24, 4]; at run time (N=2) it is [6, 4].
    Every rule reads these dims (broadcast size-1 tests, Reshape group alignment, Slice
    blocks), so a wrong static dim can become a wrong layout, as in
    test_slice_negative_step_on_symbolic_axis. No wrong output was found for this one yet."""
    g = G(opset=17)
    g.input("x", ["N", 3, 6])
    g.node("Einsum", ["x", g.w("w", [6, 4])], outputs="e", equation="...k,kn->...n")
    g.node("Flatten", ["e"], outputs="f", axis=2)
    g.node("MatMul", ["f", g.w("w2", [4, 5])], outputs="y")
    g.output("y")
    model = g.build()
    assert _static_shape_mismatches(model, random_feeds(model)) == []
