"""The Ray Serve application: Open Inference Protocol v2 over HTTP, many artifacts, KV sessions.

Two deployments:
- ``Ingress`` (FastAPI, stateless): parses and validates requests against the
  catalog (names, datatypes, ranks, static dims, size caps), answers model
  metadata, turns every refusal into a 4xx with a message;
- ``ModelHost`` (``--replicas`` replicas): loads server models on demand
  (``serve.multiplexed``: least recently used model evicted past
  ``max_models``) and holds the generation sessions of its clients (see
  sessions.py; routing.py sends a session's steps to its replica).

Endpoints: ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``,
``GET /v2/models/{id}``, ``GET /v2/models/{id}/ready``,
``POST /v2/models/{id}/infer`` (JSON or binary tensors; session headers
``eeonnx-session-id`` / ``eeonnx-session-step`` / ``eeonnx-session-end``),
``DELETE /v2/models/{id}/sessions/{session}``. Artifact ids are not listed
anywhere: a client addresses the model it knows.
"""
import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from eeonnx.server import protocol
from eeonnx.server.serve import sessions as S
from eeonnx.server.serve.catalog import Entry

log = logging.getLogger("eeonnx.serve")
APP_NAME = "eeonnx"


@dataclass
class Options:
    """Service settings (the ``eeonnx serve`` flags)."""

    replicas: int = 1
    max_models: int = 4
    max_sessions: int = 64
    session_ttl: float = 600.0
    max_state_bytes: int = 2 << 30
    max_request_bytes: int = 64 << 20
    replica_cpus: float = 1.0
    providers: Optional[list] = None


def _error(status: int, message: str):
    return JSONResponse({"error": message}, status_code=status)


def check_inputs(entry: Entry, feeds: dict) -> Optional[str]:
    """Why these feeds do not fit the model (names, datatypes, ranks, static dims), or None."""
    want = {i["name"]: i for i in entry.inputs}
    missing, unknown = sorted(set(want) - set(feeds)), sorted(set(feeds) - set(want))
    if missing or unknown:
        return f"model inputs are {list(want)}; missing {missing}, unknown {unknown}"
    for name, value in feeds.items():
        spec = want[name]
        got = protocol.datatype_of(value)
        if got != spec["datatype"]:
            return f"input '{name}': datatype {got}, the model takes {spec['datatype']}"
        if len(value.shape) != len(spec["shape"]) or any(
                d >= 0 and d != v for d, v in zip(spec["shape"], value.shape)):
            return f"input '{name}': shape {list(value.shape)} does not fit {spec['shape']} (-1: any size)"
    return None


