"""Elementwise ops: they commute with any permutation of any axis.

Unary ops tie every output axis to the same input axis. Broadcasting ops
align axes from the right (numpy rules); an input axis of static size 1 that
is broadcast carries nothing, every other aligned axis is tied to the output.
"""
from __future__ import annotations

from eeonnx.compiler.rules import NodeView, rule

VALUE_PRESERVING = ("Identity", "Cast", "CastLike")  # integer values pass unchanged
UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg",
    "Reciprocal", "Identity", "Cast", "CastLike", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Clip", "Dropout", "Softmax",
    "LogSoftmax",
)


@rule(*UNARY)
def unary(n: NodeView) -> None:
    """Elementwise on input 0: every axis of every data output follows the input.

    Softmax/LogSoftmax belong here too: normalising over a set of elements is
    unchanged by permuting that set, and every opset's coercion to 2-D only
    groups axes. Dropout's mask output has the input's shape. Clip's bounds
    and CastLike's target are scalars/controls.
    """
    x = n.x(0)
    for i in range(n.n_out):
        if n.has_out(i):
            n.tie(x, n.y(i))
    if n.node.op_type in VALUE_PRESERVING:
        n.flow(0, 0)


def broadcast(n: NodeView, inputs: list[int], output: int = 0) -> None:
    """Tie numpy-broadcast inputs to the output, aligning axes from the right."""
    y = n.y(output)
    ydims = n.out_dims(output)
    for i in inputs:
        if not n.has(i):
            continue
        xs, xd = n.x(i), n.dims(i)
        off = len(y) - len(xs)
        for k, t in enumerate(xs):
            if xd[k] == 1 and ydims[off + k] != 1:
                continue  # broadcast: one value for every output position
            n.unify(t, y[off + k], f"{n.node.op_type}: broadcast axis of unknown size")


BINARY = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod", "BitShift",
)


@rule(*BINARY)
def elementwise(n: NodeView) -> None:
    """Broadcasting elementwise op (variadic Sum/Max/Min/Mean, ternary Where).

    Where selects integer values without computing on them: they flow through."""
    broadcast(n, list(range(n.n_in)))
    if n.node.op_type == "Where":
        n.flow(1, 0)
        n.flow(2, 0)


@rule("Expand")
def expand(n: NodeView) -> None:
    """Broadcast input 0 to the shape given by input 1 (a control tensor)."""
    broadcast(n, [0])
    n.flow(0, 0)
