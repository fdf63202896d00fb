"""normalize: put the model in the form the analysis reasons about.

After this pass:
- initializers are not graph inputs (old IR<4 files), ir_version >= 4;
- model-local functions are inlined;
- constant subgraphs (Constant, ConstantOfShape, shape arithmetic on static
  dims) are folded, and every Constant node is an initializer, so weights
  stored as Constant nodes (PaddlePaddle exports) are permuted like others;
- ``--dim`` values replace symbolic dims of graph inputs;
- every value has the shape that ONNX shape inference (then, for what it
  leaves unknown, onnxruntime's symbolic shape inference) can give it;
- nodes are topologically sorted and unused nodes removed.
The normalized graph computes the same function as the original.
"""
from __future__ import annotations

import logging
import os
import tempfile

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnx_ir.passes.common._c_api_utils import call_onnx_api
from onnxscript import optimizer

from eeonnx.errors import ModelLoadError

log = logging.getLogger(__name__)


class NormalizePass(ir.passes.InPlacePass):
    def __init__(self, dims: dict[str, int] | None = None):
        super().__init__()
        self.dims = dict(dims or {})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # initializers listed as inputs (IR < 4 required it; later, an overridable
        # default) are constants for us: the original runs without feeding them
        common.RemoveInitializersFromInputsPass()(model)
        if model.ir_version is not None and model.ir_version < 4:
            model.ir_version = 4
        _check_graph(model)
        common.InlinePass()(model)
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        _fix_dims(model, self.dims)
        common.TopologicalSortPass()(model)
        for _ in range(2):
            # shapes first, so that Shape -> Gather -> Div chains over static dims fold
            # even when another dim (batch) is symbolic
            infer_shapes(model)
            optimizer.fold_constants(model, onnx_shape_inference=True, should_fold=_keep_quantized)
            common.RemoveUnusedNodesPass()(model)
            common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        common.TopologicalSortPass()(model)
        infer_shapes(model)
        return ir.passes.PassResult(model, modified=True)


QUANTIZED_STORAGE = {"DequantizeLinear", "QuantizeLinear"}


def _keep_quantized(node: ir.Node) -> bool | None:
    """Never fold (de)quantization of constant weights: the server keeps the int8/int4
    storage of a quantized model (folding would hand it float weights, 4x larger)."""
    return False if node.op_type in QUANTIZED_STORAGE else None


UNSUPPORTED_INPUT_TYPES = {ir.DataType.STRING, ir.DataType.COMPLEX64, ir.DataType.COMPLEX128}


def _check_graph(model: ir.Model) -> None:
    """Refuse what no pass can handle: opsets newer than the installed onnx,
    inputs of string/complex type, graphs that are not valid SSA."""
    known = onnx.defs.onnx_opset_version()
    used = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if used > known:
        raise ModelLoadError(f"the model uses ONNX opset {used}, newer than the installed onnx knows "
                             f"({known}): upgrade onnx (pip install -U onnx)")
    names = [v.name for v in model.graph.outputs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(f"output '{twice[0]}' is listed more than once among the graph outputs; "
                             "list each output once")
    for v in model.graph.inputs:
        if v.dtype in UNSUPPORTED_INPUT_TYPES:
            raise ModelLoadError(f"input '{v.name}' has type {v.dtype.name.lower()}, which eeonnx cannot "
                                 "encrypt; feed the model numeric tensors (e.g. pre-tokenized ids)")
    seen: set[str] = {v.name for v in model.graph.inputs} | set(model.graph.initializers)
    for node in model.graph:
        for o in node.outputs:
            if not o.name:
                continue  # an omitted optional output
            if o.name in seen:
                raise ModelLoadError(
                    f"node '{node.name}' writes '{o.name}', which is already defined: the graph is not in SSA form"
                )
            seen.add(o.name)
    for node in model.graph:
        for v in node.inputs:
            if v is not None and v.name and v.name not in seen and v.producer() is None:
                raise ModelLoadError(
                    f"node '{node.name}' ({node.op_type}) reads '{v.name}', which no node, input or "
                    "initializer defines: the model is incomplete")


def _fix_dims(model: ir.Model, dims: dict[str, int]) -> None:
    if not dims:
        return
    for v in model.graph.inputs:
        if v.shape is None:
            continue
        new = [dims.get(d.value, d) if isinstance(d, ir.SymbolicDim) and d.value in dims else d for d in v.shape]
        v.shape = ir.Shape(new)
    # values inside the graph get their shapes again from inference
    for node in model.graph:
        for o in node.outputs:
            if not o.is_graph_output():
                o.shape = None


def _is_unknown_dim(d) -> bool:
    return isinstance(d, ir.SymbolicDim) and (d.value is None or d.value.startswith("unk__"))


def infer_shapes(model: ir.Model) -> None:
    """Shapes for every value: ONNX's inference (with data propagation) first; then,
    per dim, onnxruntime's symbolic inference fills what ONNX left unknown (it names
    derived dims, e.g. ``batch*seq``, and resolves shape arithmetic), except where
    that tool is known to guess wrong (see ``_untrusted``)."""
    common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    symbolic = _ort_symbolic_shapes(model)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):  # If/Loop/Scan bodies too
        for o in node.outputs:
            dims, elem = symbolic.get(o.name, (None, 0))
            if dims is None:
                continue
            if o.type is None and elem:
                o.type = ir.TensorType(ir.DataType(elem))  # ops ONNX's inference does not know
            if o.shape is None:
                if not any(_invented(d) for d in dims) and not _untrusted(node, o, 0):
                    o.shape = ir.Shape(dims)
                continue
            if len(o.shape) != len(dims):
                continue  # the two disagree on the rank: trust neither more, keep ONNX's
            # per dim: ONNX's static and named dims win; ORT fills in what ONNX left unknown
            merged = [d if not _is_unknown_dim(d) or _invented(s) or _untrusted(node, o, k) else s
                      for k, (d, s) in enumerate(zip(o.shape, dims))]
            o.shape = ir.Shape(merged)
    from eeonnx.compiler.rules.control import fill_carried_shapes

    if fill_carried_shapes(model):  # a Loop's final state: then what follows it gets shapes too
        infer_shapes(model)


