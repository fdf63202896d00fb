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
    src = original.SerializeToString() if isinstance(original, onnx.ModelProto) else os.fspath(original)
    plain = runtime.session(src, providers or ["CPUExecutionProvider"])
    client = Client(out_dir)
    server = Server(os.path.join(out_dir, "server", "model.onnx"), providers or ["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    rng = np.random.default_rng(seed)
    worst = {n: 0.0 for n in names}
    state = {s["input"]: s["axis"] for s in client.manifest.get("state", [])}
    state_out = {s["output"] for s in client.manifest.get("state", [])}
    names = [n for n in names if n not in state_out]  # the cache stays in the server's layout
    for _ in range(trials):
        # a model with a server-side cache is checked from an empty cache, the first call
        feeds = random_feeds(plain, dims, rng, empty=state)
        ref = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feeds)))
        served = server.run({**client.encode({n: feeds[n] for n in client.input_names}),
                             **{n: feeds[n] for n in state}})
        got = client.decode(served)
        for n in names:
            worst[n] = max(worst[n], rel_err(ref[n], got[n]))
    return worst
