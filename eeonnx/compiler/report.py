"""Human- and machine-readable reports of a Compilation (compile summary, check)."""
from __future__ import annotations



def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def class_summary(comp) -> str:
    sizes = sorted((c.size for c in comp.classes.values()), reverse=True)
    shown = ", ".join(map(str, sizes[:12])) + (", ..." if len(sizes) > 12 else "")
    return (f"{len(sizes)} secret axis classes (sizes {shown or '-'}), "
            f"permutation entropy {comp.key_bits:.0f} bits")


#: Printed wherever permutation counts are shown: they are not a security measure.
ENTROPY_NOTE = ("permutation entropy counts permutations (log2 n!), it is not security: "
                "`eeonnx audit OUT` measures what a server recovers")


def exposure_lines(classes, server_proto=None) -> list[str]:
    """Structural exposures visible without running anything: classes of size <= 2,
    names/producer/metadata kept in the server file (see eeonnx.audit.structure)."""
    from eeonnx.audit import structure

    found = structure.small_class_exposures([{"name": c.name, "size": c.size} for c in classes])
    if server_proto is not None:
        found += structure.proto_exposures(server_proto)
    return [f"{e['kind']}: {e['detail']}" for e in found]


def pins_lines(comp) -> list[str]:
    out = []
    for p in comp.pins():
        axes = ", ".join(p["axes"][:4]) + (f", +{len(p['axes']) - 4} more" if len(p["axes"]) > 4 else "")
        out.append(f"node '{p['node']}' ({p['op_type']}): {p['reason']} -> pins {axes}")
    return out


def placement_text(p: dict) -> str:
    """One line for compile --max-leak: the cut, its measured leakage and what it cost."""
    what = "image correlation above unrelated images" if p["kind"] == "image" else "token match above chance"
    sides = "; ".join(f"{side} {r['cut']}: {'n/a' if r['leak'] is None else format(r['leak'], '.3f')}"
                      for side, r in p["sides"].items())
    return (f"placement (--max-leak {p['max_leak']:g}): measured leakage {p['measured_leak']:.3f} ({what}; "
            f"{sides}) on {p['calibration']}; cost: client runs {p['client_flops_share']:.1%} of FLOPs, "
            f"holds {p['client_weight_share']:.1%} of weight bytes")


def compile_summary(comp, out: str, seconds: float) -> str:
    share = comp.permuted_bytes / comp.weight_bytes if comp.weight_bytes else 0.0
    lines = [
        f"compiled {comp.source} -> {out} in {seconds:.2f} s",
        f"  {class_summary(comp)}",
        f"  weights under a secret permutation: {share:.1%} "
        f"({_bytes(comp.permuted_bytes)} of {_bytes(comp.weight_bytes)})",
    ]
    if comp.transforms:
        shares = comp.group_shares()
        lines.append("  weight bytes per group: " + ", ".join(f"{g} {v:.1%}" for g, v in shares.items()))
        lines.append("  " + groups_text(comp).replace("\n", "\n  "))
    for title, items in (("input ", comp.inputs), ("output", comp.outputs)):
        for c in items:
            state = (c.reason if c.reason.startswith(("read by", "made by")) else f"clear ({c.reason})") \
                if c.clear else "layout " + " x ".join(c.layout)
            lines.append(f"  {title} {c.name} {c.shape}: {state}")
    if comp.split is not None:
        s = comp.split
        if s.active:
            lines.append(f"  client split: {len(s.prefix)} node(s) in encode.onnx, {len(s.suffix)} in decode.onnx; "
                         f"client share {s.flops_client / max(1, s.flops_total):.1%} of FLOPs, "
                         f"{s.bytes_client / max(1, s.bytes_total):.1%} of weight bytes")
        for name, bits in s.bits.items():
            lines.append(f"  wire {name}: permutation entropy {bits:.0f} bits")
        for name in s.public:
            lines.append(f"  wire {name}: public structure (clear)")
    if comp.placement is not None:
        lines.append("  " + placement_text(comp.placement))
    exposures = exposure_lines(comp.classes.values(), _written_server(out))
    lines.append(f"  structural exposures: {len(exposures) or 'none found'}")
    lines += [f"    {e}" for e in exposures]
    lines.append(f"  {ENTROPY_NOTE}")
    pins = pins_lines(comp)
    lines.append(f"  pinned axes: {len(pins) or 'none'}")
    lines += [f"    {p}" for p in pins]
    lines += exposed_lines(comp.exposed, "  ")
    for t in getattr(comp, "ties", []):
        lines.append(f"  tied: '{t['tensors'][0]}' = '{t['tensors'][1]}'{' (transposed)' if t['transposed'] else ''}: "
                     f"one set of classes")
    server_nodes = len(comp.server_proto.graph.node) if comp.server_proto is not None else len(comp.model.graph)
    lines.append(f"  nodes: {server_nodes} on the server ({comp.original_nodes} in the original)")
    return "\n".join(lines)


