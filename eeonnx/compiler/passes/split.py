"""split: decide where the encode/decode boundary sits (the client split).

A permutation is only as strong as its axis: a class of n elements gives
log2(n!) bits. Every content tensor that crosses the wire (float tensors,
integer ids that index a permuted table; not masks, positions or the
server-side state) must reach ``min_bits``. With ``mode="auto"`` the
smallest convex prefix of the graph moves into encode.onnx and the smallest
suffix into decode.onnx until that holds:

- prefix: the consumers of a weak wire tensor move to the client together
  with everything they depend on (closed under predecessors);
- suffix: the producer of a weak wire tensor moves to the client together
  with everything that depends on it (closed under successors).
So no tensor goes server -> client -> server. The analysis reads layouts
only, never op names.

Invariant: leaves the model unchanged; sets ``comp.split`` (a SplitPlan) and
makes classes that no longer reach the server (not in a server weight, not
on a wire tensor) the identity, so client layers need no extra Gather.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx_ir as ir

from eeonnx.compiler import layout as L
from eeonnx.errors import ClearBoundaryError, EEError
from eeonnx.compiler.passes.boundary import shape_list
from eeonnx.compiler.passes.propagate import all_initializers, outer_reads


class SplitError(EEError):
    """No convex split gives every crossing tensor enough key bits."""


@dataclass
class SplitPlan:
    mode: str
    min_bits: float
    prefix: set[int] = field(default_factory=set)  # node indices run by encode.onnx
    suffix: set[int] = field(default_factory=set)  # node indices run by decode.onnx
    wire_in: list[str] = field(default_factory=list)  # server inputs, in order
    wire_out: list[str] = field(default_factory=list)  # server outputs, in order
    bits: dict[str, float] = field(default_factory=dict)  # per crossing tensor
    public: list[str] = field(default_factory=list)  # crossing tensors that are public structure
    flops_total: int = 0
    flops_client: int = 0
    bytes_total: int = 0
    bytes_client: int = 0

    @property
    def active(self) -> bool:
        return bool(self.prefix or self.suffix)

    def summary(self) -> dict:
        return {
            "mode": self.mode, "min_key_bits": self.min_bits,
            "client_prefix_nodes": len(self.prefix), "client_suffix_nodes": len(self.suffix),
            "wire_bits": {k: round(v, 1) for k, v in self.bits.items()},
            "public_structure": self.public,
            "client_flops_share": round(self.flops_client / self.flops_total, 4) if self.flops_total else 0.0,
            "client_weight_bytes_share": round(self.bytes_client / self.bytes_total, 4) if self.bytes_total else 0.0,
        }


def tensor_bits(comp, value: ir.Value) -> float:
    """Key bits of a tensor: each distinct secret class in its layout counts once."""
    an = comp.analysis
    roots = {}
    for t in an.known(value) or []:
        for v in L.free_vars(t):
            if v.uid in comp.classes:
                roots[v.uid] = comp.classes[v.uid].bits
    if an.has_slot(value):
        term = an.values.secret_term(an.slot(value))
        for v in L.free_vars(term) if term is not None else []:
            if v.uid in comp.classes:
                roots[v.uid] = comp.classes[v.uid].bits
    return sum(roots.values())


def is_content(comp, value: ir.Value) -> bool:
    """Floats, integers whose values index a table, and integers laid out along a
    secret axis (quantized activations); masks/positions are structure."""
    if value.dtype is not None and value.dtype.is_floating_point():
        return True
    an = comp.analysis
    if an.has_slot(value) and an.slot(value).root().term is not None:
        return True
    return any(v.uid in comp.classes for t in an.known(value) or [] for v in L.free_vars(t))


#: Integer ids into a table of at most this many rows (segment / token-type ids)
#: carry structure, not content: they are value-mapped but never force a split.
STRUCTURE_ROWS = 8


def _few_rows(comp, value: ir.Value) -> bool:
    an = comp.analysis
    if value.dtype is None or value.dtype.is_floating_point() or not an.has_slot(value):
        return False
    term = an.slot(value).root().term
    return term is not None and term.size is not None and term.size <= STRUCTURE_ROWS


#: ONNX ops whose outputs depend on the input's shape only, never on its values.
SHAPE_ONLY = frozenset({"Shape", "Size"})


def structure_values(comp, model: ir.Model) -> set[str]:
    """Names of float node outputs that carry no input content: computed from public inputs
    and weights only (no content graph input reaches them, except through the shape of a
    tensor): an attention mask, a RoPE cos/sin table. They may cross the wire below min_bits
    (listed as public structure): they tell the server nothing about the request, and about
    the weights no more than those weights (under the same classes) would on the server."""
    content = {v.name for v in model.graph.inputs if is_content(comp, v) and not _few_rows(comp, v)}
    tainted = set(content)
    out = set()
    for node in model.graph:
        dirty = False
        if node.op_type not in SHAPE_ONLY or node.domain not in ("", "ai.onnx"):
            for v in list(node.inputs) + outer_reads(node):  # a subgraph's outer reads count
                if v is None:
                    continue
                dirty |= v.name in tainted
        for o in node.outputs:
            if dirty:
                tainted.add(o.name)
            elif o.dtype is not None and o.dtype.is_floating_point():
                out.add(o.name)
    return out


def _node_flops(node: ir.Node) -> int:
    def numel(v):
        if v is None or v.shape is None:
            return 0
        return math.prod(d if isinstance(d, int) else 1 for d in v.shape)

    out = numel(node.outputs[0]) if node.outputs else 0
    if node.op_type in ("Conv", "ConvTranspose") and node.inputs[1] is not None and node.inputs[1].shape is not None:
        w = [d if isinstance(d, int) else 1 for d in node.inputs[1].shape]
        per_out = math.prod(w[1:]) if node.op_type == "Conv" else w[0] * math.prod(w[2:]) // max(1, w[0])
        return 2 * out * per_out
    if node.op_type in ("Gemm", "MatMul") and node.inputs[0] is not None and node.inputs[0].shape is not None:
        k = node.inputs[0].shape[0 if node.attributes.get("transA") and node.attributes["transA"].value else -1]
        return 2 * out * (k if isinstance(k, int) else 1)
    return out


class _Graph:
    def __init__(self, model: ir.Model, comp):
        self.nodes = list(model.graph)
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        # a node inside a subgraph (If/Loop/Scan body) counts as its top-level node, which
        # also reads what the subgraph reads from the outer scope
        self.reads = {}
        for i, n in enumerate(self.nodes):
            outer = outer_reads(n)
            if outer:
                self.reads[i] = outer
                for a in n.attributes.values():
                    graphs = [a.value] if isinstance(a.value, ir.Graph) else \
                        list(a.value) if a.type == ir.AttributeType.GRAPHS else []
                    for g in graphs:
                        for sub in ir.traversal.RecursiveGraphIterator(g):
                            self.index[id(sub)] = i
        self.inputs = list(model.graph.inputs)
        self.outputs = list(model.graph.outputs)
        self.state_in = {s.input for s in comp.state}
        self.state_out = {s.output for s in comp.state}

    def _closure(self, i: int, step) -> set[int]:
        seen, stack = set(), [i]
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(self.index[id(n)] for n in step(self.nodes[k]))
        return seen

    def ancestors(self, i: int) -> set[int]:
        """Node i and every node it depends on."""
        return self._closure(i, lambda n: [v.producer() for v in list(n.inputs) + self.reads.get(self.index[id(n)], [])
                                           if v is not None and v.producer() is not None])

    def descendants(self, i: int) -> set[int]:
        """Node i and every node that depends on it."""
        return self._closure(i, lambda n: [c for o in n.outputs for c in o.consumers()])

    def wire_in(self, prefix: set[int]) -> list[ir.Value]:
        """Server inputs: graph inputs consumed on the server, then prefix outputs it needs."""
        out = [v for v in self.inputs
               if any(self.index[id(c)] not in prefix for c in v.consumers()) or v.is_graph_output()]
        for k in sorted(prefix):
            for o in self.nodes[k].outputs:
                if any(self.index[id(c)] not in prefix for c in o.consumers()) or o.is_graph_output():
                    out.append(o)
        return out

    def wire_out(self, suffix: set[int]) -> list[ir.Value]:
        """Server outputs: graph outputs made on the server, then what the suffix consumes."""
        out = [v for v in self.outputs if v.producer() is None or self.index[id(v.producer())] not in suffix]
        seen = {id(v) for v in out}
        for k in sorted(suffix):
            for v in list(self.nodes[k].inputs) + self.reads.get(k, []):
                if v is None or id(v) in seen or v.const_value is not None:
                    continue
                p = v.producer()
                if p is None or self.index[id(p)] not in suffix:
                    out.append(v)
                    seen.add(id(v))
        return out


def plan_split(comp, model: ir.Model, mode: str = "auto", min_bits: float = 128.0,
               split_at: tuple[str, ...] = (), allow_weak: tuple[str, ...] = ()) -> SplitPlan:
    g = _Graph(model, comp)
    plan = SplitPlan(mode=mode, min_bits=min_bits)
    structure = structure_values(comp, model)

    def weak(values):
        return [v for v in values if v.name not in g.state_in | g.state_out and v.name not in allow_weak
                and v.name not in structure
                and is_content(comp, v) and not _few_rows(comp, v) and tensor_bits(comp, v) < min_bits]

    if split_at:
        by_name = {o.name: o for n in g.nodes for o in n.outputs}
        for spec in split_at:
            side, _, name = spec.rpartition(":")
            v = by_name.get(name)
            if v is None:
                raise SplitError(f"--split-at {spec}: no tensor named '{name}' is computed in the graph")
            k = g.index[id(v.producer())]
            side = side or ("in" if k < len(g.nodes) / 2 else "out")
            if side == "in":
                plan.prefix |= g.ancestors(k)
            elif side == "out":
                plan.suffix |= {d for c in v.consumers() for d in g.descendants(g.index[id(c)])}
            else:
                raise SplitError(f"--split-at {spec}: side must be 'in' or 'out'")
    if mode == "auto":  # grows from the hand-placed cuts, if any
        while True:
            grow = set()
            for v in weak(g.wire_in(plan.prefix)):
                for c in v.consumers():
                    if g.index[id(c)] not in plan.prefix:
                        grow |= g.ancestors(g.index[id(c)])
            if not grow:
                break
            plan.prefix |= grow
        while True:
            grow = set()
            for v in weak(g.wire_out(plan.suffix)):
                p = v.producer()
                if p is None:
                    raise SplitError(_no_split_message(comp, g, min_bits))
                grow |= g.descendants(g.index[id(p)])
            if not grow:
                break
            plan.suffix |= grow
    elif mode != "none":
        raise SplitError(f"unknown split mode '{mode}' (auto or none)")

    for part in (plan.prefix, plan.suffix):
        if part:
            _pull_constant_feeders(g, part)
    _quantized_wire(g, plan)
    _check_convex(comp, g, plan)
    wire_in, wire_out = g.wire_in(plan.prefix), g.wire_out(plan.suffix)
    if plan.active:
        untyped = [v.name for v in wire_in + wire_out if v.dtype is None]
        if untyped:
            raise SplitError(f"the split would send '{untyped[0]}', whose type shape inference could not "
                             "determine; try --split-at elsewhere or --split none")
    plan.wire_in = [v.name for v in wire_in]
    plan.wire_out = [v.name for v in wire_out]
    for v in wire_in + wire_out:
        if v.name in g.state_in | g.state_out:
            continue
        if is_content(comp, v) and not _few_rows(comp, v) and v.name not in structure:
            plan.bits[v.name] = tensor_bits(comp, v)
        else:
            plan.public.append(v.name)
    still_weak = weak(wire_in + wire_out)
    if still_weak:
        v = still_weak[0]
        raise ClearBoundaryError(
            f"'{v.name}' {shape_list(v)} would cross the wire with {tensor_bits(comp, v):.1f} key bits "
            f"(< {min_bits:g}): {'use --split auto or --split-at' if mode != 'auto' else 'no split helps'}, "
            f"lower --min-key-bits, or pass --allow-weak {v.name}")
    _measure(model, g, plan)
    return plan


def _pull_constant_feeders(g: _Graph, part: set[int]) -> None:
    """Nodes computed from constants only (a DequantizeLinear of a weight) whose
    every consumer is on the client go to the client too: the server would
    otherwise send a weight over the wire, and the client's op would lose its
    fusion with it (a quantized Gemm run in float rounds differently)."""
    constant: set[int] = set()
    for k, n in enumerate(g.nodes):
        if all(v is None or v.const_value is not None
               or (v.producer() is not None and g.index[id(v.producer())] in constant) for v in n.inputs):
            constant.add(k)
    for k in sorted(constant, reverse=True):
        if k in part:
            continue
        outs = g.nodes[k].outputs
        if outs and not any(o.is_graph_output() for o in outs) and all(
                g.index[id(c)] in part for o in outs for c in o.consumers()):
            part.add(k)


def _quantized_wire(g: _Graph, plan: SplitPlan) -> None:
    """Cut a quantized model where its tensors are quantized: a DequantizeLinear
    feeding only the suffix joins it, a QuantizeLinear reading only the prefix
    joins that. The wire then carries the integer tensor (the same layout as its
    float twin), and ORT fuses the client's DQ -> op -> Q into the integer op as
    it does in the original (a float op would round differently)."""
    for k in sorted(range(len(g.nodes)), reverse=True):
        n = g.nodes[k]
        if plan.suffix and n.op_type == "DequantizeLinear" and k not in plan.suffix and k not in plan.prefix:
            outs = n.outputs
            if not any(o.is_graph_output() for o in outs) and outs[0].consumers() and all(
                    g.index[id(c)] in plan.suffix for o in outs for c in o.consumers()):
                plan.suffix.add(k)
    for k, n in enumerate(g.nodes):
        if plan.prefix and n.op_type == "QuantizeLinear" and k not in plan.prefix and k not in plan.suffix:
            x = n.inputs[0]
            if x is not None and x.producer() is not None and g.index[id(x.producer())] in plan.prefix:
                plan.prefix.add(k)


def _no_split_message(comp, g: _Graph, min_bits: float) -> str:
    best, where = 0.0, None
    for n in g.nodes:
        for o in n.outputs:
            if is_content(comp, o) and tensor_bits(comp, o) > best:
                best, where = tensor_bits(comp, o), o.name
    strongest = f"the strongest tensor, '{where}', has {best:.0f}" if where else "no tensor has any"
    return (f"no convex split gives every tensor on the wire {min_bits:g} key bits (a cut through "
            f"the weak layers also cuts their skip connections); {strongest}. Wider layers give more "
            "(n channels = log2(n!) bits); else lower --min-key-bits, or --split none with "
            "--allow-weak NAME to accept weak boundaries")


def _check_convex(comp, g: _Graph, plan: SplitPlan) -> None:
    both = plan.prefix & plan.suffix
    if both or len(plan.prefix | plan.suffix) == len(g.nodes):
        raise SplitError(_no_split_message(comp, g, plan.min_bits))
    for k in plan.prefix:
        n = g.nodes[k]
        if any(v is not None and v.name in g.state_in for v in n.inputs):
            raise SplitError(f"node '{n.name}' would move to the client but reads server state")
        if any(o.is_graph_output() for o in n.outputs):
            raise SplitError(f"output '{n.outputs[0].name}' would be computed by the client prefix")
    for k in plan.suffix:
        if any(o.name in g.state_out for o in g.nodes[k].outputs):
            raise SplitError(f"node '{g.nodes[k].name}' would move to the client but writes server state")


def _measure(model: ir.Model, g: _Graph, plan: SplitPlan) -> None:
    client = plan.prefix | plan.suffix
    for k, n in enumerate(g.nodes):
        f = _node_flops(n)
        plan.flops_total += f
        if k in client:
            plan.flops_client += f
    for value in model.graph.initializers.values():
        if value.const_value is None:
            continue
        b = value.const_value.nbytes
        plan.bytes_total += b
        users = {g.index[id(c)] for c in value.consumers()}
        if users and users <= client:
            plan.bytes_client += b


def drop_client_only_classes(comp, model: ir.Model, plan: SplitPlan) -> None:
    """Classes that never reach the server protect nothing: make them the identity."""
    if not plan.active:
        return
    g = _Graph(model, comp)
    client = plan.prefix | plan.suffix
    on_server: set[int] = set()

    def collect(value):
        for t in comp.analysis.weight_terms(value) or []:
            on_server.update(v.uid for v in L.free_vars(t))
        if comp.analysis.has_slot(value):
            term = comp.analysis.values.secret_term(comp.analysis.slot(value))
            if term is not None:
                on_server.update(v.uid for v in L.free_vars(term))

    for _name, value in all_initializers(model):
        if any(g.index[id(c)] not in client for c in value.consumers()):
            collect(value)
    by_name = {v.name: v for v in g.inputs + g.outputs}
    by_name.update({o.name: o for n in g.nodes for o in n.outputs})
    for name in plan.wire_in + plan.wire_out:
        collect(by_name[name])
    for uid in [u for u in comp.classes if u not in on_server]:
        del comp.classes[uid]
        comp.perms.pop(uid, None)
        comp.transforms.pop(uid, None)


@dataclass
class Cut:
    """One candidate placement: ``spec`` (a --split-at value, "" for the entropy floor alone),
    the side it moves to the client ("in": a prefix, "out": a suffix, "" both floors) and
    the SplitPlan the split machinery forms from it."""

    spec: str
    side: str
    plan: SplitPlan

    def wire(self, side: str | None = None) -> list[str]:
        """Content tensors entering (in) or leaving (out) the server."""
        side = side or self.side
        names = self.plan.wire_in if side == "in" else self.plan.wire_out
        return [n for n in names if n in self.plan.bits]


def candidate_cuts(comp, model: ir.Model, min_bits: float = 128.0, allow_weak: tuple[str, ...] = ()) -> list[Cut]:
    """Every convex client prefix and suffix the split machinery forms from a single-tensor cut.

    For each float node output t that carries content, ``plan_split(auto, split_at=in:t)``
    (the prefix closed under predecessors, grown until the entropy floor holds) and
    ``out:t`` (the suffix closed under successors); kept when exactly one content tensor
    crosses on that side (the stream a CNN stage or a transformer block hands on: a cut
    inside a residual block sends two). Distinct client sets only, cheapest first per side;
    the first entry is the entropy floor alone (spec "", side ""). No op or tensor names are
    read."""
    cuts: list[Cut] = []
    seen: set[tuple] = set()
    structure = structure_values(comp, model)
    try:
        base = plan_split(comp, model, "auto", min_bits, (), allow_weak)
        cuts.append(Cut("", "", base))
        seen |= {("in", frozenset(base.prefix)), ("out", frozenset(base.suffix))}
    except EEError:
        pass
    for node in model.graph:
        for o in node.outputs:
            if o.dtype is None or not o.dtype.is_floating_point() or o.is_graph_output() or o.name in structure:
                continue
            for side in ("in", "out"):
                try:
                    plan = plan_split(comp, model, "auto", min_bits, (f"{side}:{o.name}",), allow_weak)
                except EEError:
                    continue
                cut = Cut(f"{side}:{o.name}", side, plan)
                key = (side, frozenset(plan.prefix if side == "in" else plan.suffix))
                if key in seen or len(cut.wire()) != 1:
                    continue
                seen.add(key)
                cuts.append(cut)
    return sorted(cuts, key=lambda c: (c.side != "", c.side, c.plan.flops_client, c.plan.bytes_client))
