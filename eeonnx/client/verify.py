"""verify: golden run of original vs encode -> server -> decode on ONNX Runtime.

Random feeds of the declared input shapes (symbolic dims from ``dims``, else
2): floats standard normal, integers in [0, hi) where hi is the row count of
the table they index (else 2), booleans true. Returns the max relative error
per output: max|ref - got| / max(max|ref|, 1e-6).
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from eeonnx.client.client import Client
from eeonnx.server import runtime
from eeonnx.server.runtime import NP_TYPES
from eeonnx.server.session import Server

PROTO_LIMIT = 2**31 - 1  # protobuf's limit on one serialized model


def plain_session(original, providers=None):
    """An ORT session for the ORIGINAL model (a path or a ModelProto).

    ONNX Runtime refuses some external-data files its own shape inference
    cannot read (a Reshape target stored externally: "Cannot parse data from
    external tensors"); such a model is loaded with its data and handed over
    in memory, or, above protobuf's 2 GB, re-saved into a temporary directory
    with small tensors inline (kept alive as ``session._eeonnx_tmp``)."""
    import onnxruntime as ort

    providers = providers or ["CPUExecutionProvider"]
    if isinstance(original, onnx.ModelProto):
        return runtime.session(original.SerializeToString(), providers)
    path = os.fspath(original)
    try:
        return runtime.session(path, providers)
    except ort.capi.onnxruntime_pybind11_state.Fail as e:
        if "external" not in str(e).lower():
            raise
    proto = onnx.load(path)  # with its external data
    if proto.ByteSize() < PROTO_LIMIT:
        return runtime.session(proto.SerializeToString(), providers)
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="eeonnx-plain-")
    copy = os.path.join(tmp.name, "model.onnx")
    onnx.save(proto, copy, save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
    sess = runtime.session(copy, providers)
    sess._eeonnx_tmp = tmp
    return sess


def random_feeds(session, dims: dict[str, int] | None, rng: np.random.Generator,
                 empty: dict[str, int] | None = None) -> dict:
    """``empty``: state input -> cache axis, fed with length 0 (a fresh cache)."""
    dims = dims or {}
    empty = empty or {}
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else dims.get(str(d), 2) for d in i.shape]
        if i.name in empty:
            shape[empty[i.name]] = 0
        dt = NP_TYPES.get(i.type)
        if dt is None:
            raise ValueError(f"input '{i.name}' has type {i.type}, which verify cannot generate")
        if dt == np.bool_:
            feeds[i.name] = np.ones(shape, dtype=dt)
        elif np.issubdtype(dt, np.integer):
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    if ref.dtype.kind in "fc":
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        return float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)))) / scale
    return float(np.mean(ref != got))


def verify(original, out_dir: str, trials: int = 3, dims=None, seed: int = 0, providers=None) -> dict[str, float]:
    plain = plain_session(original, providers)
    client = Client(out_dir)
    server = Server(os.path.join(out_dir, "server", "model.onnx"), providers or ["CPUExecutionProvider"])
    client.check_server(server)
    names = [o.name for o in plain.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = {n: 0.0 for n in names}
    pairs = client.manifest.get("state", [])
    state = {s["input"]: s["axis"] for s in pairs}  # original names (the plain model's feeds)
    state_out = {s["output"] for s in pairs}
    to_server = {s["input"]: s.get("server_input", s["input"]) for s in pairs}
    names = [n for n in names if n not in state_out]  # the cache stays in the server's layout
    for _ in range(trials):
        # a model with a server-side cache is checked from an empty cache, the first call
        feeds = random_feeds(plain, dims, rng, empty=state)
        ref = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feeds)))
        served = server.run({**client.encode({n: feeds[n] for n in client.input_names}),
                             **{to_server[n]: feeds[n] for n in state}})
        got = client.decode(served)
        for n in names:
            worst[n] = max(worst[n], rel_err(ref[n], got[n]))
    return worst
