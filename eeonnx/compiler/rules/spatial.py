"""Convolutions, pooling, normalisation, resampling: channels are secret, space is positional.

Layout of grouped channels: with g groups, the channel axis is
``Kron(G, per_group)``: the group order is one secret permutation shared by
input, weight and output, and each side permutes within its groups.
"""
from __future__ import annotations


from eeonnx.compiler import layout as L
from eeonnx.compiler.rules import NodeView, rule


@rule("Conv", mixes=True)
def conv(n: NodeView) -> None:
    """X[N,C,*], W[M,C/g,*k], B[M] -> Y[N,M,*]: channels tied through W, space pinned."""
    x, w, y = n.x(0), n.x(1), n.y(0)
    conv_channels(n, x, w, y, n.dims(1)[0])
    if n.has(2):
        n.unify(n.x(2)[0], y[1])


def conv_channels(n: NodeView, x, w, y, m) -> None:
    """The equations of Conv on its data (x, w, y terms; m = output channels):
    shared by Conv and the quantized convolutions."""
    n.public(*x[2:], *y[2:], *w[2:])
    n.unify(x[0], y[0])
    g = int(n.attr("group", 1))
    groups = L.fresh(g)
    n.unify(x[1], L.kron(groups, w[1]), f"{n.node.op_type}: channel count does not match groups")
    if isinstance(m, int) and m % g == 0:
        n.unify(w[0], L.kron(groups, L.fresh(m // g)))
    n.unify(y[1], w[0])


@rule("ConvTranspose", mixes=True)
def conv_transpose(n: NodeView) -> None:
    """X[N,C,*], W[C,M/g,*k], B[M] -> Y[N,M,*]."""
    x, w, y = n.x(0), n.x(1), n.y(0)
    n.public(*x[2:], *y[2:], *w[2:])
    n.unify(x[0], y[0])
    g = int(n.attr("group", 1))
    c = n.dims(1)[0]
    groups = L.fresh(g)
    n.unify(x[1], w[0])
    if isinstance(c, int) and c % g == 0:
        n.unify(w[0], L.kron(groups, L.fresh(c // g)))
    n.unify(y[1], L.kron(groups, w[1]), "ConvTranspose: channel count does not match groups")
    if n.has(2):
        n.unify(n.x(2)[0], y[1])


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(n: NodeView) -> None:
    """Pooling acts on each channel separately. MaxPool's Indices output flattens
    (n, c, h, w) into one number, so when it is used the channel axis is pinned."""
    x, y = n.x(0), n.y(0)
    n.public(*x[2:], *y[2:])
    n.tie(x[:2], y[:2])
    if n.has_out(1):
        idx = n.y(1)
        n.public(*idx)
        n.pin(x[0], "Indices output encodes the batch position")
        n.pin(x[1], "Indices output encodes the channel position")


def _per_channel(n: NodeView, params: list[int]) -> None:
    """Y follows X elementwise; per-channel parameters follow X's axis 1 (and on)."""
    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    for i in params:
        if n.has(i):
            p = n.x(i)
            n.tie(p, x[1 : 1 + len(p)])


@rule("BatchNormalization")
def batch_norm(n: NodeView) -> None:
    """Per-channel affine; training-mode outputs (running/saved stats) are per channel."""
    _per_channel(n, [1, 2, 3, 4])
    x = n.x(0)
    for i in range(1, n.n_out):
        if n.has_out(i):
            s = n.y(i)
            n.tie(s, x[1 : 1 + len(s)])


@rule("InstanceNormalization")
def instance_norm(n: NodeView) -> None:
    """Per-channel normalisation over spatial axes (a symmetric reduction)."""
    _per_channel(n, [1, 2])


@rule("LRN")
def lrn(n: NodeView) -> None:
    """Sums over a window of neighbouring channels: not equivariant on channels."""
    x, y = n.x(0), n.y(0)
    n.tie(x, y)
    n.pin(x[1], "sums over neighbouring channels")


@rule("Pad")
def pad(n: NodeView) -> None:
    """Axes with zero padding on both sides follow the input; padded axes are pinned."""
    x, y = n.x(0), n.y(0)
    pads = n.ints("pads", 1)
    if pads is None:
        pads = n.ints("paddings")
    axes_const = n.const(3)
    axes = None if axes_const is None else [int(a) for a in axes_const.reshape(-1)]
    r = len(x)
    if pads is None or (n.has(3) and axes is None):
        for a, b in zip(x, y):
            n.pin(a, "pads are not constant")
            n.pin(b, "pads are not constant")
        return
    axes = [a % r for a in axes] if axes is not None else list(range(r))
    padded = {ax for k, ax in enumerate(axes) if pads[k] != 0 or pads[k + len(axes)] != 0}
    for k in range(r):
        if k in padded:
            n.pin(x[k], "axis is padded")
            n.pin(y[k], "axis is padded")
        else:
            n.unify(x[k], y[k])


def _unit_scale_axes(n: NodeView, in_dims: list, out_dims: list) -> set[int]:
    """Axes that Resize/Upsample provably leaves untouched (scale exactly 1)."""
    if n.attr("coordinate_transformation_mode", b"half_pixel") in ("tf_crop_and_resize", b"tf_crop_and_resize"):
        return set()
    policy = n.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", b"stretch"):
        return set()
    scales = None
    attr_scales = n.attr("scales")
    if attr_scales is not None:
        scales = list(attr_scales)
    else:
        for idx in ((2, 1) if n.node.op_type == "Resize" else (1,)):
            c = n.const(idx)
            if c is not None and c.size:
                scales = [float(v) for v in c.reshape(-1)]
                break
    sizes = n.const(3) if n.node.op_type == "Resize" else None
    axes = n.attr("axes")
    r = len(in_dims)
    axes = [a % r for a in axes] if axes is not None else list(range(r))
    out = set()
    for k, ax in enumerate(axes):
        if scales is not None and k < len(scales) and scales[k] == 1.0:
            out.add(ax)
        elif sizes is not None and sizes.size and k < sizes.size and int(sizes.reshape(-1)[k]) == in_dims[ax]:
            if scales is None:
                out.add(ax)
    out |= set(range(r)) - set(axes)
    return {a for a in out if in_dims[a] == out_dims[a]}


@rule("Resize", "Upsample")
def resize(n: NodeView) -> None:
    """Resampling mixes neighbours along scaled axes; axes with scale 1 follow the input."""
    x, y = n.x(0), n.y(0)
    keep = _unit_scale_axes(n, n.dims(0), n.out_dims(0))
    for k in range(len(x)):
        if k in keep:
            n.unify(x[k], y[k])
        else:
            n.pin(x[k], "axis is resampled")
            n.pin(y[k], "axis is resampled")


@rule("DepthToSpace")
def depth_to_space(n: NodeView) -> None:
    """DCR: C = (b, b, C'); CRD: C = (C', b, b). The b factors move into space."""
    x, y = n.x(0), n.y(0)
    b = int(n.attr("blocksize"))
    blocks = L.Public(b * b)
    n.public(*x[2:], *y[2:])
    n.unify(x[0], y[0])
    mode = n.attr("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    n.unify(x[1], L.kron(y[1], blocks) if mode == "CRD" else L.kron(blocks, y[1]))


@rule("SpaceToDepth")
def space_to_depth(n: NodeView) -> None:
    """Y's channels are (b, b, C): the block offsets are outer, input channels inner."""
    x, y = n.x(0), n.y(0)
    b = int(n.attr("blocksize"))
    n.public(*x[2:], *y[2:])
    n.unify(x[0], y[0])
    n.unify(y[1], L.kron(L.Public(b * b), x[1]))


