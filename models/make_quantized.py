"""Quantized and half-precision versions of the repository's models, made by
onnxruntime's own tools (the way a user would deploy them):

- ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (DynamicQuantizeLinear +
  MatMulInteger, DequantizeLinear on embedding tables), int8 weights;
- ``qdq``: ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear
  pairs, per-channel weights) with a random calibration reader;
- ``int4-b32``, ``int4-b128``, ``int4-b32-sym``: ``MatMulNBitsQuantizer``
  (com.microsoft MatMulNBits, 4-bit blocks of 32 or 128; asymmetric ones carry
  packed zero points, symmetric ones none);
- ``fp16``: weights in float16, inputs and outputs kept float32
  (``onnxruntime.transformers.float16``).

Nothing is committed: tests call the functions on the fly (all are fast on the
fixtures), and ``main`` writes every variant into a directory for
``eecheck.py`` runs:

    python models/make_quantized.py OUT_DIR [MODEL.onnx ...]

Every function takes a source path and a destination path and returns the
destination; none changes the source.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODELS = [os.path.join(HERE, "cnn.onnx"), os.path.join(HERE, "mlp.onnx")] + [
    os.path.join(HERE, "fixtures", f) for f in ("bert.ts.onnx", "llama.dynamo.onnx", "llama_kv.ts.onnx")]

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32,
       onnx.TensorProto.BOOL: np.bool_, onnx.TensorProto.FLOAT16: np.float16}


def _quiet():
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)


@contextlib.contextmanager
def _scratch_cwd():
    """onnxruntime's quantizers drop scratch files (sym_shape_infer_temp.onnx, *.data)
    into the working directory: run them in a temporary one."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="eeonnx-quant-cwd-") as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


def calibration_feeds(model_path: str, n: int = 4, seed: int = 0, seq: int = 4) -> list[dict]:
    """Random feeds: floats standard normal, integer inputs 1 (valid ids, masks and
    positions alike); symbolic dims: 1 for the first axis, ``seq`` elsewhere, 0 for
    axes of past state (inputs named past*: an empty cache)."""
    m = onnx.load(model_path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        feeds = {}
        for vi in m.graph.input:
            if vi.name in inits:
                continue
            t = vi.type.tensor_type
            shape = []
            for k, d in enumerate(t.shape.dim):
                if d.HasField("dim_value"):
                    shape.append(d.dim_value)
                elif vi.name.startswith("past") and k == 2:
                    shape.append(0)
                else:
                    shape.append(1 if k == 0 else seq)
            dt = _NP[t.elem_type]
            if np.issubdtype(dt, np.floating):
                feeds[vi.name] = rng.standard_normal(shape).astype(dt)
            else:
                feeds[vi.name] = np.ones(shape, dtype=dt)
        out.append(feeds)
    return out


def dynamic_int8(src: str, dst: str) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet()
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    with _scratch_cwd():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return dst


class _Reader:
    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def qdq_static(src: str, dst: str, per_channel: bool = True) -> str:
    """Static QDQ quantization calibrated on random feeds (the preprocessing step
    ORT recommends, shape inference, is done in a scratch file)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _quiet()
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    with tempfile.TemporaryDirectory(prefix="eeonnx-quant-") as scratch, _scratch_cwd():
        pre = os.path.join(scratch, "pre.onnx")
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - the preprocessing is optional
            pre = src
        quantize_static(pre, dst, _Reader(calibration_feeds(src)), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return dst


def int4(src: str, dst: str, block_size: int = 32, symmetric: bool = False) -> str:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    _quiet()
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    with _scratch_cwd():
        q = MatMulNBitsQuantizer(onnx.load(src), block_size=block_size, is_symmetric=symmetric)
        q.process()
        q.model.save_model_to_file(dst)
    return dst


def fp16(src: str, dst: str) -> str:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    _quiet()
    m = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(m, dst)
    return dst


VARIANTS = {
    "int8": dynamic_int8,
    "qdq": qdq_static,
    "int4-b32": lambda s, d: int4(s, d, 32, False),
    "int4-b128": lambda s, d: int4(s, d, 128, False),
    "int4-b32-sym": lambda s, d: int4(s, d, 32, True),
    "fp16": fp16,
}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    out, models = argv[0], argv[1:] or DEFAULT_MODELS
    os.makedirs(out, exist_ok=True)
    for src in models:
        stem = os.path.basename(src)[: -len(".onnx")]
        for name, make in VARIANTS.items():
            dst = os.path.join(out, f"{stem}.{name}.onnx")
            try:
                make(src, dst)
                print(f"wrote {dst}")
            except Exception as e:  # noqa: BLE001 - report and go on with the next
                print(f"{stem} {name}: {type(e).__name__}: {str(e)[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
