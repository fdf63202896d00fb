"""Server-side generation sessions: the KV cache of each client stays in this replica's memory.

A session is created by the first step of a generation (session header
``new``), gets an id that starts with the id of the replica holding it (the
request router sends later steps there, see routing.py), and keeps the state
tensors the model returned (ORT values, on the device when the model runs on
CUDA): the cache grows step by step and never travels.

Invariants (what keeps tokens from being silently wrong):
- a step names the number of steps the client has completed; a session
  whose count differs (a replayed, duplicated or stale request) refuses it;
- a session serves one artifact; steps for another model are refused;
- a session is used by one step at a time (a concurrent step is refused);
- a failed step leaves the session as it was (ORT does not mutate inputs);
- eviction (end, TTL, max sessions, memory cap: least recently used first)
  drops the whole session; a later step for it gets "unknown session".
"""
from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from eeonnx.server.runtime import NP_TYPES

SESSION_HEADER = "eeonnx-session-id"
"""Request: ``new`` to start a session, or its id; response: the session's id."""
STEP_HEADER = "eeonnx-session-step"
"""Request: steps the client has completed in this session (0 for ``new``)."""
END_HEADER = "eeonnx-session-end"
"""Request: ``1`` to drop the session after this step."""
NEW = "new"


class SessionError(Exception):
    """A step the session table refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Session:
    id: str
    artifact_id: str
    server: object  # eeonnx.server.session.Server: keeps the model alive while the session lives
    state: dict
    steps: int = 0
    nbytes: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


def state_bytes(state: dict) -> int:
    """Bytes held by state tensors (ORT values or numpy arrays)."""
    total = 0
    for v in state.values():
        if hasattr(v, "data_type"):  # an onnxruntime OrtValue
            shape, itemsize = v.shape(), np.dtype(NP_TYPES[v.data_type()]).itemsize
        else:
            shape, itemsize = v.shape, v.dtype.itemsize
        total += math.prod(shape) * itemsize
    return total


class SessionTable:
    """The sessions of one replica, least recently used first."""

    def __init__(self, owner: str, max_sessions: int = 64, ttl_s: float = 600.0, max_bytes: int = 2 << 30):
        self.owner = owner
        self.max_sessions, self.ttl_s, self.max_bytes = max_sessions, ttl_s, max_bytes
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = {"end": 0, "ttl": 0, "max_sessions": 0, "memory": 0}

    def __len__(self):
        return len(self._sessions)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._sessions.values())

    def _drop(self, sid: str, why: str) -> None:
        if self._sessions.pop(sid, None) is not None:
            self.evicted[why] += 1

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for sid in [s.id for s in self._sessions.values() if now - s.last_used > self.ttl_s]:
                self._drop(sid, "ttl")

    def end(self, sid: str) -> bool:
        with self._lock:
            found = sid in self._sessions
            self._drop(sid, "end")
            return found

    def begin(self, sid: str, artifact_id: str, steps, server, pairs: list[dict]) -> Session:
        """The session a step runs in, locked; ``release`` it after the step. A new session
        starts with the empty state of ``pairs`` (the model's state pairs)."""
        self.expire()
        try:
            steps = int(steps if steps is not None else 0)
        except (TypeError, ValueError):
            raise SessionError(400, f"{STEP_HEADER} must be an integer, got {steps!r}") from None
        with self._lock:
            if sid == NEW:
                if steps != 0:
                    raise SessionError(400, f"a new session starts at step 0, not {steps}")
                while len(self._sessions) >= self.max_sessions:
                    idle = [k for k, v in self._sessions.items() if not v.lock.locked()]
                    if not idle:
                        raise SessionError(503, f"all {self.max_sessions} sessions of this replica are running a step")
                    self._drop(idle[0], "max_sessions")
                s = Session(f"{self.owner}.{secrets.token_hex(16)}", artifact_id, server,
                            server.initial_state(pairs, batch=1))
                self._sessions[s.id] = s
            else:
                s = self._sessions.get(sid)
                if s is None:
                    raise SessionError(404, f"unknown session '{sid}': it ended, expired, was evicted, or the "
                                            f"replica holding it restarted; start again from the prompt")
                if s.artifact_id != artifact_id:
                    raise SessionError(400, f"session '{sid}' belongs to model {s.artifact_id}, not {artifact_id}")
                if steps != s.steps:
                    raise SessionError(409, f"session '{sid}' has done {s.steps} steps but the request says "
                                            f"{steps}: a repeated or stale step is refused")
            if not s.lock.acquire(blocking=False):
                raise SessionError(409, f"session '{sid}' is running another step")
            self._sessions.move_to_end(s.id)
            return s

    def release(self, s: Session, new_state: dict | None, end: bool = False) -> None:
        """After a step: store its state (None: the step failed, keep the old one), apply the caps."""
        with self._lock:
            if new_state is not None:
                s.state, s.steps, s.nbytes = new_state, s.steps + 1, state_bytes(new_state)
            s.last_used = time.monotonic()
            s.lock.release()
            if end:
                self._drop(s.id, "end")
                return
            for sid, other in list(self._sessions.items()):
                if self.nbytes <= self.max_bytes:
                    break
                if not other.lock.locked():
                    self._drop(sid, "memory")  # least recently used first, possibly this one
