"""Error paths of the Python API: every refusal is an EEError subclass with a useful message,
and a failed compile leaves the output directory as it was and no temporary directory."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper

import eeonnx
from eeonnx.errors import (ClearBoundaryError, EEError, KeyFileError, ModelLoadError, OutputExistsError,
                           ShapeError, StrictPinError, UnsupportedOpError, VerifyError)
from eeonnx.compiler.rules import REGISTRY
from helpers import FLOAT, G, compile_plain, roundtrip, sandwich


def plain_model():
    return sandwich(lambda g, a: (g.node("Relu", [a]), 8))


def lrn_model():
    return sandwich(lambda g, a: (g.node("LRN", [a], name="lrn", size=3), 8))


def leftovers(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith(".eeonnx-"))


def snapshot(d):
    """Relative path -> (bytes, mtime) of every file under d."""
    out = {}
    for root, _dirs, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, d)] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


def test_error_hierarchy():
    for cls in (ModelLoadError, UnsupportedOpError, StrictPinError, ClearBoundaryError, KeyFileError,
                OutputExistsError, ShapeError, VerifyError):
        assert issubclass(cls, EEError)
    assert EEError.exit_code == 2 and ClearBoundaryError.exit_code == 2
    assert VerifyError.exit_code == 1


# --------------------------------------------------------------------------
# unreadable models
# --------------------------------------------------------------------------
def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random-bytes", "text", "truncated"])
def test_unreadable_model(kind, tmp_path):
    if kind == "missing":
        path = tmp_path / "nope.onnx"
    elif kind == "directory":
        path = tmp_path / "adir.onnx"
        path.mkdir()
    elif kind == "empty":
        path = _write(tmp_path / "empty.onnx", b"")
    elif kind == "random-bytes":
        path = _write(tmp_path / "rand.onnx", np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path = _write(tmp_path / "readme.onnx", b"this is not a model\n" * 20)
    else:
        data = plain_model().SerializeToString()
        path = _write(tmp_path / "cut.onnx", data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as e:
        compile_plain(path, tmp_path / "out")
    assert str(path.name) in str(e.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    with pytest.raises(ModelLoadError):
        eeonnx.check(path)


def _non_ssa_model():
    g = G()
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    g.node("Relu", [a], outputs="dup", name="r1")
    g.node("Relu", ["dup"], outputs="dup2", name="r2")
    g.conv("dup2", 8, 4, name="conv2", outputs="y")
    g.output("y")
    m = g.build()
    m.graph.node[-2].output[0] = "dup"           # r2 writes 'dup' again
    m.graph.node[-1].input[0] = "dup"
    return m


def test_graph_not_in_ssa_form_from_file(tmp_path):
    onnx.save(_non_ssa_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelLoadError) as e:
        compile_plain(tmp_path / "m.onnx", tmp_path / "out")
    assert "m.onnx" in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_graph_not_in_ssa_form_from_proto(tmp_path):
    """The same invalid graph given in memory is a ModelLoadError too (regression test)."""
    with pytest.raises(ModelLoadError):
        compile_plain(_non_ssa_model(), tmp_path / "out")


def test_empty_model_proto(tmp_path):
    """An empty ModelProto is refused like an empty file (regression test)."""
    with pytest.raises(ModelLoadError):
        compile_plain(onnx.ModelProto(), tmp_path / "out")


def test_undefined_value_is_a_load_error(tmp_path):
    """A node reading a value nothing defines is an invalid model (regression test)."""
    g = G(check=False)
    g.input("x", [1, 3, 4, 4])
    a = g.conv("x", 3, 8, name="conv1")
    b = g.node("Add", [a, "undefined_thing"], name="reads_undefined")
    g.conv(b, 8, 4, name="conv2", outputs="y")
    g.output("y", shape=[1, 4, 4, 4])
    with pytest.raises(ModelLoadError):
        compile_plain(g.build(), tmp_path / "out")


# --------------------------------------------------------------------------
# unsupported ops
# --------------------------------------------------------------------------
def custom_domain_model():
    def body(g, a):
        return g.node("FancyAct", [a], name="my_custom_node", domain="com.example"), 8
    return sandwich(body, y_shape=[1, 4, 4, 4], extra_opsets=[("com.example", 1)])


def _unsupported_candidates():
    """Standard ops that are not equivariant or not (yet) in the registry: (op, builder)."""
    def hardmax():
        return sandwich(lambda g, a: (g.node("Hardmax", [a], name="bad_node", axis=1), 8))

    def cumsum():
        return sandwich(lambda g, a: (g.node("CumSum", [a, g.ints("ax", 1)], name="bad_node"), 8))

    def det():
        """Det over the spatial [4, 4] matrices -> [1, 8], broadcast back onto a."""
        return sandwich(lambda g, a: (g.node("Mul", [a, g.node("Unsqueeze", [
            g.node("Det", [a], name="bad_node"), g.ints("ax", [2, 3])])]), 8))

    def topk():
        return sandwich(lambda g, a: (g.node("TopK", [a, g.ints("k", [4])], name="bad_node", n_out=2, axis=3)[0],
                                      8))

    return [("Hardmax", hardmax), ("CumSum", cumsum), ("Det", det), ("TopK", topk)]


@pytest.mark.parametrize("op,build", _unsupported_candidates(), ids=[c[0] for c in _unsupported_candidates()])
def test_unsupported_standard_op(op, build, tmp_path):
    if ("", op) in REGISTRY:
        pytest.skip(f"{op} has a rule now")
    with pytest.raises(UnsupportedOpError) as e:
        compile_plain(build(), tmp_path / "out")
    assert e.value.node_name == "bad_node" and e.value.op_type == op
    assert "bad_node" in str(e.value) and op in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_compile_writes_nothing_outside_out(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    compile_plain(plain_model(), tmp_path / "out")
    eeonnx.check(plain_model())
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == ["cwd", "out"]


def test_failed_shape_inference_writes_nothing_to_cwd(tmp_path, monkeypatch):
    """onnxruntime's SymbolicShapeInference saves 'sym_shape_infer_temp.onnx' into the cwd when
    it cannot infer every shape (here: an op of a custom domain); compile/check must not."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(UnsupportedOpError):
        compile_plain(custom_domain_model(), tmp_path / "out")
    eeonnx.check(custom_domain_model())
    assert os.listdir(work) == []


