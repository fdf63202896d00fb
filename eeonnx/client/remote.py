"""A server half on another machine, with the interface of :class:`eeonnx.Server`.

``RemoteServer(url, artifact_id)`` speaks the Open Inference Protocol v2
(binary tensors by default) to ``eeonnx serve`` and has the same ``run``,
``initial_state``, ``step``, ``input_names``, ``output_names``,
``artifact_id``, ``state_pairs`` and ``device`` as ``Server``, so
``Client.infer``/``Client.generate`` work with either.

Invariants:
- the server must name the artifact id this client was built for, at
  connection (model metadata) and in every reply, or nothing is returned
  (ArtifactMismatchError);
- the KV cache never travels: a state is a handle on a server-side session
  (its id and the number of steps done); a stale handle is refused by the
  server, never silently run;
- a lost session (its replica died, it expired or was evicted) is rebuilt by
  replaying this generation's encrypted step inputs into a new session, once
  per step (``replay=True``, the default; the replayed steps recompute the
  same cache), or raises SessionLostError (``replay=False``).
"""
from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.parse
from dataclasses import dataclass, field

from eeonnx.errors import ArtifactMismatchError, RemoteError, SessionLostError
from eeonnx.server import protocol
from eeonnx.server.serve.sessions import END_HEADER, NEW, SESSION_HEADER, STEP_HEADER

log = logging.getLogger("eeonnx.remote")


@dataclass
class RemoteState:
    """A generation session on the server: never the cache itself."""

    session: str | None = None
    steps: int = 0
    history: list = field(default_factory=list)  # encrypted feeds of every step, for replay

    def __bool__(self) -> bool:
        return True


class RemoteServer:
    """An ``eeonnx serve`` endpoint serving one artifact (see the module docstring)."""

    def __init__(self, url: str, artifact_id: str, *, timeout: float = 120.0, binary: bool = True,
                 replay: bool = True):
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise RemoteError(f"{url}: expected http://HOST:PORT")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self._conn_args = (parsed.scheme, parsed.hostname, parsed.port, timeout)
        self._local = threading.local()
        self.binary, self.replay = binary, replay
        if not artifact_id:
            raise ArtifactMismatchError("no artifact id to ask the server for (the client's manifest has none)")
        self.artifact_id = artifact_id
        status, _, body = self._request("GET", f"/v2/models/{artifact_id}")
        if status == 404:
            raise ArtifactMismatchError(f"{self.url} does not serve artifact {artifact_id}: start it with "
                                        f"eeonnx serve on the server/ directory of this compile")
        meta = self._json(status, body)
        if meta.get("name") != artifact_id:
            raise ArtifactMismatchError(f"{self.url} answered for model {meta.get('name')!r}, not {artifact_id}")
        self.state_pairs: list[dict] = json.loads((meta.get("parameters") or {}).get("eeonnx.state", "[]"))
        self.input_names = [i["name"] for i in meta["inputs"]]
        self.output_names = [o["name"] for o in meta["outputs"]]
        self.metadata = meta

    @property
    def device(self) -> str:
        return f"remote {self.url}"

    # -- HTTP -------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            scheme, host, port, timeout = self._conn_args
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(host, port, timeout=timeout)
        return conn

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in (0, 1):  # one retry on a stale keep-alive connection, before anything was sent back
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise RemoteError(f"{self.url}: connection lost: {e}") from None
            except OSError as e:
                conn.close()
                self._local.conn = None
                raise RemoteError(f"{self.url}: cannot reach the server: {e}") from None

    @staticmethod
    def _message(body: bytes) -> str:
        try:
            return str(json.loads(body).get("error", body[:200]))
        except (ValueError, AttributeError):
            return body[:200].decode(errors="replace")

    def _json(self, status: int, body: bytes) -> dict:
        if status != 200:
            raise RemoteError(f"{self.url}: HTTP {status}: {self._message(body)}", status)
        return json.loads(body)

    def _infer(self, feeds: dict, headers: dict) -> tuple[dict, dict]:
        body, h = protocol.encode_request(feeds, binary=self.binary, binary_outputs=self.binary)
        status, rh, data = self._request("POST", f"/v2/models/{self.artifact_id}/infer", body, {**h, **headers})
        if status != 200:
            cls = SessionLostError if status in (404, 503) and headers.get(SESSION_HEADER, NEW) != NEW else RemoteError
            raise cls(f"{self.url}: HTTP {status}: {self._message(data)}", status)
        reply = protocol.decode_response(data, rh.get(protocol.HEADER_LENGTH.lower()))
        if reply.model_name != self.artifact_id:
            raise ArtifactMismatchError(f"{self.url} answered for model {reply.model_name!r}, not {self.artifact_id}: "
                                        f"outputs discarded")
        return reply.outputs, rh

    # -- the Server interface -----------------------------------------------------
    def run(self, feeds: dict) -> dict:
        return self._infer(feeds, {})[0]

    def initial_state(self, pairs: list[dict] | None = None, batch: int = 1):
        """A new (not yet started) session, or ``{}`` for a model without state."""
        if not self.state_pairs:
            return {}
        if batch != 1:
            raise ValueError("remote generation sessions hold a batch of 1")
        return RemoteState()

    def step(self, feeds: dict, state) -> tuple[dict, object]:
        """One step in the session: returns (outputs, the next state handle)."""
        if not state:
            return self.run(feeds), state
        history = state.history + [feeds] if self.replay else []
        try:
            outputs, rh = self._step(feeds, state)
        except SessionLostError as e:
            if not self.replay or state.session is None:
                raise
            log.warning("%s; replaying %d step(s) into a new session", e, len(state.history))
            fresh = RemoteState()
            for past in state.history:
                _, rh = self._step(past, fresh)
                fresh = RemoteState(rh[SESSION_HEADER], fresh.steps + 1)
            outputs, rh = self._step(feeds, fresh)
        return outputs, RemoteState(rh[SESSION_HEADER], int(rh[STEP_HEADER]), history)

    def _step(self, feeds: dict, state: RemoteState):
        headers = {SESSION_HEADER: state.session or NEW, STEP_HEADER: str(state.steps)}
        outputs, rh = self._infer(feeds, headers)
        if not rh.get(SESSION_HEADER) or rh.get(STEP_HEADER) != str(state.steps + 1):
            raise RemoteError(f"{self.url}: the session reply says step {rh.get(STEP_HEADER)}, "
                              f"expected {state.steps + 1}")
        return outputs, rh

    def end(self, state) -> None:
        """Drop a session on the server now (otherwise its TTL does)."""
        if isinstance(state, RemoteState) and state.session:
            self._request("DELETE", f"/v2/models/{self.artifact_id}/sessions/{state.session}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
