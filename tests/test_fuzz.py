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

import os
import tempfile

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from onnx import numpy_helper

from eeonnx.errors import EEError
from fuzz_graphs import FuzzGraph, graphs, validate
from helpers import classes_of, original_tensors, roundtrip

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
        d, s = rt.decoded[c["name"]], rt.server[c["wire_name"]]
        assert not np.array_equal(d, s), f"output '{c['name']}' has secret axes but decode left it unchanged"


def check_graph(f: FuzzGraph) -> str:
    """Compile and check one graph; returns the outcome ('ok' or the refusal's class)."""
    model = validate(f)
    with tempfile.TemporaryDirectory(prefix="eeonnx-fuzz-") as tmp:
        try:
            rt = roundtrip(model, tmp, full=True)
        except EEError as e:
            return f"refused: {type(e).__name__}"
        check_honest(rt, model)
    return "ok"


def _run(f: FuzzGraph) -> None:
    note(f.code())
    outcome = check_graph(f)
    event(outcome)


@settings(max_examples=FAST_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=_HEALTH, print_blob=False)
@given(graphs())
def test_fuzz_fast(f):
    _run(f)


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, deadline=None, database=None, suppress_health_check=_HEALTH)
@given(graphs(max_steps=10))
def test_fuzz_long(f):
    _run(f)


# --------------------------------------------------------------------------
# regression tests: graphs the fuzzer found (minimized), as plain tests
# --------------------------------------------------------------------------