def test_some_standard_op_is_unsupported():
    """At least one of the candidates above must still be refused (else pick new ones)."""
    assert any(("", op) not in REGISTRY for op, _ in _unsupported_candidates())


def test_custom_domain_op(tmp_path):
    m = custom_domain_model()
    with pytest.raises(UnsupportedOpError) as e:
        compile_plain(m, tmp_path / "out")
    assert e.value.node_name == "my_custom_node"
    assert e.value.op_type == "FancyAct" and e.value.domain == "com.example"
    assert "my_custom_node" in str(e.value) and "com.example" in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    # check() reports it instead of raising
    comp = eeonnx.check(m)
    assert [n.name for n, _why in comp.unsupported] == ["my_custom_node"]


def test_unsupported_op_inside_a_subgraph_is_named(tmp_path):
    then_g = helper.make_graph([helper.make_node("FancyAct", ["a_in"], ["t_out"], name="inner_bad",
                                                 domain="com.example")], "then", [],
                               [helper.make_tensor_value_info("t_out", FLOAT, [1, 8, 4, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a_in"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", FLOAT, [1, 8, 4, 4])])

    def body(g, a):
        g.node("Identity", [a], outputs="a_in")
        # a condition computed from the input, so that nothing can fold the If away
        cond = g.node("Greater", [g.node("ReduceSum", [a], keepdims=0), g.floats("zero", 0.0)])
        return g.node("If", [cond], name="branch", then_branch=then_g, else_branch=else_g), 8

    m = sandwich(body, extra_opsets=[("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as e:
        compile_plain(m, tmp_path / "out")
    assert e.value.node_name == "inner_bad" and "com.example" in str(e.value)


def test_several_unsupported_nodes_are_counted(tmp_path):
    def body(g, a):
        b = g.node("FancyAct", [a], name="first_bad", domain="com.example")
        return g.node("FancyAct", [b], name="second_bad", domain="com.example"), 8
    m = sandwich(body, y_shape=[1, 4, 4, 4], extra_opsets=[("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as e:
        compile_plain(m, tmp_path / "out")
    assert "first_bad" in str(e.value) and "1 more" in str(e.value)


# --------------------------------------------------------------------------
# output directory handling
# --------------------------------------------------------------------------
def test_existing_nonempty_out_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as e:
        compile_plain(plain_model(), out)
    assert "force" in str(e.value)
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_force_replaces_existing_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("old")
    comp = compile_plain(plain_model(), out, force=True)
    assert not (out / "precious.txt").exists()
    assert (out / "server" / "model.onnx").is_file()
    # rekey.npz holds the group elements of classes above the permutations, when there are any
    continuous = any(c.group != "permutation" for c in comp.classes.values())
    assert sorted(os.listdir(out / "client")) == ["decode.onnx", "encode.onnx", "key.json", "manifest.json",
                                                  "rekey.json"] + (["rekey.npz"] if continuous else [])
    assert leftovers(tmp_path) == []


def test_force_on_previous_artifact_roundtrips(tmp_path):
    roundtrip(plain_model(), tmp_path)
    roundtrip(plain_model(), tmp_path, force=True)  # same out dir again
    assert leftovers(tmp_path) == []


def test_empty_existing_out_is_used(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    compile_plain(plain_model(), out)
    assert (out / "client" / "key.json").is_file()
    assert leftovers(tmp_path) == []


def test_out_is_a_file(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputExistsError):
        compile_plain(plain_model(), out)
    assert out.read_text() == "a file"


def test_out_in_missing_parent_is_created(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    compile_plain(plain_model(), out)
    assert (out / "server" / "model.onnx").is_file()
    assert leftovers(tmp_path / "a" / "b") == []


@pytest.mark.parametrize("failure", ["unsupported", "strict", "clear", "bad-key"])
def test_failing_compile_with_force_keeps_old_out(failure, tmp_path):
    out = tmp_path / "out"
    compile_plain(plain_model(), out)
    before = snapshot(out)
    kw = {}
    model = plain_model()
    if failure == "unsupported":
        model = custom_domain_model()
        exc = UnsupportedOpError
    elif failure == "strict":
        model, kw, exc = lrn_model(), {"strict": True}, StrictPinError
    elif failure == "clear":
        model, exc = one_channel_model(), ClearBoundaryError
    else:
        (tmp_path / "bad.json").write_text("{}")
        kw, exc = {"key": tmp_path / "bad.json"}, KeyFileError
    with pytest.raises(exc):
        compile_plain(model, out, force=True, **kw)
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_failure_while_writing_cleans_up(tmp_path, monkeypatch):
    """An error in the middle of writing the artifact leaves neither OUT nor a temp dir."""
    from eeonnx.compiler.passes import emit

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(emit, "write_key", boom)
    with pytest.raises(OSError):
        compile_plain(plain_model(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []
    # and with --force over an existing artifact, the old one survives
    monkeypatch.undo()
    compile_plain(plain_model(), tmp_path / "out")
    before = snapshot(tmp_path / "out")
    monkeypatch.setattr(emit, "write_key", boom)
    with pytest.raises(OSError):
        compile_plain(plain_model(), tmp_path / "out", force=True)
    assert snapshot(tmp_path / "out") == before
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# strict and the client boundary
# --------------------------------------------------------------------------
def test_strict_with_a_pin(tmp_path):
    with pytest.raises(StrictPinError) as e:
        compile_plain(lrn_model(), tmp_path / "out", strict=True)
    assert "lrn" in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    comp = roundtrip(lrn_model(), tmp_path / "lenient")  # without strict: compiles, reports the pin
    assert [p["node"] for p in comp.pins()] == ["lrn"]


def test_strict_without_pins(tmp_path):
    comp = roundtrip(plain_model(), tmp_path, strict=True)
    assert comp.pins() == []


def one_channel_model():
    """x [1, 1, 4, 4]: a single input channel has no permutation, the input would be clear."""
    g = G()
    g.input("x", [1, 1, 4, 4])
    a = g.node("Relu", [g.conv("x", 1, 8, 3, name="conv1")])
    g.conv(a, 8, 4, name="conv2", outputs="y")
    g.output("y")
    return g.build()


def test_input_without_secret_axis(tmp_path):
    with pytest.raises(ClearBoundaryError) as e:
        compile_plain(one_channel_model(), tmp_path / "out")
    assert "'x'" in str(e.value)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    comp = roundtrip(one_channel_model(), tmp_path / "allowed", allow_clear=("x",))
    (x,) = comp.inputs
    assert x.clear and x.secret_axes == []
    (y,) = comp.outputs
    assert not y.clear and y.secret_axes == [1]


def test_output_without_secret_axis(tmp_path):
    """A [1, 8, 4, 4] -> global mean over everything: the [1, 1] output carries no secret."""
    def build():
        g = G()
        g.input("x", [1, 3, 4, 4])
        a = g.conv("x", 3, 8, name="conv1")
        g.node("ReduceMean", [a], axes=[1, 2, 3], keepdims=0, outputs="score")
        g.output("score")
        return g.build()
    with pytest.raises(ClearBoundaryError) as e:
        compile_plain(build(), tmp_path / "out")
    assert "'score'" in str(e.value)
    assert not (tmp_path / "out").exists()
    # allowed: exact, the output is marked clear
    comp = roundtrip(build(), tmp_path / "ok", allow_clear=["score"])
    assert comp.outputs[0].clear


def test_allow_clear_of_an_unknown_name_changes_nothing(tmp_path):
    comp = roundtrip(plain_model(), tmp_path, allow_clear=("no_such_tensor",))
    assert not any(c.clear for c in comp.inputs + comp.outputs)


def test_model_argument_forms(tmp_path):
    m = plain_model()
    onnx.save(m, tmp_path / "m.onnx")
    compile_plain(m, tmp_path / "a")
    compile_plain(str(tmp_path / "m.onnx"), str(tmp_path / "b"))
    compile_plain(tmp_path / "m.onnx", tmp_path / "c")
    for d in "abc":
        assert (tmp_path / d / "server" / "model.onnx").is_file()
