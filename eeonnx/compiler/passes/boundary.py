"""boundary: build the client graphs that cross the wire.

encode.onnx takes the original inputs and gathers each secret axis by its
index array (encrypted = plain.take(p)); decode.onnx takes the server outputs
and gathers with the inverse (plain = encrypted.take(argsort(p))). Where a
class carries a continuous transform (see ``eeonnx.compiler.groups``),
encode first multiplies the axis by its map on plain indices (Mul by a
scale vector, or MatMul by a matrix) and decode multiplies by the inverse
map after its gathers.

Invariants:
- encode inputs are the original inputs (names, dtypes, shapes), its outputs
  in order are the server inputs in order; decode inputs in order are the
  server outputs, its outputs are the original outputs.
- a content tensor (any output; a floating-point input) with no secret axis
  is refused with ClearBoundaryError unless named in ``allow_clear``; integer
  and boolean inputs without a secret axis (masks, positions, lengths) are
  public structure and pass unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from eeonnx.compiler import layout as L
from eeonnx.errors import ClearBoundaryError
from eeonnx.compiler import groups
from eeonnx.compiler.passes import fold
from eeonnx.compiler.passes.fold import axis_perms

CLIENT_OPSET = 13
CLIENT_IR_VERSION = 7
SUFFIX = "__ee"


@dataclass
class Crossing:
    """One tensor crossing the wire."""

    name: str  # original name (input/output of the original model)
    wire_name: str  # name on the server side
    index: list[np.ndarray | None]  # per-axis index array (None = identity)
    dtype: str
    shape: list
    clear: bool = False
    refused: bool = False  # content that would travel in the clear
    reason: str = ""
    layout: list[str] = field(default_factory=list)
    value_index: np.ndarray | None = None  # integer ids: the indexed axis's index array
    value_layout: str = ""
    maps: list = field(default_factory=list)  # per axis: None, scale vector or matrix (plain order)
    inverse_maps: list = field(default_factory=list)
    secret: list[bool] | None = None  # per axis: under a secret class (whatever its draw)

    @property
    def secret_axes(self) -> list[int]:
        """Axes under a secret class. Decided by the layout, not by the draw: a small class
        drawn as the identity (uniform draws allow it) is still secret, its Gather omitted."""
        if self.secret is not None:
            return [a for a, s in enumerate(self.secret) if s]
        return [a for a, p in enumerate(self.index) if p is not None]

    @property
    def transformed_axes(self) -> list[int]:
        return [a for a, m in enumerate(self.maps) if m is not None]

    @property
    def encrypted(self) -> bool:
        return bool(self.secret_axes) or bool(self.transformed_axes) or self.value_index is not None


def _dtype_name(v: ir.Value) -> str:
    return v.dtype.name.lower() if v.dtype is not None else "unknown"


def shape_list(v: ir.Value) -> list:
    """Dims as written in reports and the manifest: ints, symbol names, '?' if unknown."""
    if v.shape is None:
        return []
    return [d if isinstance(d, int) else (d.value if d.value is not None else "?") for d in v.shape]


def _has_class(comp, t) -> bool:
    return any(v.uid in comp.classes for v in L.free_vars(t))


def crossings(comp, values: list[ir.Value], is_input: bool, refuse: bool = True) -> list[Crossing]:
    an, perms = comp.analysis, comp.perms
    out = []
    for v in values:
        terms = an.known(v)
        index = axis_perms(terms, perms) if terms is not None else []
        c = Crossing(v.name, v.name, index, _dtype_name(v), shape_list(v))
        if terms is not None and comp.transforms:
            c.maps = groups.axis_map(comp, v, terms)
            c.inverse_maps = groups.axis_map(comp, v, terms, inverse=True)
        c.secret = [_has_class(comp, t) for t in terms] if terms is not None else []
        c.layout = [comp.show(t) for t in terms] if terms is not None else []
        indexes_table = False
        if an.has_slot(v):
            slot = an.slot(v)
            indexes_table = slot.root().term is not None
            vt = an.values.secret_term(slot)
            if vt is not None and _has_class(comp, vt):
                c.value_index, c.value_layout = L.materialize(vt, perms), comp.show(vt)
        if not c.encrypted:
            c.clear = True
            is_float = v.dtype is not None and v.dtype.is_floating_point()
            if is_input and not is_float and not indexes_table:
                c.reason = "integer/boolean input that indexes no secret axis: public structure"
            elif v.name in comp.allow_clear:
                c.reason = "allowed in the clear (--allow-clear)"
            elif not refuse:
                c.reason = ("read by the client layers in encode.onnx" if is_input
                            else "made by the client layers in decode.onnx")
            else:
                c.refused = True
                c.reason = ("its shape is unknown (try --dim NAME=SIZE)" if terms is None
                            else "no secret axis reaches it")
        out.append(c)
    return out


def refuse_clear(items: list[Crossing], kind: str) -> None:
    for c in items:
        if c.refused:
            raise ClearBoundaryError(
                f"{kind} '{c.name}' {c.shape} would travel in the clear: {c.reason}. "
                f"Pass --allow-clear {c.name} to accept that"
            )


def _gather_chain(name_in: str, name_out: str, c: Crossing, inverse: bool, tag: str, dtype):
    nodes, inits = [], []
    cur = name_in
    index = c.index
    steps = [(a, p) for a, p in enumerate(index) if p is not None]
    maps = [(a, m) for a, m in enumerate(c.inverse_maps if inverse else c.maps) if m is not None]
    if maps and not inverse:  # transform on plain indices, then permute
        cur = _map_chain(nodes, inits, cur, name_out if not steps else f"{tag}_mapped_axes", maps,
                         len(c.index), tag, dtype)
    if c.value_index is not None:
        # ids -> argsort(p)[ids] on the way in; p[ids] on the way out
        table = np.argsort(c.value_index) if not inverse else c.value_index
        tname = f"{tag}_value_map"
        inits.append(numpy_helper.from_array(table.astype(dtype), tname))
        nxt = name_out if not steps else f"{tag}_mapped"
        nodes.append(helper.make_node("Gather", [tname, cur], [nxt], axis=0, name=f"{tag}_map_values"))
        cur = nxt
    if not steps and c.value_index is None and not maps:
        return [helper.make_node("Identity", [cur], [name_out], name=f"{tag}_identity")], []
    last = name_out if not (maps and inverse) else f"{tag}_permuted"
    for k, (axis, p) in enumerate(steps):
        idx = np.argsort(p).astype(np.int64) if inverse else p.astype(np.int64)
        iname = f"{tag}_perm_axis{axis}"
        inits.append(numpy_helper.from_array(idx, iname))
        nxt = last if k == len(steps) - 1 else f"{tag}_axis{axis}"
        nodes.append(helper.make_node("Gather", [cur, iname], [nxt], axis=axis, name=f"{tag}_gather{axis}"))
        cur = nxt
    if maps and inverse:  # un-permute, then undo the transform on plain indices
        _map_chain(nodes, inits, cur, name_out, maps, len(c.index), tag, dtype)
    return nodes, inits


def _map_chain(nodes, inits, cur: str, name_out: str, maps, rank: int, tag: str, dtype) -> str:
    """x -> x multiplied along each axis by its map: a scale vector (Mul, broadcast)
    or a matrix M (x -> x M on that axis: MatMul, with Transposes around it
    unless the axis is the last)."""
    for k, (axis, m) in enumerate(maps):
        nxt = name_out if k == len(maps) - 1 else f"{tag}_map{axis}"
        mname = f"{tag}_map_axis{axis}"
        if m.ndim == 1:
            shape = [1] * rank
            shape[axis] = -1
            inits.append(numpy_helper.from_array(m.reshape(shape).astype(dtype), mname))
            nodes.append(helper.make_node("Mul", [cur, mname], [nxt], name=f"{tag}_scale{axis}"))
        else:
            inits.append(numpy_helper.from_array(m.astype(dtype), mname))
            if axis == rank - 1:
                nodes.append(helper.make_node("MatMul", [cur, mname], [nxt], name=f"{tag}_mix{axis}"))
            else:
                order = [d for d in range(rank) if d != axis] + [axis]
                back = [int(i) for i in np.argsort(order)]
                t0, t1 = f"{tag}_mix{axis}_in", f"{tag}_mix{axis}_out"
                nodes.append(helper.make_node("Transpose", [cur], [t0], perm=order, name=f"{tag}_mix{axis}_t0"))
                nodes.append(helper.make_node("MatMul", [t0, mname], [t1], name=f"{tag}_mix{axis}"))
                nodes.append(helper.make_node("Transpose", [t1], [nxt], perm=back, name=f"{tag}_mix{axis}_t1"))
        cur = nxt
    return cur


def _value_info(name: str, proto_vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(proto_vi)
    vi.name = name
    return vi


def build_client_graph(kind: str, items: list[Crossing], infos: dict[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    nodes, inits, inputs, outputs = [], [], [], []
    for i, c in enumerate(items):
        vi = infos[c.name]
        wire = c.wire_name + SUFFIX
        if kind == "encode":
            src, dst = c.name, wire
            inputs.append(_value_info(c.name, vi))
            outputs.append(_value_info(wire, vi))
        else:
            src, dst = wire, c.name
            inputs.append(_value_info(wire, vi))
            outputs.append(_value_info(c.name, vi))
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        n, t = _gather_chain(src, dst, c, inverse=(kind == "decode"), tag=f"{kind}{i}", dtype=dtype)
        nodes += n
        inits += t
    graph = helper.make_graph(nodes, kind, inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", CLIENT_OPSET)], producer_name="eeonnx"
    )
    model.ir_version = CLIENT_IR_VERSION
    return model


def value_infos(model: ir.Model) -> dict[str, onnx.ValueInfoProto]:
    """Type protos of the graph inputs/outputs, as the original declares them."""
    out = {}
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        out[v.name] = ir.serde.serialize_value(v)
    return out


class BoundaryPass:
    def __init__(self, comp):
        self.comp = comp

    def __call__(self, model: ir.Model) -> None:
        comp = self.comp
        if comp.split is not None and comp.split.active:
            build_split(comp, model, comp.split)
            return
        state_in = {s.input for s in comp.state}
        state_out = {s.output for s in comp.state}
        comp.inputs = crossings(comp, [v for v in model.graph.inputs if v.name not in state_in], True)
        comp.outputs = crossings(comp, [v for v in model.graph.outputs if v.name not in state_out], False)
        state = crossings(comp, [v for v in model.graph.inputs if v.name in state_in], True)
        refuse_clear(comp.inputs, "input")
        refuse_clear(comp.outputs, "output")
        refuse_clear(state, "state input")
        infos = comp.original_infos
        comp.encode_model = build_client_graph("encode", comp.inputs, infos)
        comp.decode_model = build_client_graph("decode", comp.outputs, infos)


def _rename(node: onnx.NodeProto, inputs: dict[str, str], outputs: dict[str, str]) -> onnx.NodeProto:
    n = onnx.NodeProto()
    n.CopyFrom(node)
    for k, name in enumerate(n.input):
        n.input[k] = inputs.get(name, name)
    for k, name in enumerate(n.output):
        n.output[k] = outputs.get(name, name)
    return n


def _subgraph_model(full: onnx.ModelProto, name: str, nodes, inputs, outputs, extra_inits=()) -> onnx.ModelProto:
    used = {i for n in nodes for i in n.input}
    inits = [t for t in full.graph.initializer if t.name in used] + list(extra_inits)
    graph = helper.make_graph(list(nodes), name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=list(full.opset_import), producer_name="eeonnx")
    model.ir_version = full.ir_version
    return model


def serialize_self_contained(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a proto whose tensors all hold their data: an external-data
    initializer (still a reference into the source's data file, e.g. an
    unpermuted weight) is read into the proto, so the graphs cut from it
    (encode, decode, server) never point at a file their directory lacks;
    emit decides afresh which of them go to a data file of their own."""
    full = ir.serde.serialize_model(model)
    for tensor in full.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            value = model.graph.initializers[tensor.name].const_value
            tensor.CopyFrom(numpy_helper.from_array(value.numpy(), tensor.name))
    return full