def build(entries: dict, options: Optional[Options] = None):
    """The Ray Serve application (bind it with ``serve.run``)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from eeonnx.server.serve.routing import SessionRouter

    opt = options or Options()
    api = FastAPI(title="eeonnx server", docs_url=None, redoc_url=None, openapi_url=None)

    @serve.deployment(num_replicas=opt.replicas, max_ongoing_requests=32,
                      ray_actor_options={"num_cpus": opt.replica_cpus},
                      request_router_config=RequestRouterConfig(request_router_class=SessionRouter))
    class ModelHost:
        def __init__(self, entries: dict, opt: Options):
            self.entries, self.opt = entries, opt
            self.replica = serve.get_replica_context().replica_id.unique_id
            self.sessions = S.SessionTable(self.replica, opt.max_sessions, opt.session_ttl, opt.max_state_bytes)
            # idle replicas expire sessions too (begin() also expires on every request)
            threading.Thread(target=self._expire_loop, daemon=True).start()

        def _expire_loop(self):
            period = max(1.0, min(30.0, self.opt.session_ttl / 4))
            while True:
                time.sleep(period)
                self.sessions.expire()

        @serve.multiplexed(max_num_models_per_replica=opt.max_models)
        async def model(self, artifact_id: str):
            from eeonnx.server.session import Server

            return await asyncio.to_thread(Server, self.entries[artifact_id].path, self.opt.providers)

        async def infer(self, artifact_id: str, feeds: dict, session: Optional[str], steps, end: bool) -> dict:
            """{"outputs": ..., "session": id, "steps": n} or {"status": code, "error": message}."""
            entry = self.entries[artifact_id]
            server = await self.model(artifact_id)
            try:
                if not entry.state:
                    if session is not None:
                        return {"status": 400, "error": f"model {artifact_id} keeps no state: send no session"}
                    return {"outputs": await asyncio.to_thread(server.run, feeds)}
                # a stateful model without a session: a one-step session
                s = self.sessions.begin(session or S.NEW, artifact_id, steps, server, entry.state)
            except S.SessionError as e:
                return {"status": e.status, "error": str(e)}
            except Exception as e:  # ONNX Runtime refused the feeds
                return {"status": 400, "error": f"the model cannot run these inputs: {e}"}
            new_state = None
            try:
                outputs, new_state = await asyncio.to_thread(server.step, feeds, s.state)
            except Exception as e:
                return {"status": 400, "error": f"the model cannot run these inputs: {e}"}
            finally:
                self.sessions.release(s, new_state, end=end or session is None)
            return {"outputs": outputs, "session": s.id if session is not None else None, "steps": s.steps}

        async def end_session(self, session: str) -> bool:
            return self.sessions.end(session)

        async def stats(self) -> dict:
            return {"replica": self.replica, "sessions": len(self.sessions), "state_bytes": self.sessions.nbytes,
                    "evicted": dict(self.sessions.evicted)}

    @serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Ingress:
        def __init__(self, host, entries: dict, opt: Options):
            self.host, self.entries, self.opt = host, entries, opt

        def _entry(self, model: str) -> Optional[Entry]:
            return self.entries.get(model)

        @api.get("/v2")
        def server_metadata(self):
            return {"name": "eeonnx", "version": "1", "extensions": ["binary_tensor_data", "eeonnx_sessions"]}

        @api.get("/v2/health/live")
        def live(self):
            return Response(status_code=200)

        @api.get("/v2/health/ready")
        def ready(self):
            return Response(status_code=200)

        @api.get("/v2/models/{model}")
        def model_metadata(self, model: str):
            entry = self._entry(model)
            return entry.metadata() if entry else _error(404, f"unknown model '{model}'")

        @api.get("/v2/models/{model}/ready")
        def model_ready(self, model: str):
            return Response(status_code=200) if self._entry(model) else _error(404, f"unknown model '{model}'")

        @api.delete("/v2/models/{model}/sessions/{session}")
        async def end_session(self, model: str, session: str):
            if not self._entry(model):
                return _error(404, f"unknown model '{model}'")
            try:
                found = await self.host.options(session_id=session).end_session.remote(session)
            except Exception as e:  # the replica holding it is gone: so is the session
                log.warning("ending session %s: %s", session, e)
                found = False
            return Response(status_code=200) if found else _error(404, f"unknown session '{session}'")

        @api.post("/v2/models/{model}/infer")
        async def infer(self, model: str, request: Request):
            entry = self._entry(model)
            if entry is None:
                return _error(404, f"unknown model '{model}'")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.opt.max_request_bytes:
                return _error(413, f"request of {length} bytes is over the limit of {self.opt.max_request_bytes}")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.opt.max_request_bytes:
                    return _error(413, f"request is over the limit of {self.opt.max_request_bytes} bytes")
            try:
                req = protocol.decode_request(bytes(body), request.headers.get(protocol.HEADER_LENGTH))
            except protocol.ProtocolError as e:
                return _error(400, str(e))
            problem = check_inputs(entry, req.inputs)
            outputs = [o["name"] for o in entry.outputs]
            if problem is None and req.outputs is not None:
                unknown = sorted(set(req.outputs) - set(outputs))
                problem = f"unknown outputs {unknown}; the model has {outputs}" if unknown else None
            if problem:
                return _error(400, problem)
            session = request.headers.get(S.SESSION_HEADER)
            steps = request.headers.get(S.STEP_HEADER)
            end = request.headers.get(S.END_HEADER, "") in ("1", "true")
            handle = self.host.options(multiplexed_model_id=model, **({"session_id": session} if session else {}))
            try:
                res = await handle.infer.remote(model, req.inputs, session, steps, end)
            except Exception as e:  # the replica died or is unreachable: say so, never guess
                what = (f"the replica holding session '{session}' failed: its KV cache is lost; start again from "
                        f"the prompt" if session and session != S.NEW else "the model replica failed")
                log.warning("infer %s: %s: %s", model, type(e).__name__, e)
                return _error(503, f"{what} ({type(e).__name__})")
            if "error" in res:
                return _error(res["status"], res["error"])
            wanted = req.outputs if req.outputs is not None else {n: req.binary_default for n in outputs}
            result = {n: res["outputs"][n] for n in wanted}
            headers = {}
            params = None
            if res.get("session"):
                headers = {S.SESSION_HEADER: res["session"], S.STEP_HEADER: str(res["steps"])}
                params = {"session_id": res["session"], "session_step": res["steps"]}
            body, h = protocol.encode_response(model, result, binary=wanted, request_id=req.id, parameters=params)
            return Response(content=body, headers={**h, **headers}, media_type=h["Content-Type"])

    return Ingress.bind(ModelHost.bind(entries, opt), entries, opt)