def _written_server(out: str):
    """The server model as written (names, metadata; no weights), or None if it cannot be read."""
    import os

    import onnx

    try:
        return onnx.load(os.path.join(out, "server", "model.onnx"), load_external_data=False)
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError):  # pragma: no cover
        return None


def exposed_lines(exposed: list, indent: str) -> list[str]:
    """Classes a public-looking constant gives away (kept the identity)."""
    return [f"{indent}exposed class of size {e['size']} by '{e['tensor']}' axis {e['axis']}: {e['reason']}; "
            f"kept the identity" for e in exposed]


def check_report(comp) -> dict:
    """Per op type: node count, status, and the nodes that pin or are unsupported."""
    ops: dict[str, dict] = {}
    for node in comp.model.graph:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops.setdefault(key, {"count": 0, "status": "supported", "pins": [], "unsupported": []})
        ops[key]["count"] += 1
    for p in comp.pins():
        e = ops.setdefault(p["op_type"], {"count": 0, "status": "supported", "pins": [], "unsupported": []})
        e["pins"].append({"node": p["node"], "reason": p["reason"], "axes": p["axes"]})
        e["status"] = "pins"
    for node, why in comp.unsupported:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops[key]["unsupported"].append({"node": node.name, "reason": why})
        ops[key]["status"] = "unsupported"
    from eeonnx.compiler.passes.boundary import crossings

    def wire(items):
        return [{"name": c.name, "shape": c.shape, "layout": c.layout,
                 **({"value_layout": c.value_layout} if c.value_layout else {}),
                 "clear": c.clear, **({"reason": c.reason} if c.clear else {})} for c in items]

    state_names = {s.input for s in comp.state} | {s.output for s in comp.state}
    inputs = crossings(comp, list(comp.model.graph.inputs), is_input=True)
    outputs = crossings(comp, [v for v in comp.model.graph.outputs if v.name not in state_names], False)
    refused = [c.name for c in inputs + outputs if c.refused]
    split_info = _split_preview(comp)
    if "error" not in split_info:
        refused = []  # the split takes care of weak and clear boundaries
    return {
        "split": split_info,
        "model": comp.source,
        "inputs": wire(inputs),
        "outputs": wire(outputs),
        "refused_clear": refused,
        "state": [{"input": s.input, "output": s.output, "axis": s.axis} for s in comp.state],
        "ops": dict(sorted(ops.items())),
        "classes": [{"name": c.name, "size": c.size, "bits": round(c.bits, 1), "group": c.group}
                    for c in comp.classes.values()],
        "key_bits": round(comp.key_bits, 1),  # kept for compatibility: the same number as below
        "permutation_entropy_bits": round(comp.key_bits, 1),
        "exposures": exposure_lines(comp.classes.values()),
        "exposed": comp.exposed,
        "tied": getattr(comp, "ties", []),
        "compilable": not comp.unsupported and "error" not in split_info,
    }