def build_split(comp, model: ir.Model, plan) -> None:
    """Server = the nodes between the cut; encode = input gathers + client prefix;
    decode = client suffix + output gathers. Client layers run the folded weights,
    so wire tensors leave them already in the server's layout."""
    full = serialize_self_contained(model)
    infos = {vi.name: vi for vi in list(full.graph.value_info) + list(full.graph.input) + list(full.graph.output)}
    by_name = {v.name: v for v in model.graph.inputs}
    by_name.update({o.name: o for n in model.graph for o in n.outputs})
    for name in plan.wire_in + plan.wire_out:
        if name not in infos:
            infos[name] = ir.serde.serialize_value(by_name[name])
    state_in = {s.input for s in comp.state}
    state_out = {s.output for s in comp.state}
    client = plan.prefix | plan.suffix
    server_nodes = [n for k, n in enumerate(full.graph.node) if k not in client]
    comp.server_proto = _subgraph_model(
        full, full.graph.name or "server", server_nodes,
        [infos[n] for n in plan.wire_in], [infos[n] for n in plan.wire_out])

    original_in = [v.name for v in model.graph.inputs if v.name not in state_in]
    original_out = [v.name for v in model.graph.outputs if v.name not in state_out]
    comp.inputs = crossings(comp, [by_name[n] for n in original_in], True, refuse=False)

    # encode: gathers on original inputs, then the prefix
    nodes, inits, outs = [], [], []
    renamed = {}
    for i, c in enumerate(comp.inputs):
        if c.encrypted:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(comp.original_infos[c.name].type.tensor_type.elem_type)
            n, t = _gather_chain(c.name, c.name + SUFFIX, c, inverse=False, tag=f"encode{i}", dtype=dtype)
            nodes += n
            inits += t
            renamed[c.name] = c.name + SUFFIX
        c.clear = not c.encrypted
    nodes += [_rename(full.graph.node[k], renamed, {}) for k in sorted(plan.prefix)]
    for name in plan.wire_in:
        if name in state_in:
            continue
        if name in original_in:
            if name not in renamed:
                nodes.append(helper.make_node("Identity", [name], [name + SUFFIX], name=f"encode_pass_{name}"))
                renamed[name] = name + SUFFIX
            outs.append(_value_info(renamed[name], infos[name]))
        else:
            outs.append(_value_info(name, infos[name]))
    comp.encode_model = _subgraph_model(full, "encode", nodes, [comp.original_infos[n] for n in original_in],
                                        outs, inits)

    # decode: the suffix, then inverse gathers on original outputs still in the server layout
    nodes, inits, ins = [], [], []
    suffix_inputs = {}
    for name in plan.wire_out:
        if name in state_out:
            continue
        wire = name + SUFFIX if name in original_out else name
        ins.append(_value_info(wire, infos[name]))
        if name in original_out:
            suffix_inputs[name] = wire
    produced_by_suffix = {o for k in plan.suffix for o in full.graph.node[k].output}
    out_rename = {n: n + "__sfx" for n in original_out if n in produced_by_suffix}
    # an original output that later suffix nodes also read (BERT's pooler reads
    # last_hidden_state) is read under its renamed, still-permuted name
    nodes += [_rename(full.graph.node[k], {**suffix_inputs, **out_rename}, out_rename) for k in sorted(plan.suffix)]
    items = crossings(comp, [by_name[n] for n in original_out], False, refuse=False)
    for i, c in enumerate(items):
        src = out_rename.get(c.name) or suffix_inputs.get(c.name, c.name + SUFFIX)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(comp.original_infos[c.name].type.tensor_type.elem_type)
        n, t = _gather_chain(src, c.name, c, inverse=True, tag=f"decode{i}", dtype=dtype)
        nodes += n
        inits += t
        c.clear = not c.encrypted
    comp.outputs = items
    comp.decode_model = _subgraph_model(full, "decode", nodes, ins,
                                        [comp.original_infos[n] for n in original_out], inits)
