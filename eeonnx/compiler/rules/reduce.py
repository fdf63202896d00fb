"""Reductions: reducing over a whole axis is invariant to permuting that axis."""
from __future__ import annotations

from eeonnx.compiler.rules import NodeView, rule

REDUCE = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)


@rule(*REDUCE)
def reduce(n: NodeView) -> None:
    """Kept axes follow the input; reduced axes may carry any layout (symmetric functions)."""
    x, y = n.x(0), n.y(0)
    axes = n.ints("axes", 1)
    if axes is None and n.has(1):
        for t in x + y:
            n.pin(t, "reduction axes are computed at run time")
        return
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            n.tie(x, y)
            return
        axes = list(range(len(x)))
    reduced = {a % len(x) for a in axes}
    keep = [t for k, t in enumerate(x) if k not in reduced]
    if n.attr("keepdims", 1):
        n.tie(keep, [t for k, t in enumerate(y) if k not in reduced])
    else:
        n.tie(keep, y)


@rule("LayerNormalization")
def layer_norm(n: NodeView) -> None:
    """Normalises over axes [axis:] (symmetric statistics): Y follows X, Scale and
    B broadcast onto the normalised axes, Mean/InvStdDev keep the leading axes."""
    from eeonnx.compiler.rules.elementwise import broadcast

    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    broadcast(n, [1, 2])
    axis = int(n.attr("axis", -1)) % len(x)
    for i in (1, 2):
        if n.has_out(i):
            stat = n.y(i)
            n.tie(x[:axis], stat[:axis])
