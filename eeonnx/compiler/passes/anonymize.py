"""anonymize: opaque names in the server model (emit's last step on server/model.onnx).

Exporters name tensors and nodes after the source modules
(``bert.encoder.layer.0.attention.self.query.bias``), which tells the server
which public model, and so which public weights, it runs. Emit writes the
server model, reads it back without its weights, and :func:`rename` renames
it in place (then :func:`rewrite` replaces the file):

- graph inputs ``x0, x1, ...`` and outputs ``y0, y1, ...`` (main graph, in order),
- initializers ``w0, w1, ...`` (subgraphs' included),
- every other value ``t0, t1, ...`` (node outputs, subgraph inputs/outputs, value_info),
- nodes ``n0, n1, ...``, subgraphs ``g0, g1, ...`` (proto order, depth first),

and drops what else carries source names: node, graph, value and tensor
``metadata_props`` (dynamo writes module paths and stack traces there), the
names of tensors held in attributes, doc strings, the graph name.

Invariants:

- **One map, a bijection.** Every value name in the model (main graph and
  every If/Loop/Scan body, at any depth) is renamed by one map, original ->
  server, injective and onto the server names it produces. A subgraph's
  reads of outer-scope values therefore use the outer value's new name, and
  its formal inputs/outputs their own, so every reference resolves to the
  same value as before: the renamed model is the same function. The empty
  name (an omitted optional input) stays empty.
- **No server name comes from an original name.** Server names are a letter
  and a counter; nothing of the original string is kept. (What the names
  do not hide: op types, attributes, shapes and symbolic dim names, and the
  graph structure still identify an architecture.)
- **The map leaves this module only to the manifest** (``server_names``,
  ``client/manifest.json``, 0600); nothing on the server side records it.
- **Weights untouched.** The model is read without its external data
  (``load_external_data=False``); tensors keep their bytes and their
  ``external_data`` location/offset/length entries; ``model.onnx.data`` is
  not rewritten. The file is replaced atomically (a temp file renamed).
"""
from __future__ import annotations

import itertools
import os

import onnx

A = onnx.AttributeProto


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == A.GRAPH:
            yield a.g
        elif a.type == A.GRAPHS:
            yield from a.graphs


def graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph under it, depth first in node order."""
    yield graph
    for node in graph.node:
        for g in _subgraphs(node):
            yield from graphs(g)


def _attr_tensors(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == A.TENSOR:
            yield a.t
        elif a.type == A.TENSORS:
            yield from a.tensors
        elif a.type == A.SPARSE_TENSOR:
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        elif a.type == A.SPARSE_TENSORS:
            for s in a.sparse_tensors:
                yield s.values
                yield s.indices


class _Names:
    """original -> server, one counter per prefix; the first assignment of a name wins."""

    def __init__(self):
        self.map: dict[str, str] = {}
        self._count: dict[str, itertools.count] = {}

    def add(self, name: str, prefix: str) -> None:
        if name and name not in self.map:
            self.map[name] = f"{prefix}{next(self._count.setdefault(prefix, itertools.count()))}"

    def __call__(self, name: str) -> str:
        return self.map[name] if name else name


def name_map(model: onnx.ModelProto) -> dict[str, str]:
    """The map original value name -> server name of ``model`` (see the module docstring)."""
    names = _Names()
    main = model.graph
    for v in main.input:
        names.add(v.name, "x")
    for v in main.output:
        names.add(v.name, "y")
    every = list(graphs(main))
    for g in every:
        for t in g.initializer:
            names.add(t.name, "w")
        for s in g.sparse_initializer:
            names.add(s.values.name, "w")
    for g in every:
        for v in itertools.chain(g.input, g.output):
            names.add(v.name, "t")
        for node in g.node:
            for n in itertools.chain(node.input, node.output):
                names.add(n, "t")
        for v in g.value_info:
            names.add(v.name, "t")
        for ann in g.quantization_annotation:
            names.add(ann.tensor_name, "t")
    return names.map


def _rename_graph(g: onnx.GraphProto, names: _Names, nodes: itertools.count, subgraphs: itertools.count,
                  main: bool) -> None:
    if not main:
        g.name = f"g{next(subgraphs)}"
    g.ClearField("doc_string")
    _clear_metadata(g)
    for v in itertools.chain(g.input, g.output, g.value_info):
        v.name = names(v.name)
        v.ClearField("doc_string")
        _clear_metadata(v)
    for t in g.initializer:
        t.name = names(t.name)
        t.ClearField("doc_string")
        _clear_metadata(t)
    for s in g.sparse_initializer:
        s.values.name = names(s.values.name)
        s.indices.name = ""
    for ann in g.quantization_annotation:
        ann.tensor_name = names(ann.tensor_name)
        for kv in ann.quant_parameter_tensor_names:
            kv.value = names(kv.value)
    for node in g.node:
        node.name = f"n{next(nodes)}"
        node.ClearField("doc_string")
        _clear_metadata(node)
        for i, n in enumerate(node.input):
            node.input[i] = names(n)
        for i, n in enumerate(node.output):
            node.output[i] = names(n)
        for t in _attr_tensors(node):  # a Constant's value tensor, etc.: its name is not used
            t.name = ""
            t.ClearField("doc_string")
            _clear_metadata(t)
        for a in node.attribute:
            a.ClearField("doc_string")
        for sub in _subgraphs(node):
            _rename_graph(sub, names, nodes, subgraphs, main=False)


def _clear_metadata(proto) -> None:
    if any(f.name == "metadata_props" for f in proto.DESCRIPTOR.fields):
        proto.ClearField("metadata_props")


def rename(model: onnx.ModelProto) -> dict[str, str]:
    """Rename ``model`` in place (see the module docstring); returns the map original -> server."""
    if len(model.functions):  # normalize inlines functions; a server model never holds one
        raise ValueError("anonymize: the server model holds model-local functions")
    mapping = name_map(model)
    names = _Names()
    names.map = mapping
    _rename_graph(model.graph, names, itertools.count(), itertools.count(), main=True)
    return mapping


def rewrite(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` (its external data left where it is) over ``path`` atomically."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, path)
