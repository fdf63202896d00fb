"""Recurrent layers (LSTM, GRU, RNN): the hidden axis is one secret class.

Every gate is ``f(W_g x + R_g h + Wb_g + Rb_g (+ P_g . c))`` with elementwise
activations (every activation the spec allows, ``clip`` included, is
elementwise), and GRU's reset gate multiplies ``h`` or ``R_h h`` elementwise,
with or without ``linear_before_reset``. So with one permutation H of the
hidden units and Q of the input features,

    W_g' = H W_g Q^T,  R_g' = H R_g H^T,  b_g' = H b_g,  P_g' = H P_g,
    h0' = H h0,  c0' = H c0   =>   Y' = H Y, Y_h' = H Y_h, Y_c' = H Y_c

exactly, at every time step. The gates are stacked on one axis (LSTM: i, o,
f, c; GRU: z, r, h; RNN: one), each block of ``hidden`` rows permuted by the
same H: ``W.1 = R.1 = Kron(Public(G), H)`` (= Cat(H, ..., H)), ``B.1 =
Kron(Public(2G), H)`` (W and R biases), ``P.1 = Kron(Public(3), H)``.

One H serves both directions of a bidirectional layer: the directions are
slices of one tensor along ``num_directions``, and a layout is per axis, so
permuting W's hidden axis permutes both slices alike (which is exact). The
direction axis is positional (forward and reverse are not interchangeable),
the sequence axis is read in order (pinned), the batch axis is independent
per element (tied across X, sequence_lens, initial and output states).
``layout=1`` (opset 14+) swaps batch and sequence in X and Y and puts batch
first in the state tensors.
"""
from __future__ import annotations

from eeonnx.compiler import layout as L
from eeonnx.compiler.rules import NodeView, rule

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ_REASON = "the recurrence reads the sequence axis in order"


@rule("LSTM", "GRU", "RNN", mixes=True)
def recurrent(n: NodeView) -> None:
    """X[seq,batch,in], W[dir,G*h,in], R[dir,G*h,h], B[dir,2G*h] -> Y[seq,dir,batch,h], Y_h, Y_c."""
    op = n.node.op_type
    g = GATES[op]
    batch_first = int(n.attr("layout", 0)) == 1
    x, w, r = n.x(0), n.x(1), n.x(2)
    hidden = n.dims(2)[-1]
    if not isinstance(hidden, int):
        hidden = n.attr("hidden_size")
    hid = L.fresh(hidden if isinstance(hidden, int) else None)
    gates = lambda k: L.kron(L.Public(k), hid)  # noqa: E731 - k stacked copies of H

    seq, batch = (x[1], x[0]) if batch_first else (x[0], x[1])
    n.pin(seq, SEQ_REASON)
    n.unify(x[2], w[2], f"{op}: input features do not match W")
    n.public(w[0], r[0])
    n.unify(w[1], gates(g), f"{op}: W's gate axis is not {g} blocks of hidden_size")
    n.unify(r[1], gates(g), f"{op}: R's gate axis is not {g} blocks of hidden_size")
    n.unify(r[2], hid, f"{op}: R's hidden axis does not match hidden_size")
    if n.has(3):
        b = n.x(3)
        n.public(b[0])
        n.unify(b[1], gates(2 * g), f"{op}: B is not {2 * g} blocks of hidden_size")
    if n.has(4):  # sequence_lens[batch]: lengths on the (public) sequence axis
        n.unify(n.x(4)[0], batch)

    def state(t: list[L.Term]) -> None:
        """[dir, batch, h] (layout 0) or [batch, dir, h] (layout 1)."""
        d, bt = (t[1], t[0]) if batch_first else (t[0], t[1])
        n.public(d)
        n.unify(bt, batch)
        n.unify(t[2], hid, f"{op}: state's hidden axis does not match hidden_size")

    for i in (5, 6) if op == "LSTM" else (5,):  # initial_h, initial_c
        if n.has(i):
            state(n.x(i))
    if op == "LSTM" and n.has(7):  # peepholes P[dir, 3*h] (i, o, f)
        p = n.x(7)
        n.public(p[0])
        n.unify(p[1], gates(3), f"{op}: P is not 3 blocks of hidden_size")

    if n.has_out(0):  # Y[seq, dir, batch, h] or [batch, seq, dir, h]
        y = n.y(0)
        ys, yd, yb = (y[1], y[2], y[0]) if batch_first else (y[0], y[1], y[2])
        n.pin(ys, SEQ_REASON)
        n.public(yd)
        n.unify(yb, batch)
        n.unify(y[3], hid, f"{op}: Y's hidden axis does not match hidden_size")
    for i in (1, 2) if op == "LSTM" else (1,):  # Y_h, Y_c
        if n.has_out(i):
            state(n.y(i))
