"""Attack 6, structural exposures: what the server file gives away without running it.

Attacker's knowledge: ``server/model.onnx`` (and, for linkability, a second
server model). Every check reads only that; :func:`order_exposures` also takes
the auditor's plain view of the weights, to say which permuted tensors are
monotone in the plain model (an order the attacker can restore by sorting) and
to confirm that sorting does recover the key.

Each exposure is ``{"kind", "detail", "items"}``.
"""
from __future__ import annotations

import re

import numpy as np

from eeonnx.audit.view import FLOAT_TYPES, ServerView

WORDS = re.compile(r"[A-Za-z]{3,}")
ALLOWED_METADATA = {"eeonnx.artifact_id", "eeonnx.state"}


def metadata_exposures(view: ServerView) -> list[dict]:
    """Names, producer, doc strings and metadata kept in the server file."""
    return proto_exposures(view.proto)


def proto_exposures(p) -> list[dict]:
    """:func:`metadata_exposures` on a ModelProto."""
    out = []
    kept = {m.key: m.value[:60] for m in p.metadata_props if m.key not in ALLOWED_METADATA}
    if kept:
        out.append({"kind": "metadata", "detail": f"{len(kept)} metadata entries besides the artifact id/state",
                    "items": sorted(kept)})
    for field in ("producer_name", "producer_version", "doc_string", "domain"):
        if getattr(p, field):
            out.append({"kind": "metadata", "detail": f"model {field} kept: {getattr(p, field)[:60]!r}",
                        "items": [field]})
    if p.graph.doc_string or WORDS.search(p.graph.name or "") and p.graph.name != SERVER_GRAPH_NAME:
        out.append({"kind": "metadata", "detail": f"graph name/doc string kept: {p.graph.name[:60]!r}",
                    "items": ["graph"]})
    graphs = list(_graphs(p.graph))
    names = [v.name for v in list(p.graph.input) + list(p.graph.output)]
    for g in graphs:
        names += [t.name for t in g.initializer] + [n.name for n in g.node if n.name]
        names += [o for n in g.node for o in n.output] + [v.name for v in g.value_info]
        names += [g.name] if g is not p.graph else []
    wordy = sorted({n for n in names if WORDS.search(n)})
    if wordy:
        out.append({"kind": "names", "detail": f"{len(wordy)} tensor/node names carry words "
                    f"(e.g. {', '.join(repr(n) for n in wordy[:3])})", "items": wordy[:50]})
    docs = sum(1 for g in graphs for n in g.node if n.doc_string)
    if docs:
        out.append({"kind": "metadata", "detail": f"{docs} node doc strings kept", "items": []})
    meta = sum(len(x.metadata_props) for g in graphs
               for x in [g, *g.node, *g.initializer, *g.value_info, *g.input, *g.output])
    if meta:  # dynamo exports: module paths, class hierarchies, stack traces
        out.append({"kind": "metadata", "detail": f"{meta} node/value/graph metadata entries kept", "items": []})
    return out


SERVER_GRAPH_NAME = "server"  # the main graph's name in every eeonnx server model (says nothing)


def _graphs(g):
    """The graph and its subgraphs (If/Loop/Scan bodies)."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for sub in a.graphs:
                yield from _graphs(sub)


def _fp(a: np.ndarray) -> str:
    from eeonnx.audit.known_weights import _fingerprint

    return _fingerprint(a)


def tied_exposures(view: ServerView, min_size: int = 16) -> list[dict]:
    """Server tensors that hold the same values in a different order: matching
    their slices gives the relative permutation of their classes (a tied
    embedding and head permuted independently, or two copies of one weight)."""
    groups: dict[str, list[str]] = {}
    for name, a in view.float_weights(min_size).items():
        if np.all(a == a.ravel()[0]):
            continue  # uniform: no order to see
        groups.setdefault(_fp(a), []).append(name)
    items = []
    for names in groups.values():
        if len(names) < 2:
            continue
        first = view.weights[names[0]]
        differ = [n for n in names[1:] if view.weights[n].shape != first.shape
                  or not np.array_equal(view.weights[n], first)]
        if differ:
            items.append([names[0]] + differ)
    if not items:
        return []
    return [{"kind": "tied", "detail": f"{len(items)} group(s) of server tensors hold the same values in different "
             "orders: slice matching between them links their permutations", "items": items}]


def small_class_exposures(classes: list[dict]) -> list[dict]:
    """Classes of size <= 2 (at most 2 candidate permutations: guessing is free).
    ``classes``: name/size entries; the attacker recomputes them from the server
    graph with the public compiler, the auditor reads them from the manifest."""
    small = [f"{c['name']}[{c['size']}]" for c in classes if c["size"] <= 2]
    if not small:
        return []
    return [{"kind": "small_class", "detail": f"{len(small)} secret class(es) of size <= 2 "
             "(at most 2 permutations to try)", "items": small}]


def order_exposures(view: ServerView, truth) -> list[dict]:
    """Permuted tensors whose plain values are monotone along a permuted axis: the
    attacker restores the order (and the class's permutation) by sorting. The
    auditor confirms it: sorting the server tensor gives the key's permutation."""
    items = []
    for name, s in view.float_weights(4).items():
        if s.ndim != 1:
            continue
        p = truth.axis_index(name, 0)
        if p is None or np.array_equal(p, np.arange(len(p))):
            continue
        plain = truth.plain(name, s)
        d = np.diff(plain.astype(np.float64))
        if not (np.all(d > 0) or np.all(d < 0)):
            continue
        # the attack: sort the server vector the way the public structure says
        order = np.argsort(s) if d[0] > 0 else np.argsort(-s)  # plain position -> server position
        recovered = np.argsort(order)  # server position -> plain index
        items.append({"tensor": name, "size": int(len(s)),
                      "sorting_recovers_key": bool(np.array_equal(recovered, p))})
    if not items:
        return []
    return [{"kind": "monotone_constant", "detail": f"{len(items)} permuted tensor(s) are monotone in the plain "
             "model: sorting them restores the order", "items": items}]


def linkability(view_a: ServerView, view_b: ServerView) -> dict:
    """Two server models of one model under different keys: share of tensors of A
    whose sorted values reappear in B (no key needed to tell they are one model)."""
    fps = {_fp(a) for a in view_b.float_weights(16).values()}
    mine = [_fp(a) for a in view_a.float_weights(16).values()]
    share = sum(f in fps for f in mine) / len(mine) if mine else 0.0
    return {"tensors": len(mine), "matched": share}
