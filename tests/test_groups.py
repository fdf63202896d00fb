"""Groups beyond permutations (--transforms max): the algebra, the key's draws, and end-to-end
exactness on ONNX Runtime: decode(server(encode(x))) == original(x), the server graph is the
original's, and weights on a continuously transformed axis are no permutation of the original's
(no sorted fibre along such an axis matches any original one)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

import eeonnx
from eeonnx.cli import main as cli_main
from eeonnx.compiler import groups as G
from eeonnx.compiler import layout as L
from eeonnx.compiler.keys import Key
from tests.helpers import G as Builder
from tests.helpers import assert_close, random_feeds, server_weights

ROOT = Path(__file__).resolve().parents[1]
CPU = ["CPUExecutionProvider"]
KEY = Key(bytes(range(32)))


# --------------------------------------------------------------------------- algebra
def test_meet_is_the_largest_common_subgroup():
    assert G.meet(G.LINEAR, G.DIAGONAL) == G.DIAGONAL
    assert G.meet(G.DIAGONAL, G.PERMUTATION, G.LINEAR) == G.PERMUTATION
    assert G.meet(G.LINEAR) == G.LINEAR
    # not a chain: a positive diagonal that is orthogonal is the identity
    assert G.meet(G.DIAGONAL, G.ORTHOGONAL) == G.PERMUTATION
    assert G.meet(G.DIAGONAL, G.ORTHO_ONES) == G.PERMUTATION
    assert G.meet(G.LINEAR, G.ORTHOGONAL) == G.ORTHOGONAL
    assert G.meet(G.ORTHOGONAL, G.ORTHO_ONES, G.LINEAR) == G.ORTHO_ONES
    assert G.leq(G.PERMUTATION, G.ORTHO_ONES) and not G.leq(G.DIAGONAL, G.ORTHOGONAL)


def test_relations_parity_and_contradiction():
    r = G.Relations()
    for x in "abcde":
        r.add(x)
    r.relate("a", "b", -1, G.LINEAR)
    r.relate("b", "c", 1, G.DIAGONAL)
    assert r.exponent("a") == -r.exponent("c") != 0
    assert r.group_of("a") == G.DIAGONAL
    r.relate("d", "e", 1, G.LINEAR)
    r.relate("e", "d", -1, G.LINEAR)  # e(d) = e(e) = -e(d): only maps with T^-T = T
    assert r.group_of("d") == G.ORTHOGONAL and r.exponent("d") != 0
    r.limit("e", G.DIAGONAL)  # ... and no diagonal but the identity
    assert r.group_of("d") == G.PERMUTATION
    r.force_zero("c")
    assert r.exponent("a") == r.exponent("b") == 0


def test_key_draws():
    q = KEY.orthogonal("x", 24)
    assert np.allclose(q.T @ q, np.eye(24), atol=1e-12)
    assert np.array_equal(q, KEY.orthogonal("x", 24))
    assert not np.allclose(q, KEY.orthogonal("y", 24))
    s = KEY.scales("x", 1000, 0.25, 4.0)
    assert s.min() >= 0.25 and s.max() <= 4.0 and s.min() < 0.3 and s.max() > 3.5
    assert np.array_equal(s, KEY.scales("x", 1000, 0.25, 4.0))
    # log-uniform: the median of log s is near the middle of the range
    assert abs(np.median(np.log(s))) < 0.2


@pytest.mark.parametrize("group", [G.DIAGONAL, G.LINEAR])
def test_transform_factors_are_inverse_and_contragredient(group):
    t = G.draw(KEY, "c", 8, group)
    eye = np.eye(8)

    def mat(f):
        return np.diag(f) if f.ndim == 1 else f

    for e in (1, -1):
        assert np.allclose(mat(t.factor(e)) @ mat(t.factor(e, inverse=True)), eye, atol=1e-12)
    # a +1 axis contracted against a -1 axis: (x T) . (T^-T w) = x . w
    assert np.allclose(mat(t.factor(1)) @ mat(t.factor(-1)).T, eye, atol=1e-12)


def test_apply_axis_kron_and_cat_match_explicit_maps():
    a, b = L.Var(3), L.Var(4)
    ta, tb = G.draw(KEY, "a", 3, G.LINEAR), G.draw(KEY, "b", 4, G.DIAGONAL)
    maps = {a.uid: ta.factor(1), b.uid: tb.factor(-1)}

    def factor(v):
        return maps.get(v.uid)

    x = np.random.default_rng(0).standard_normal((5, 12))
    got = G.apply_axis(x, 1, L.Kron((a, b)), factor)
    assert np.allclose(got, x @ np.kron(ta.factor(1), np.diag(tb.factor(-1))))
    y = np.random.default_rng(1).standard_normal((7, 2))
    got = G.apply_axis(y, 0, L.Cat((a, b)), factor)
    block = np.zeros((7, 7))
    block[:3, :3], block[3:, 3:] = ta.factor(1), np.diag(tb.factor(-1))
    assert np.allclose(got, (y.T @ block).T)


# --------------------------------------------------------------------------- end to end
def _sessions(out: Path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return [ort.InferenceSession(str(out / p), so, providers=CPU)
            for p in ("client/encode.onnx", "server/model.onnx", "client/decode.onnx")]


def _encrypted_run(out: Path, feeds: dict) -> list[np.ndarray]:
    enc, srv, dec = _sessions(out)
    sent = enc.run(None, {i.name: feeds[i.name] for i in enc.get_inputs()})
    got = srv.run(None, dict(zip([i.name for i in srv.get_inputs()], sent)))
    return dec.run(None, dict(zip([i.name for i in dec.get_inputs()], got)))


def _sorted_fibres(a: np.ndarray, axis: int) -> np.ndarray:
    """Every fibre along ``axis`` (one per index of the other axes), its values sorted."""
    return np.sort(np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]), axis=1)


def _fibre_matches(server: np.ndarray, original: np.ndarray, axis: int) -> int:
    s, o = _sorted_fibres(server, axis), _sorted_fibres(original, axis)
    scale = np.abs(o).max() + 1e-30
    return sum(bool((np.abs(o - row).max(axis=1) <= 1e-6 * scale).any()) for row in s)


def _transformed_axes(comp) -> dict[str, list[int]]:
    """initializer -> axes holding a class with a continuous transform at a non-zero exponent."""
    out = {}
    for name, value in comp.model.graph.initializers.items():
        terms = comp.analysis.known(value)
        axes = [a for a, t in enumerate(terms or [])
                if any(v.uid in comp.transforms and comp.exponents.get((value, v.uid), 0)
                       for v in L.free_vars(t))]
        if axes:
            out[name] = axes
    return out


def _check_artifact(model_path: Path, out: Path, comp, feeds: dict, rtol: float = 1e-5) -> None:
    original = onnx.load(model_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    want = ort.InferenceSession(str(model_path), so, providers=CPU).run(None, feeds)
    got = _encrypted_run(out, feeds)
    for g, w, o in zip(got, want, original.graph.output):
        assert_close(g, w, rtol, o.name)
    orig = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    srv = server_weights(out)  # by original name
    axes = _transformed_axes(comp)
    assert axes, "no weight got a continuous transform"
    for name, ax in axes.items():
        if name not in srv:
            continue  # a client-side layer's weight
        for a in ax:
            assert _fibre_matches(srv[name], orig[name], a) == 0, f"{name} axis {a}: sorted fibre matches"


def _same_ops(model_path: Path, out: Path) -> None:
    want = [n.op_type for n in onnx.load(model_path).graph.node]
    got = [n.op_type for n in onnx.load(out / "server" / "model.onnx").graph.node]
    assert got == want


def test_mlp_hidden_units_get_diagonal_and_are_exact(tmp_path):
    path = ROOT / "models" / "mlp.onnx"
    comp = eeonnx.compile(path, tmp_path / "out", split="none", min_key_bits=0, transforms="max",
                          allow_clear=("probs",), allow_weak=("probs",))
    groups = {c.name: c.group for c in comp.classes.values()}
    assert "diagonal" in groups.values(), groups  # hidden units behind ReLU
    feeds = random_feeds(onnx.load(path), {"batch": 3})
    _check_artifact(path, tmp_path / "out", comp, feeds)
    _same_ops(path, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "client" / "manifest.json").read_text())
    assert {c["group"] for c in m["classes"]} >= {"diagonal"}
    assert abs(sum(m["coverage"]["groups"].values()) - 1) < 1e-3


def test_cnn_batchnorm_keeps_its_statistics_unscaled(tmp_path):
    path = ROOT / "models" / "cnn.onnx"
    comp = eeonnx.compile(path, tmp_path / "out", transforms="max")
    feeds = random_feeds(onnx.load(path), {})
    _check_artifact(path, tmp_path / "out", comp, feeds)
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    srv = server_weights(tmp_path / "out")  # by original name
    scaled = 0
    for name in orig:
        if name.endswith(".mean") or name.endswith(".var"):
            if name in srv:  # statistics: only permuted (eps cannot follow a per-channel scale)
                assert np.array_equal(np.sort(srv[name]), np.sort(orig[name])), name
        if name.endswith(".scale") and name in srv and not np.allclose(np.sort(srv[name]), np.sort(orig[name])):
            scaled += 1
    assert scaled, "no BatchNormalization gamma took a scale"


def test_kv_cache_model_generates_the_same_tokens(tmp_path):
    path = ROOT / "models" / "fixtures" / "gpt2_kv.dynamo.onnx"
    out = tmp_path / "out"
    comp = eeonnx.compile(path, out, transforms="max")
    assert "per-head linear" in {c.group for c in comp.classes.values()}  # attention V/O: a map per head
    _same_ops(path, out)
    client, server = eeonnx.Client(out), eeonnx.Server(out / "server" / "model.onnx", providers=CPU)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    plain = ort.InferenceSession(str(path), so, providers=CPU)
    ids, want = [5, 17, 42, 99], []
    for _ in range(6):  # plain greedy, recomputing the prefix
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
        for i in plain.get_inputs():
            if i.name.startswith("past"):
                feeds[i.name] = np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
        tok = int(np.argmax(plain.run(["logits"], feeds)[0][0, -1]))
        want.append(tok)
        ids.append(tok)
    assert list(client.generate(server, [5, 17, 42, 99], max_new_tokens=6)) == want
    srv = server_weights(out)  # by original name
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, axes in _transformed_axes(comp).items():
        if name in srv:
            for a in axes:
                assert _fibre_matches(srv[name], orig[name], a) == 0, name


# --------------------------------------------------------------------------- what must stay a permutation
def _two_layer(act: str, elem=TensorProto.FLOAT, dtype=np.float32, const_add: bool = False) -> onnx.ModelProto:
    g = Builder()
    x = g.input("x", [2, 8], elem)
    w1 = g.const("w1", (np.random.default_rng(0).standard_normal((8, 16)) / 3).astype(dtype))
    w2 = g.const("w2", (np.random.default_rng(1).standard_normal((16, 6)) / 4).astype(dtype))
    h = g.node("MatMul", [x, w1])
    if const_add:
        h = g.node("Add", [h, g.const("one", np.array(1.0, dtype))])
    h = g.node(act, [h])
    g.node("MatMul", [h, w2], "y")
    g.output("y", elem)
    return g.build()


def _hidden_group(model, **kw) -> str:
    comp = eeonnx.check(model, transforms="max", **kw)
    return next(c.group for c in comp.classes.values() if c.size == 16)


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
def test_homogeneous_activation_gives_diagonal(act):
    assert _hidden_group(_two_layer(act)) == "diagonal"


@pytest.mark.parametrize("act", ["Sigmoid", "Tanh", "Softplus", "Erf"])
def test_nonhomogeneous_activation_keeps_permutation(act):
    assert _hidden_group(_two_layer(act)) == "permutation"


def test_adding_a_broadcast_constant_keeps_permutation():
    assert _hidden_group(_two_layer("Relu", const_add=True)) == "permutation"


def test_fp16_keeps_permutation_unless_rounding_is_allowed():
    m = _two_layer("Relu", TensorProto.FLOAT16, np.float16)
    assert _hidden_group(m) == "permutation"
    assert _hidden_group(m, allow_rounding=True) == "diagonal"


def test_linear_hidden_units_get_linear(tmp_path):
    m = _two_layer("Identity")
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    comp = eeonnx.compile(path, tmp_path / "out", split="none", min_key_bits=0, transforms="max")
    assert next(c.group for c in comp.classes.values() if c.size == 16) == "linear"
    _check_artifact(path, tmp_path / "out", comp, random_feeds(m))


def test_default_is_max(tmp_path):
    comp = eeonnx.compile(ROOT / "models" / "mlp.onnx", tmp_path / "out", split="none", min_key_bits=0,
                          allow_clear=("probs",), allow_weak=("probs",))
    assert {"diagonal", "linear"} <= {c.group for c in comp.classes.values()}
    assert comp.transforms and comp.exponents


def test_permutation_mode_is_permutation_only(tmp_path):
    comp = eeonnx.compile(ROOT / "models" / "mlp.onnx", tmp_path / "out", transforms="permutation")
    assert {c.group for c in comp.classes.values()} == {"permutation"}
    assert comp.transforms == {} and comp.exponents == {}
    enc = onnx.load(tmp_path / "out" / "client" / "encode.onnx")
    assert {n.op_type for n in enc.graph.node} <= {"Gather", "Identity"}


def test_check_spec_shows_groups():
    for args in (["--transforms", "max"], []):  # max is the default
        r = CliRunner().invoke(cli_main, ["check", str(ROOT / "models" / "mlp.onnx"), "--spec"] + args)
        assert r.exit_code == 0, r.output
        assert "class groups:" in r.output and ": diagonal" in r.output
    r = CliRunner().invoke(cli_main, ["check", str(ROOT / "models" / "mlp.onnx"), "--spec",
                                      "--transforms", "permutation"])
    assert ": diagonal" not in r.output and ": permutation" in r.output


def test_swiglu_scales_up_never_the_gate(tmp_path):
    """h = silu(x Wg) * (x Wu); y = h Wd: the hidden class is diagonal, Wg's hidden axis
    stays a permutation (the gate sits behind a sigmoid), Wu and Wd take the scale."""
    g = Builder()
    rng = np.random.default_rng(3)
    x = g.input("x", [3, 8])
    wg, wu, wd = (g.const(n, (rng.standard_normal(s) / 3).astype(np.float32))
                  for n, s in (("wg", (8, 16)), ("wu", (8, 16)), ("wd", (16, 8))))
    gate = g.node("MatMul", [x, wg])
    silu = g.node("Mul", [gate, g.node("Sigmoid", [gate])])
    h = g.node("Mul", [silu, g.node("MatMul", [x, wu])])
    g.node("MatMul", [h, wd], "y")
    g.output("y")
    m = g.build()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    comp = eeonnx.compile(path, tmp_path / "out", split="none", min_key_bits=0, transforms="max")
    assert next(c.group for c in comp.classes.values() if c.size == 16) == "diagonal"
    _check_artifact(path, tmp_path / "out", comp, random_feeds(m))
    axes = _transformed_axes(comp)
    assert 1 in axes["wu"] and 0 in axes["wd"] and 1 not in axes.get("wg", [])


def _norm_model(post_norm: bool) -> onnx.ModelProto:
    """x -> LayerNorm(gamma, beta) -> MatMul W (pre-norm); with post_norm the normalised
    output is also added back to x and normalised again (it feeds a norm: no scale)."""
    g = Builder(opset=17)
    rng = np.random.default_rng(5)
    x = g.input("x", [3, 16])
    gamma = g.const("gamma", (1 + 0.3 * rng.standard_normal(16)).astype(np.float32))
    beta = g.const("beta", (0.3 * rng.standard_normal(16)).astype(np.float32))
    w = g.const("w", (rng.standard_normal((16, 8)) / 4).astype(np.float32))
    n = g.node("LayerNormalization", [x, gamma, beta], axis=-1)
    if post_norm:
        gamma2 = g.const("gamma2", (1 + 0.3 * rng.standard_normal(16)).astype(np.float32))
        beta2 = g.const("beta2", (0.3 * rng.standard_normal(16)).astype(np.float32))
        n = g.node("LayerNormalization", [g.node("Add", [x, n]), gamma2, beta2], axis=-1)
    g.node("MatMul", [n, w], "y")
    g.output("y")
    return g.build()


def test_prenorm_gain_moves_into_the_consumer(tmp_path):
    """x -> LayerNorm(gamma, beta) -> MatMul W: x's class takes an orthogonal map fixing
    ones; the server's norm has gamma = 1, beta/gamma transformed, W's rows diag(gamma)-scaled."""
    m = _norm_model(post_norm=False)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    comp = eeonnx.compile(path, tmp_path / "out", split="none", min_key_bits=0, transforms="max",
                          allow_weak=("y", "x"))
    assert next(c.group for c in comp.classes.values() if c.size == 16) == "orthogonal-ones"
    _check_artifact(path, tmp_path / "out", comp, random_feeds(m))
    axes = _transformed_axes(comp)
    assert "gamma" not in axes and axes.get("beta") == [0] and 0 in axes["w"]
    srv = server_weights(tmp_path / "out")  # by original name
    assert np.array_equal(srv["gamma"], np.ones(16, np.float32))


def test_norm_output_feeding_a_norm_is_not_scaled(tmp_path):
    """Post-norm: the first norm's output feeds the second norm (through the residual Add),
    so its gain/bias stay permuted only; the last norm's output feeds a MatMul: scaled."""
    m = _norm_model(post_norm=True)
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    comp = eeonnx.compile(path, tmp_path / "out", split="none", min_key_bits=0, transforms="max",
                          allow_weak=("y", "x"))
    _check_artifact(path, tmp_path / "out", comp, random_feeds(m))
    axes = _transformed_axes(comp)
    assert "gamma" not in axes and "beta" not in axes
    assert axes.get("gamma2") == [0] and axes.get("beta2") == [0]


