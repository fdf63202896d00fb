"""boundary: build the client graphs that cross the wire.

encode.onnx takes the original inputs and gathers each secret axis by its
index array (encrypted = plain.take(p)); decode.onnx takes the server outputs
and gathers with the inverse (plain = encrypted.take(argsort(p))).

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

from eeonnx.errors import ClearBoundaryError
from eeonnx.passes import fold
from eeonnx.passes.fold import axis_perms

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

    @property
    def secret_axes(self) -> list[int]:
        return [a for a, p in enumerate(self.index) if p is not None]

    @property
    def encrypted(self) -> bool:
        return bool(self.secret_axes) or self.value_index is not None


def _dtype_name(v: ir.Value) -> str:
    return v.dtype.name.lower() if v.dtype is not None else "unknown"


def _shape(v: ir.Value) -> list:
    if v.shape is None:
        return []
    return [d if isinstance(d, int) else (d.value if d.value is not None else "?") for d in v.shape]


def crossings(comp, values: list[ir.Value], is_input: bool) -> list[Crossing]:
    an, perms = comp.analysis, comp.perms
    out = []
    for v in values:
        terms = an.known(v)
        index = axis_perms(terms, perms) if terms is not None else []
        c = Crossing(v.name, v.name, index, _dtype_name(v), _shape(v))
        c.layout = [comp.show(t) for t in terms] if terms is not None else []
        indexes_table = False
        if an.has_slot(v):
            slot = an.slot(v)
            indexes_table = slot.root().term is not None
            vt = an.values.secret_term(slot)
            if vt is not None:
                p = fold.axis_perms([vt], perms)[0]
                if p is not None:
                    c.value_index, c.value_layout = p, comp.show(vt)
        if not c.encrypted:
            c.clear = True
            is_float = v.dtype is not None and v.dtype.is_floating_point()
            if is_input and not is_float and not indexes_table:
                c.reason = "integer/boolean input that indexes no secret axis: public structure"
            elif v.name in comp.allow_clear:
                c.reason = "allowed in the clear (--allow-clear)"
            else:
                c.refused = True
                c.reason = "its shape is unknown" if terms is None else "no secret axis reaches it"
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
    if c.value_index is not None:
        # ids -> argsort(p)[ids] on the way in; p[ids] on the way out
        table = np.argsort(c.value_index) if not inverse else c.value_index
        tname = f"{tag}_value_map"
        inits.append(numpy_helper.from_array(table.astype(dtype), tname))
        nxt = name_out if not steps else f"{tag}_mapped"
        nodes.append(helper.make_node("Gather", [tname, cur], [nxt], axis=0, name=f"{tag}_map_values"))
        cur = nxt
    if not steps and c.value_index is None:
        return [helper.make_node("Identity", [cur], [name_out], name=f"{tag}_identity")], []
    for k, (axis, p) in enumerate(steps):
        idx = np.argsort(p).astype(np.int64) if inverse else p.astype(np.int64)
        iname = f"{tag}_perm_axis{axis}"
        inits.append(numpy_helper.from_array(idx, iname))
        nxt = name_out if k == len(steps) - 1 else f"{tag}_axis{axis}"
        nodes.append(helper.make_node("Gather", [cur, iname], [nxt], axis=axis, name=f"{tag}_gather{axis}"))
        cur = nxt
    return nodes, inits


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