def _split_preview(comp) -> dict:
    """What the default compile (--split auto, 128 bits) would move to the client."""
    from eeonnx.errors import EEError
    from eeonnx.compiler.passes.split import plan_split

    try:
        plan = plan_split(comp, comp.model, "auto", 128.0, (), tuple(comp.allow_clear))
    except EEError as e:
        return {"error": str(e)}
    names = [n.name for n in comp.model.graph]
    out = plan.summary()
    out["client_prefix"] = [names[k] for k in sorted(plan.prefix)]
    out["client_suffix"] = [names[k] for k in sorted(plan.suffix)]
    return out


def check_text(report: dict) -> str:
    lines = [f"{report['model']}: {'compilable' if report['compilable'] else 'NOT compilable'}, "
             f"{len(report['classes'])} secret classes, permutation entropy {report['key_bits']:.0f} bits"]
    s = report.get("split", {})
    if "error" in s:
        lines.append(f"  split (auto, 128 bits): impossible: {s['error']}")
    elif s:
        lines.append(f"  split (auto, 128 bits): {len(s['client_prefix'])} node(s) to encode.onnx, "
                     f"{len(s['client_suffix'])} to decode.onnx; client share {s['client_flops_share']:.1%} "
                     f"of FLOPs, {s['client_weight_bytes_share']:.1%} of weight bytes")
        for name, bits in s["wire_bits"].items():
            lines.append(f"    wire {name}: permutation entropy {bits:.0f} bits")
        for name in s["public_structure"]:
            lines.append(f"    wire {name}: public structure")
    for kind in ("inputs", "outputs"):
        for c in report[kind]:
            state = "CLEAR: " + c["reason"] if c["clear"] else "layout " + " x ".join(c["layout"])
            if c.get("value_layout"):
                state += f" (values: {c['value_layout']})"
            lines.append(f"  {kind[:-1]} {c['name']} {c['shape']}: {state}")
    for e in report.get("exposures", []):
        lines.append(f"  structural exposure: {e}")
    lines += exposed_lines(report.get("exposed", []), "  ")
    lines.append(f"  {ENTROPY_NOTE.replace('OUT', 'OUT (after compile)')}")
    width = max((len(k) for k in report["ops"]), default=8)
    for op, e in report["ops"].items():
        lines.append(f"  {op:<{width}} x{e['count']:<4} {e['status']}")
        for p in e["pins"]:
            lines.append(f"      pins at '{p['node']}': {p['reason']} ({', '.join(p['axes'][:3])})")
        for u in e["unsupported"]:
            lines.append(f"      unsupported at '{u['node']}': {u['reason']}")
    return "\n".join(lines)


def spec_text(spec: dict[str, list[str]]) -> str:
    width = max((len(k) for k in spec), default=8)
    return "\n".join(f"{name:<{width}}  [{', '.join(axes)}]" for name, axes in spec.items())




def groups_text(comp) -> str:
    """One line per group: the classes that got it."""
    by: dict[str, list[str]] = {}
    for c in comp.classes.values():
        by.setdefault(c.group, []).append(f"{c.name}[{c.size}]")
    return "\n".join(f"{g}: {', '.join(names)}" for g, names in sorted(by.items()))


def groups_detail(comp) -> str:
    """Per class: its group and what kept it from a larger one."""
    def visible(c):
        if not c.visible_in:
            return ""
        more = f" +{len(c.visible_in) - 3} more" if len(c.visible_in) > 3 else ""
        return f"; its permutation is visible in {', '.join(sorted(c.visible_in)[:3])}{more} (permuted only there)"

    from eeonnx.compiler import pairs

    lines = [f"{c.name}[{c.size}]: {c.group}" + (f" ({c.why})" if c.why else "") + visible(c)
             for c in comp.classes.values()]
    return "\n".join(lines + ([pairs.describe(comp)] if pairs.describe(comp) else []))