# --------------------------------------------------------------------------- fuzz
def test_fuzz_transforms_are_exact(tmp_path):
    """Random graphs from the op whitelist (tests/fuzz_graphs.py), compiled with
    --transforms max: every decoded output equals the original's (1e-4 of its largest
    value), whatever groups the classes got. Derandomized: reproducible in CI."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from eeonnx.errors import EEError
    from fuzz_graphs import graphs, validate
    from tests.helpers import run_original

    seen = {"compiled": 0, "continuous": 0}

    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(graphs(max_steps=8), st.binary(min_size=32, max_size=32))
    def check(f, key):
        model = validate(f)
        path = tmp_path / "m.onnx"
        onnx.save(model, path)
        out = tmp_path / "out"
        try:
            comp = eeonnx.compile(path, out, key=Key(key), split="none", min_key_bits=0, transforms="max",
                                  force=True)
        except EEError:
            return
        seen["compiled"] += 1
        seen["continuous"] += bool(comp.transforms)
        feeds = random_feeds(model)
        for w, g, o in zip(run_original(model, feeds), _encrypted_run(out, feeds), model.graph.output):
            w, g = np.asarray(w), np.asarray(g)
            if w.dtype.kind == "f":
                fin = np.isfinite(w)
                assert np.array_equal(fin, np.isfinite(g)), f.code()
                w, g = np.where(fin, w, 0), np.where(fin, g, 0)
            assert_close(g, w, 1e-4, f"{o.name}\n{f.code()}")

    check()
    assert seen["continuous"] >= 20, seen  # the fuzz reaches continuous groups
