"""eeonnx.RemoteServer without Ray: against a stub OIP server (stdlib http.server on 127.0.0.1,
stopped at the end) it checks the artifact id at connection and in every reply, turns HTTP
errors into RemoteError / SessionLostError with the server's message, carries only a session
handle (id + step count) as state, and replays a lost session's steps into a new one."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import eeonnx
from eeonnx.client.remote import RemoteServer, RemoteState
from eeonnx.errors import ArtifactMismatchError, RemoteError, SessionLostError
from eeonnx.server import protocol

AID = "a" * 32


class Stub(BaseHTTPRequestHandler):
    """A one-model OIP server: y = x + (number of earlier steps in the session)."""

    reply_name = AID
    made = 0
    sessions: dict = {}
    log: list = []

    def log_message(self, *a):
        pass

    def _send(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != f"/v2/models/{AID}":
            return self._send(404, b'{"error": "unknown model"}')
        meta = {"name": self.reply_name, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
                "parameters": {"eeonnx.state": json.dumps([{"input": "past", "output": "present", "axis": 0}])}}
        self._send(200, json.dumps(meta).encode())

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = protocol.decode_request(body, self.headers.get(protocol.HEADER_LENGTH))
        sid, step = self.headers.get("eeonnx-session-id"), self.headers.get("eeonnx-session-step")
        Stub.log.append((sid, step))
        headers = {}
        offset = 0
        if sid is not None:
            if sid == "new":
                Stub.made += 1
                sid = f"r.{Stub.made}"
                Stub.sessions[sid] = 0
            elif sid not in Stub.sessions:
                return self._send(404, b'{"error": "unknown session"}')
            offset = Stub.sessions[sid]
            Stub.sessions[sid] += 1
            headers = {"eeonnx-session-id": sid, "eeonnx-session-step": str(Stub.sessions[sid])}
        out, h = protocol.encode_response(self.reply_name, {"y": req.inputs["x"] + offset}, binary=True)
        self._send(200, out, {**h, **headers})


@pytest.fixture
def stub():
    Stub.reply_name, Stub.sessions, Stub.log = AID, {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=10)


def test_public_name():
    assert eeonnx.RemoteServer is RemoteServer


def test_metadata_and_run(stub):
    r = RemoteServer(stub, AID)
    assert (r.input_names, r.output_names, r.artifact_id) == (["x"], ["y"], AID)
    assert r.state_pairs == [{"input": "past", "output": "present", "axis": 0}]
    x = np.arange(5, dtype=np.float32)
    assert np.array_equal(r.run({"x": x})["y"], x)


def test_artifact_id_is_checked(stub):
    with pytest.raises(ArtifactMismatchError, match="does not serve"):
        RemoteServer(stub, "b" * 32)
    r = RemoteServer(stub, AID)
    Stub.reply_name = "c" * 32  # a reply for another model is never trusted
    with pytest.raises(ArtifactMismatchError, match="outputs discarded"):
        r.run({"x": np.zeros(2, np.float32)})
    with pytest.raises(ArtifactMismatchError):
        RemoteServer(stub, AID)


def test_unreachable_server_is_a_remote_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteServer(f"http://127.0.0.1:{port}", AID)


def test_state_is_a_session_handle_and_steps_are_numbered(stub):
    r = RemoteServer(stub, AID)
    s0 = r.initial_state([], batch=1)
    assert isinstance(s0, RemoteState) and s0 and s0.session is None
    x = np.ones(3, np.float32)
    y1, s1 = r.step({"x": x}, s0)
    y2, s2 = r.step({"x": x}, s1)
    assert np.array_equal(y1["y"], x) and np.array_equal(y2["y"], x + 1)
    assert (s1.steps, s2.steps, s2.session) == (1, 2, s1.session)
    assert Stub.log == [("new", "0"), (s1.session, "1")]
    with pytest.raises(ValueError):
        r.initial_state([], batch=2)


def test_lost_session_replays_or_raises(stub):
    x = np.ones(3, np.float32)
    for replay in (False, True):
        r = RemoteServer(stub, AID, replay=replay)
        _, s = r.step({"x": x}, r.initial_state())
        _, s = r.step({"x": x}, s)
        Stub.sessions.pop(s.session)  # the replica holding it restarted
        if not replay:
            with pytest.raises(SessionLostError, match="unknown session"):
                r.step({"x": x}, s)
            continue
        y, s3 = r.step({"x": x}, s)
        assert np.array_equal(y["y"], x + 2)  # the same output as an uninterrupted session
        assert s3.steps == 3 and s3.session != s.session
