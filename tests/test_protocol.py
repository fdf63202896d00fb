"""Open Inference Protocol v2 encoding (eeonnx.server.protocol): exact round trips for every
datatype in JSON and binary form, interoperability with Triton's own HTTP client encoder and
decoder (tritonclient.http), and ProtocolError for every malformed body. No Ray, no server."""
from __future__ import annotations

import json

import numpy as np
import pytest

from eeonnx.server import protocol
from eeonnx.server.protocol import ProtocolError

DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
          np.float16, np.float32, np.float64]


def sample(dtype, shape=(2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_request_roundtrip_is_exact(dtype, binary):
    feeds = {"a": sample(dtype), "b": sample(dtype, (0, 5)), "c": sample(dtype, ())}
    body, headers = protocol.encode_request(feeds, binary=binary, outputs=["y"], request_id="r1")
    assert (protocol.HEADER_LENGTH in headers) == binary
    req = protocol.decode_request(body, headers.get(protocol.HEADER_LENGTH))
    assert req.id == "r1" and req.outputs == {"y": True}
    assert list(req.inputs) == ["a", "b", "c"]
    for name, want in feeds.items():
        got = req.inputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("binary", [False, True, {"x": True, "z": False}])
def test_response_roundtrip_is_exact(binary):
    outs = {"x": sample(np.float32), "z": sample(np.int64, (3,))}
    body, headers = protocol.encode_response("m", outs, binary=binary, request_id="7", parameters={"k": 1})
    reply = protocol.decode_response(body, headers.get(protocol.HEADER_LENGTH))
    assert (reply.model_name, reply.id, reply.parameters) == ("m", "7", {"k": 1})
    for n in outs:
        assert reply.outputs[n].tobytes() == outs[n].tobytes() and reply.outputs[n].dtype == outs[n].dtype


def test_nested_json_data_is_accepted():
    doc = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}
    req = protocol.decode_request(json.dumps(doc).encode())
    assert req.inputs["x"].tolist() == [[1, 2], [3, 4]] and req.inputs["x"].dtype == np.int64
    assert req.outputs is None and req.binary_default is False


# --------------------------------------------------------------------------- Triton's client speaks the same
def triton_http():
    try:
        import tritonclient.http as http
    except (ImportError, RuntimeError) as e:  # RuntimeError: tritonclient without its http extra
        pytest.skip(f"tritonclient[http] not installed: {e}")
    return http


def test_triton_client_request_decodes():
    http = triton_http()
    x, ids = sample(np.float32), sample(np.int64, (1, 7))
    a = http.InferInput("x", list(x.shape), "FP32")
    a.set_data_from_numpy(x, binary_data=True)
    b = http.InferInput("ids", list(ids.shape), "INT64")
    b.set_data_from_numpy(ids, binary_data=False)
    body, json_size = http.InferenceServerClient.generate_request_body(
        [a, b], outputs=[http.InferRequestedOutput("y", binary_data=True)])
    req = protocol.decode_request(body, json_size)
    assert req.inputs["x"].tobytes() == x.tobytes() and np.array_equal(req.inputs["ids"], ids)
    assert req.outputs == {"y": True}


@pytest.mark.parametrize("binary", [False, True])
def test_triton_client_parses_our_response(binary):
    http = triton_http()
    y = sample(np.float32)
    body, headers = protocol.encode_response("m", {"y": y}, binary=binary)
    length = headers.get(protocol.HEADER_LENGTH)
    result = http.InferResult.from_response_body(body, header_length=int(length) if length else None)
    assert result.as_numpy("y").tobytes() == y.tobytes()


# --------------------------------------------------------------------------- malformed bodies
def _json_body(doc) -> bytes:
    return json.dumps(doc).encode()


BAD = {
    "not json": (b"{nope", None),
    "not an object": (b"[1, 2]", None),
    "no inputs": (_json_body({}), None),
    "unknown datatype": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]}), None),
    "BYTES": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}), None),
    "negative dim": (_json_body({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}), None),
    "wrong count": (_json_body({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}), None),
    "strings as data": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}]}),
                        None),
    "floats for ints": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}]}),
                        None),
    "int out of range": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]}),
                         None),
    "no data": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}), None),
    "duplicate name": (_json_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}),
                       None),
    "header length not a number": (b"{}", "abc"),
    "header length past the end": (b"{}", "99"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_requests_raise_protocol_error(case):
    body, length = BAD[case]
    with pytest.raises(ProtocolError):
        protocol.decode_request(body, length)


def test_binary_size_mismatches_are_refused():
    x = np.arange(6, dtype=np.float32)
    body, headers = protocol.encode_request({"x": x})
    n = int(headers[protocol.HEADER_LENGTH])
    with pytest.raises(ProtocolError, match="ends before"):
        protocol.decode_request(body[:-4], n)  # truncated blob
    with pytest.raises(ProtocolError, match="after the last"):
        protocol.decode_request(body + b"\0" * 4, n)  # trailing garbage
    doc = json.loads(body[:n])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 20
    head = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match="does not match"):
        protocol.decode_request(head + body[n:], len(head))


def test_error_reply_raises_with_its_message():
    with pytest.raises(ProtocolError, match="unknown model 'abc'"):
        protocol.decode_response(b'{"error": "unknown model \'abc\'"}')
