"""The layout algebra on its own (eeonnx.compiler.layout): terms, unification, materialization.

The solver's contract: after ``unify(a, b)``, *every* assignment of permutations to the
remaining free variables makes ``materialize(a) == materialize(b)`` (pinned variables
materialize as the identity). Most tests check exactly that with random permutations,
plus the structure the unifier chose (refinement vs pinning).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eeonnx.compiler import layout as L


def unifier():
    return L.Unifier(lambda: ("node0", "TestOp"))


def random_perms(*terms, seed=0):
    rng = np.random.default_rng(seed)
    perms = {}
    for t in terms:
        for v in L.free_vars(t):
            perms.setdefault(v.uid, rng.permutation(v.size).astype(np.int64))
    return perms


def assert_same_everywhere(a, b, trials=5):
    """materialize(a) == materialize(b) for several random assignments of the free variables."""
    for seed in range(trials):
        perms = random_perms(a, b, seed=seed)
        pa, pb = L.materialize(a, perms), L.materialize(b, perms)
        np.testing.assert_array_equal(pa, pb)
        assert sorted(pa.tolist()) == list(range(L.resolve(a).size))  # a permutation


def is_identity(t, seed=0):
    p = L.materialize(t, random_perms(t, seed=seed))
    return np.array_equal(p, np.arange(p.size))


# --------------------------------------------------------------------------
# basic terms
# --------------------------------------------------------------------------
def test_fresh_and_trivial_sizes():
    assert isinstance(L.fresh(5), L.Var)
    assert isinstance(L.fresh(1), L.Public)
    assert isinstance(L.fresh(None), L.Public)
    a = L.Var(3)
    assert L.kron(L.Public(1), a, L.Public(1)) is a
    assert L.cat(a) is a
    assert isinstance(L.cat(L.Public(2), L.Public(3)), L.Public)
    assert L.cat(L.Public(2), L.Public(3)).size == 5
    assert L.kron(L.Var(2), L.Var(3)).size == 6


def test_nested_structures_flatten():
    a, b, c = L.Var(2), L.Var(3), L.Var(4)
    k = L.kron(L.kron(a, b), c)
    assert isinstance(k, L.Kron) and len(k.factors) == 3
    cc = L.cat(L.cat(a, b), c)
    assert isinstance(cc, L.Cat) and len(cc.parts) == 3


def test_free_vars_order_and_uniqueness():
    a, b = L.Var(2), L.Var(3)
    t = L.Cat((L.Kron((a, b)), a))
    assert [v.uid for v in L.free_vars(t)] == [a.uid, b.uid]


# --------------------------------------------------------------------------
# unification
# --------------------------------------------------------------------------
def test_unify_var_var():
    u = unifier()
    a, b = L.Var(5), L.Var(5)
    u.unify(a, b, "same class")
    assert L.resolve(a) is L.resolve(b)
    assert a.pin is None and b.pin is None
    perms = random_perms(a)
    p = L.materialize(a, perms)
    np.testing.assert_array_equal(L.materialize(b, perms), p)
    assert len(L.free_vars(L.cat(a, b))) == 1


def test_unify_is_transitive():
    u = unifier()
    a, b, c = L.Var(4), L.Var(4), L.Var(4)
    u.unify(a, b, "")
    u.unify(c, b, "")
    assert L.resolve(a) is L.resolve(c)


def test_unify_var_with_public_pins():
    u = unifier()
    a = L.Var(4)
    u.unify(a, L.Public(4), "the op reads positions")
    root = L.resolve(a)
    assert root.pin is not None
    assert root.pin.reason == "the op reads positions"
    assert (root.pin.node, root.pin.op_type) == ("node0", "TestOp")
    assert L.secret_vars(a) == []
    # a pinned variable materializes as the identity whatever permutation it is offered
    np.testing.assert_array_equal(L.materialize(a, {root.uid: np.array([3, 2, 1, 0])}), np.arange(4))
    assert L.show(a) == "P"


def test_pin_spreads_through_a_class():
    u = unifier()
    a, b, c = L.Var(3), L.Var(3), L.Var(3)
    u.unify(a, b, "")
    u.pin(b, "pinned later")
    u.unify(c, a, "")
    for t in (a, b, c):
        assert L.secret_vars(t) == []
        assert is_identity(t)


def test_size_mismatch_or_symbolic_pins_both():
    u = unifier()
    a, b = L.Var(4), L.Var(6)
    u.unify(a, b, "mismatch")
    assert L.resolve(a).pin is not None and L.resolve(b).pin is not None
    c = L.Var(4)
    u.unify(c, L.Public(None), "symbolic")
    assert L.resolve(c).pin is not None


def test_cat_vs_cat_refines_block_boundaries():
    """Cat(A[2], B[4]) = Cat(C[3], D[3]): cuts at 2, 3 -> C = Cat(A, B1), B = Cat(B1, D)."""
    u = unifier()
    A, B, C, D = L.Var(2), L.Var(4), L.Var(3), L.Var(3)
    x, y = L.cat(A, B), L.cat(C, D)
    u.unify(x, y, "")
    assert all(v.pin is None for v in L.free_vars(x) + L.free_vars(y))
    rc, rb = L.resolve(C), L.resolve(B)
    assert isinstance(rc, L.Cat) and [p.size for p in rc.parts] == [2, 1]
    assert isinstance(rb, L.Cat) and [p.size for p in rb.parts] == [1, 3]
    assert L.resolve(rc.parts[0]) is L.resolve(A)
    assert L.resolve(rb.parts[1]) is L.resolve(D)
    # the shared middle element (offset 2) is a size-1 block: public on both sides
    assert isinstance(L.resolve(rc.parts[1]), L.Public) and isinstance(L.resolve(rb.parts[0]), L.Public)
    assert_same_everywhere(x, y)
    # blocks of sizes 2, 1, 3 remain; only A and D are free
    assert sorted(v.size for v in L.free_vars(x)) == [2, 3]


def test_var_vs_cat_binds_the_var():
    u = unifier()
    v = L.Var(7)
    c = L.cat(L.Var(3), L.Var(4))
    u.unify(v, c, "")
    assert isinstance(L.resolve(v), L.Cat)
    assert_same_everywhere(v, c)


def test_kron_refinement_4x6_vs_2x12():
    u = unifier()
    a, b, c, d = L.Var(4), L.Var(6), L.Var(2), L.Var(12)
    x, y = L.kron(a, b), L.kron(c, d)
    u.unify(x, y, "")
    assert all(v.pin is None for v in L.free_vars(x) + L.free_vars(y))
    ra, rd = L.resolve(a), L.resolve(d)
    assert isinstance(ra, L.Kron) and [f.size for f in ra.factors] == [2, 2]
    assert isinstance(rd, L.Kron) and [f.size for f in rd.factors] == [2, 6]
    assert L.resolve(ra.factors[0]) is L.resolve(c)
    assert L.resolve(rd.factors[1]) is L.resolve(b)
    assert_same_everywhere(x, y)
    # the refined structure still has secret freedom: not the identity in general
    assert not is_identity(x)


def test_kron_4x6_vs_6x4_pins():
    u = unifier()
    a, b, c, d = L.Var(4), L.Var(6), L.Var(6), L.Var(4)
    x, y = L.kron(a, b), L.kron(c, d)
    u.unify(x, y, "4x6 is not 6x4")
    for v in (a, b, c, d):
        assert L.resolve(v).pin is not None
        assert L.resolve(v).pin.reason == "4x6 is not 6x4"
    assert is_identity(x) and is_identity(y)


def test_var_vs_kron_binds_the_var():
    u = unifier()
    v = L.Var(12)
    k = L.kron(L.Var(3), L.Var(4))
    u.unify(v, k, "")
    assert isinstance(L.resolve(v), L.Kron)
    assert_same_everywhere(v, k)


def test_kron_vs_cat_splits_outer_factor():
    """Kron(G[2], H[3]) = Cat(X[3], Y[3]): the outer factor splits into two size-1 blocks
    (public), each block is the inner factor."""
    u = unifier()
    g, h, x, y = L.Var(2), L.Var(3), L.Var(3), L.Var(3)
    k, c = L.kron(g, h), L.cat(x, y)
    u.unify(k, c, "")
    assert L.resolve(x) is L.resolve(h) and L.resolve(y) is L.resolve(h)
    assert_same_everywhere(k, c)
    assert L.resolve(h).pin is None


def test_kron_vs_cat_coarser_blocks():
    """Kron(G[4], H[2]) = Cat(X[4], Y[4]): blocks of two inner copies each."""
    u = unifier()
    g, h, x, y = L.Var(4), L.Var(2), L.Var(4), L.Var(4)
    k, c = L.kron(g, h), L.cat(x, y)
    u.unify(k, c, "")
    assert all(v.pin is None for v in L.free_vars(k))
    assert_same_everywhere(k, c)


def test_kron_vs_cat_incompatible_pins():
    u = unifier()
    k, c = L.kron(L.Var(2), L.Var(3)), L.cat(L.Var(2), L.Var(4))
    u.unify(k, c, "no common structure")
    assert is_identity(k) and is_identity(c)
    assert all(v.pin is not None for v in L.free_vars(k) + L.free_vars(c))


def test_rotate_half_unifies_the_halves():
    """x = Cat(A, B); rotate_half(x) = Cat(B, A) is added to x: A ~ B, x = Cat(A, A)."""
    u = unifier()
    A, B = L.Var(4), L.Var(4)
    x = L.cat(A, B)
    u.unify(L.cat(B, A), x, "rotate_half")
    assert L.resolve(A) is L.resolve(B)
    assert A.pin is None
    p = L.materialize(x, random_perms(x, seed=3))
    np.testing.assert_array_equal(p[4:], p[:4] + 4)  # pair-preserving: same perm on both halves


def test_rotate_half_from_a_whole_var():
    """Starting from one Var(8) sliced in halves (as Slice does) gives the same result."""
    u = unifier()
    X, A, B = L.Var(8), L.Var(4), L.Var(4)
    u.unify(X, L.cat(A, B), "slice")
    u.unify(L.cat(B, A), X, "rotate_half")
    assert L.resolve(A) is L.resolve(B)
    assert len(L.secret_vars(X)) == 1


def test_split_and_factorize_directly():
    u = unifier()
    v = L.Var(6)
    pieces = u.split(v, [2, 4], "")
    assert [p.size for p in pieces] == [2, 4]
    assert_same_everywhere(v, L.cat(*pieces))
    w = L.Var(6)
    factors = u.factorize(w, [2, 3])
    assert [f.size for f in factors] == [2, 3]
    assert_same_everywhere(w, L.kron(*factors))
    # a Kron cannot be split into blocks that are not multiples of its inner size
    assert u.split(L.kron(L.Var(2), L.Var(3)), [2, 4], "") is None
    # a Cat has no Kron factorization
    assert u.factorize(L.cat(L.Var(2), L.Var(2)), [2, 2]) is None


def test_pinned_var_keeps_pin_when_refined():
    u = unifier()
    v = L.Var(6)
    u.pin(v, "earlier")
    pieces = u.factorize(v, [2, 3])
    assert all(L.resolve(p).pin is not None for p in pieces)
    assert is_identity(v)


# --------------------------------------------------------------------------
# materialize against brute force
# --------------------------------------------------------------------------
def test_materialize_var_and_public():
    v = L.Var(5)
    p = np.array([4, 0, 3, 1, 2])
    np.testing.assert_array_equal(L.materialize(v, {v.uid: p}), p)
    np.testing.assert_array_equal(L.materialize(v, {}), np.arange(5))  # unknown -> identity
    np.testing.assert_array_equal(L.materialize(L.Public(3), {}), np.arange(3))


def test_materialize_kron_is_permuting_both_axes():
    rng = np.random.default_rng(0)
    a, b = L.Var(3), L.Var(4)
    pa, pb = rng.permutation(3), rng.permutation(4)
    idx = L.materialize(L.kron(a, b), {a.uid: pa, b.uid: pb})
    ref = np.arange(12).reshape(3, 4)[pa][:, pb].reshape(-1)
    np.testing.assert_array_equal(idx, ref)
    # the meaning: encrypted = plain.take(idx) is the plain [3, 4] array permuted on both axes
    x = rng.standard_normal(12)
    np.testing.assert_array_equal(x.take(idx), x.reshape(3, 4)[pa][:, pb].reshape(-1))


def test_materialize_kron_three_factors_and_public():
    rng = np.random.default_rng(1)
    a, c = L.Var(2), L.Var(5)
    pa, pc = rng.permutation(2), rng.permutation(5)
    idx = L.materialize(L.kron(a, L.Public(3), c), {a.uid: pa, c.uid: pc})
    ref = np.arange(30).reshape(2, 3, 5)[pa][:, :, pc].reshape(-1)
    np.testing.assert_array_equal(idx, ref)


def test_materialize_cat_permutes_within_blocks():
    rng = np.random.default_rng(2)
    a, b = L.Var(3), L.Var(4)
    pa, pb = rng.permutation(3), rng.permutation(4)
    idx = L.materialize(L.cat(a, L.Public(2), b), {a.uid: pa, b.uid: pb})
    np.testing.assert_array_equal(idx, np.concatenate([pa, [3, 4], pb + 5]))
    x = rng.standard_normal(9)
    np.testing.assert_array_equal(x.take(idx), np.concatenate([x[:3][pa], x[3:5], x[5:][pb]]))


def test_materialize_kron_of_cat():
    rng = np.random.default_rng(3)
    a, b, c = L.Var(2), L.Var(3), L.Var(4)
    pa, pb, pc = (rng.permutation(n) for n in (2, 3, 4))
    inner = np.concatenate([pa, pb + 2])                          # Cat(a, b) on 5
    idx = L.materialize(L.kron(L.cat(a, b), c), {a.uid: pa, b.uid: pb, c.uid: pc})
    ref = np.arange(20).reshape(5, 4)[inner][:, pc].reshape(-1)
    np.testing.assert_array_equal(idx, ref)


def test_show():
    a, b = L.Var(2), L.Var(3)
    names = {a.uid: "c0", b.uid: "c1"}
    assert L.show(L.kron(a, b), names) == "kron(c0[2], c1[3])"
    assert L.show(L.cat(a, L.Public(4)), names) == "cat(c0[2], P)"
    assert L.show(L.Public(7)) == "P"


def test_log2_factorial():
    assert L.log2_factorial(1) == pytest.approx(0.0)
    assert L.log2_factorial(3) == pytest.approx(math.log2(6))
    assert L.log2_factorial(64) == pytest.approx(math.log2(math.factorial(64)))


# --------------------------------------------------------------------------
# property: unification never leaves two sides different
# --------------------------------------------------------------------------
def _factors_with_product(draw, n):
    """A random factorization of n into small factors (order matters)."""
    out = []
    while n > 1:
        choices = [f for f in (2, 3, 4, 6) if n % f == 0]
        f = draw(st.sampled_from(choices))
        out.append(f)
        n //= f
    return out or [1]


@st.composite
def kron_pair(draw):
    n = draw(st.sampled_from([4, 6, 8, 12, 24, 36]))
    return _factors_with_product(draw, n), _factors_with_product(draw, n)


@settings(max_examples=60, deadline=None)
@given(kron_pair())
def test_kron_unification_is_sound(pair):
    fa, fb = pair
    u = unifier()
    x = L.kron(*[L.fresh(f) for f in fa])
    y = L.kron(*[L.fresh(f) for f in fb])
    u.unify(x, y, "")
    assert_same_everywhere(x, y, trials=3)


@st.composite
def cat_pair(draw):
    n = draw(st.integers(2, 12))

    def blocks():
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=3)))
        edges = [0] + cuts + [n]
        return [b - a for a, b in zip(edges, edges[1:])]

    return blocks(), blocks()


@settings(max_examples=60, deadline=None)
@given(cat_pair(), st.booleans())
def test_cat_unification_is_sound(pair, swap):
    ba, bb = pair
    u = unifier()
    x = L.cat(*[L.fresh(s) for s in ba])
    y = L.cat(*[L.fresh(s) for s in bb])
    if swap:
        x, y = y, x
    u.unify(x, y, "")
    assert_same_everywhere(x, y, trials=3)
    # Cat vs Cat of secret blocks always refines (never pins)
    if min(ba + bb) > 1:
        assert all(v.pin is None for v in L.free_vars(x) + L.free_vars(y))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 3, 4]), st.sampled_from([2, 3, 4]), st.lists(st.sampled_from([2, 3, 4, 6, 8]),
                                                                        min_size=1, max_size=3))
def test_kron_vs_cat_is_sound(outer, inner, blocks):
    n = outer * inner
    total = sum(blocks)
    if total != n:
        blocks = blocks + [n - total] if total < n else [n]
    u = unifier()
    k = L.kron(L.Var(outer), L.Var(inner))
    c = L.cat(*[L.fresh(b) for b in blocks])
    u.unify(k, c, "")
    assert_same_everywhere(k, c, trials=3)


# --------------------------------------------------------------------------
# reporting: a weight's class that meets a positional axis is a reported loss
# --------------------------------------------------------------------------
needs_anchor = pytest.mark.skipif(not hasattr(L, "anchor"), reason="no anchored classes in this layout module")


@needs_anchor
def test_anchored_class_meeting_positional_axis_is_reported():
    u = unifier()
    weight_axis, spatial = L.Var(8), L.Var(8)
    L.anchor(weight_axis)
    u.pin(spatial, "positional", report=False)
    u.unify(weight_axis, spatial, "elementwise")
    pin = L.resolve(weight_axis).pin
    assert pin is not None and not pin.inherent and pin.node == "node0"
    assert is_identity(weight_axis)


@needs_anchor
def test_reported_pin_survives_a_second_unification():
    u = unifier()
    weight_axis, spatial = L.Var(8), L.Var(8)
    L.anchor(weight_axis)
    u.pin(spatial, "positional", report=False)
    u.unify(weight_axis, spatial, "first")
    u.unify(weight_axis, spatial, "second")
    pin = L.resolve(weight_axis).pin
    assert pin is not None and not pin.inherent, pin


@needs_anchor
def test_fresh_activation_axis_meeting_positional_axis_is_not_a_loss():
    u = unifier()
    activation, spatial = L.Var(8), L.Var(8)
    u.pin(spatial, "positional", report=False)
    u.unify(activation, spatial, "elementwise")
    assert L.resolve(activation).pin.inherent
