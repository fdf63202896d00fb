"""verify: golden run of original vs encode -> server -> decode on ONNX Runtime.

Random feeds of the declared input shapes (symbolic dims from ``dims``, else
2; a server-side cache starts empty): floats standard normal, token ids
(inputs that index a permuted table) uniform over the vocabulary, other
integers in [0, 2) (all ones if the original model refuses those, e.g. a
mask), booleans true.

Each output is judged against the plain model's own float noise: the error
is max|ref - got| / max(max|ref|, 1e-6); the noise floor is the larger of the
output dtype's epsilon and the same measure between the plain model on x and
on x perturbed by ``PERTURB`` relative (at least one ulp of the input dtype).
An output passes when its error is at most max(tol, NOISE_FACTOR * floor),
the floor capped at ``MAX_FLOOR`` (a model that chaotic is judged by tol
alone). Integer and boolean outputs must be equal (fraction differing <= tol).
So an fp16 model that computes exactly what the original does passes at the
default tol, and a saturated output that the original itself rounds the same
way is not a mismatch; a wrong decode (errors of order 1) always fails.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from eeonnx.client.client import Client
from eeonnx.server import runtime
from eeonnx.server.runtime import NP_TYPES
from eeonnx.server.session import Server

PROTO_LIMIT = 2**31 - 1  # protobuf's limit on one serialized model
PERTURB = 1e-6  # relative perturbation of float inputs that measures the plain model's noise
NOISE_FACTOR = 4.0
MAX_FLOOR = 1e-2


@dataclass
class OutputCheck:
    """One output's verdict: worst error over the trials, the noise floor it was judged by."""

    name: str
    err: float
    floor: float
    allowed: float

    @property
    def ok(self) -> bool:
        return self.err <= self.allowed


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
                 empty: dict[str, int] | None = None, high: dict[str, int] | None = None,
                 int_ones: bool = False) -> dict:
    """``empty``: state input -> cache axis, fed with length 0 (a fresh cache);
    ``high``: integer input -> exclusive upper bound (token ids: the vocabulary);
    ``int_ones``: other integer inputs all ones instead of random 0/1."""
    dims = dims or {}
    empty = empty or {}
    high = high or {}
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
            if i.name in high:
                feeds[i.name] = rng.integers(0, high[i.name], size=shape).astype(dt)
            elif int_ones:
                feeds[i.name] = np.ones(shape, dtype=dt)
            else:
                feeds[i.name] = rng.integers(0, 2, size=shape).astype(dt)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def perturbed(feeds: dict, rng: np.random.Generator, rel: float = PERTURB) -> dict:
    """Float inputs times (1 + rel * N(0, 1)), moved by at least one ulp; others as they are."""
    out = {}
    for name, a in feeds.items():
        if a.dtype.kind != "f" or a.size == 0:
            out[name] = a
            continue
        eps = float(np.finfo(a.dtype).eps)
        step = np.maximum(np.abs(a.astype(np.float64)) * max(rel, eps), np.finfo(a.dtype).tiny)
        moved = (a + step * rng.standard_normal(a.shape)).astype(a.dtype)
        same = moved == a
        moved[same] = np.nextafter(a[same], np.asarray(np.inf, dtype=a.dtype))
        out[name] = moved
    return out


def noise_floor(ref: np.ndarray, noisy: np.ndarray) -> float:
    """The plain model's own float noise on an output (see the module docstring)."""
    ref = np.asarray(ref)
    if ref.dtype.kind not in "fc":
        return 0.0
    return max(float(np.finfo(ref.dtype).eps), rel_err(ref, noisy))


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


def check_pair(original, out_dir, plain, client) -> None:
    """Refuse a model and an artifact that do not belong together: the artifact's
    client inputs/outputs (plus its state pairs) must be the model's, by name."""
    from eeonnx.errors import ArtifactDirError

    pairs = client.manifest.get("state", [])
    theirs_in = sorted(client.input_names + [s["input"] for s in pairs])
    theirs_out = sorted(client.output_names + [s["output"] for s in pairs])
    mine_in = sorted(i.name for i in plain.get_inputs())
    mine_out = sorted(o.name for o in plain.get_outputs())
    if (mine_in, mine_out) != (theirs_in, theirs_out):
        what = "<ModelProto>" if isinstance(original, onnx.ModelProto) else os.fspath(original)
        raise ArtifactDirError(
            f"{what} and {out_dir} do not belong together: the model takes {mine_in} and gives {mine_out}, "
            f"the artifact (compiled from {client.manifest.get('source', '?')}) takes {theirs_in} "
            f"and gives {theirs_out}")


def _plain_run(plain, make_feeds):
    """(feeds, outputs) of the original on random feeds; integer inputs all ones
    when random 0/1 ones make the original itself fail (e.g. a mask in a GatherND)."""
    from eeonnx.errors import InputError

    import onnxruntime as ort

    names = [o.name for o in plain.get_outputs()]
    feeds = make_feeds(False)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a refusal here is expected and handled
    try:
        return feeds, dict(zip(names, plain.run(None, feeds, quiet)))
    except Exception as first:  # ORT's errors: the model refuses these values
        feeds = make_feeds(True)
        try:
            return feeds, dict(zip(names, plain.run(None, feeds)))
        except Exception:
            raise InputError(f"the original model fails on random inputs of its declared shapes "
                             f"({str(first).splitlines()[0][:200]}); give the sizes of its symbolic dims "
                             "with --dim NAME=SIZE") from None


def verify(original, out_dir: str, trials: int = 3, dims=None, seed: int = 0, providers=None,
           tol: float = 1e-4) -> dict[str, OutputCheck]:
    """Per original output (the cache excepted), its worst error and noise floor over ``trials``."""
    plain = plain_session(original, providers)
    client = Client(out_dir)
    server = Server(os.path.join(out_dir, "server", "model.onnx"), providers or ["CPUExecutionProvider"])
    client.check_server(server)
    check_pair(original, out_dir, plain, client)
    rng = np.random.default_rng(seed)
    pairs = client.manifest.get("state", [])
    state = {s["input"]: s["axis"] for s in pairs}  # original names (the plain model's feeds)
    state_out = {s["output"] for s in pairs}
    # a cache the client carries (--client-state) also starts empty, through encode
    empty = {**state, **{s["input"]: s["axis"] for s in client.manifest.get("client_state", [])}}
    to_server = {s["input"]: s.get("server_input", s["input"]) for s in pairs}
    high = {c["name"]: c["value_size"] for c in client.manifest.get("inputs", []) if "value_size" in c}
    names = [o.name for o in plain.get_outputs() if o.name not in state_out]  # the cache stays permuted
    worst = {n: 0.0 for n in names}
    floor = {n: 0.0 for n in names}
    for _ in range(trials):
        # a model with a server-side cache is checked from an empty cache, the first call
        feeds, ref = _plain_run(plain, lambda ones: random_feeds(plain, dims, rng, empty=empty, high=high,
                                                                 int_ones=ones))
        noisy = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, perturbed(feeds, rng))))
        served = server.run({**client.encode({n: feeds[n] for n in client.input_names}),
                             **{to_server[n]: feeds[n] for n in state}})
        got = client.decode(served)
        for n in names:
            worst[n] = max(worst[n], rel_err(ref[n], got[n]))
            floor[n] = max(floor[n], noise_floor(ref[n], noisy[n]))
    return {n: OutputCheck(n, worst[n], floor[n], max(tol, NOISE_FACTOR * min(floor[n], MAX_FLOOR)))
            for n in names}
