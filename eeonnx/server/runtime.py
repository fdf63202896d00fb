"""ONNX Runtime sessions with sensible providers.

onnxruntime-gpu lists CUDAExecutionProvider even where CUDA cannot load, and
then logs errors and falls back. ``providers_for(None)`` probes CUDA once,
quietly, and returns it only when a session really runs on it.
"""
from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort

# ONNX Runtime's type strings -> numpy dtypes, for the tensors a session takes
NP_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def session_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    so = session_options()
    so.log_severity_level = 4
    previous = 2  # onnxruntime's default (warnings)
    try:
        ort.set_default_logger_severity(4)
        s = ort.InferenceSession(m.SerializeToString(), so,
                                 providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return "CUDAExecutionProvider" in s.get_providers()
    except Exception:  # any failure means: not usable here
        return False
    finally:
        ort.set_default_logger_severity(previous)


def providers_for(providers=None, device: str | None = None) -> list[str]:
    if providers:
        return list(providers)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or cuda_usable():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path_or_bytes, providers=None) -> ort.InferenceSession:
    return ort.InferenceSession(path_or_bytes, session_options(), providers=providers_for(providers))