def _untrusted(node: ir.Node, out: ir.Value, axis: int) -> bool:
    """Dims where onnxruntime's tool is known to guess wrong; the analysis reads
    static sizes (a size-1 dim means broadcasting), so keep those dims unknown:
    - slices of a symbolic axis (sized as if the axis were long enough, and
      wrong for negative steps);
    - Einsum with an ellipsis (the ellipsis dims come out misaligned)."""
    if node.op_type == "Einsum":
        eq = node.attributes.get("equation")
        return eq is not None and "..." in str(eq.value)
    if node.op_type != "Slice" or out is not node.outputs[0]:
        return False
    x = node.inputs[0]
    return x is None or x.shape is None or axis >= len(x.shape) or not isinstance(x.shape[axis], int)


def _invented(d) -> bool:
    """A dim onnxruntime's tool could not infer: None, or a name it made up
    ('unk__3', 'Upsample_1_o0__d0')."""
    return d is None or (isinstance(d, str) and (d.startswith("unk__") or "__d" in d))


def _ort_symbolic_shapes(model: ir.Model) -> dict[str, list]:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # pragma: no cover - onnxruntime always ships it
        return {}

    def run(proto: onnx.ModelProto) -> onnx.ModelProto | None:
        del proto.graph.value_info[:]  # start from the inputs, not from earlier guesses
        return _partial_symbolic_inference(SymbolicShapeInference, proto)

    try:
        # weights travel as typed inputs only, never copied (onnx_ir's helper)
        inferred = call_onnx_api(run, model)
    except Exception as e:  # the tool raises plain Exceptions on ops it does not know
        log.info("symbolic shape inference failed: %s", e)
        return {}
    if inferred is None:
        return {}
    known = {}
    for vi in _all_value_infos(inferred.graph):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            known[vi.name] = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim],
                              t.elem_type)
    return known


def _all_value_infos(graph: onnx.GraphProto):
    """value_info and outputs of a graph and of its subgraphs (names are model-wide)."""
    yield from list(graph.value_info) + list(graph.output)
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_value_infos(g)


def _partial_symbolic_inference(tool, proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic inference, keeping what it inferred even when some
    value stays unknown (its public entry point then raises and drops everything,
    after saving a debug model into the cwd). Falls back to the public entry point
    if the tool's internals change."""
    try:
        engine = tool(2**31 - 1, True, False, 0)
        engine._preprocess(proto)
        while engine.run_:
            engine._infer_impl()
        engine._update_output_from_vi()
        return engine.out_mp_
    except AttributeError:
        cwd = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="eeonnx-shapes-") as scratch:
            os.chdir(scratch)
            try:
                return tool.infer_shapes(proto, auto_merge=True, guess_output_rank=False)
            finally:
                os.chdir(cwd)
