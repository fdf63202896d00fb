"""Ray Serve request router: a session's steps go to the replica that holds its KV cache.

Why this and not Ray's other options (documented choice):
- Ray Serve's model multiplexing routes by model id on a best-effort basis
  (it falls back to other replicas when the preferred ones are busy), which is
  right for loading models but not for state that exists on one replica only;
- consistent hashing over session ids remaps some sessions of *healthy*
  replicas whenever a replica is added or replaced (and is experimental);
- an actor per session would load the model once per session.
So the replica that creates a session puts its own replica id in the session
id (``<replica unique id>.<random>``, see sessions.py), and this router sends
every request carrying that session id (``handle.options(session_id=...)``)
to exactly that replica, waiting (Ray's backoff) while it is busy. When that
replica is gone, the request goes to any replica, which answers "unknown
session": a clear error, never a step on the wrong cache. Requests without a
session use multiplex routing (prefer replicas that have the model loaded)
and power-of-two choices among those.

Requests are matched to replicas by request id (no FIFO mixin), so a replica
chosen for one session's step is never handed to another request.
"""
from __future__ import annotations

import random

from ray.serve.request_router import MultiplexMixin, RequestRouter

from eeonnx.server.serve.sessions import NEW


def owner_of(session_id: str) -> str:
    """The replica unique id a session id names (empty when it names none)."""
    return session_id.partition(".")[0] if "." in session_id else ""


class SessionRouter(MultiplexMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas, pending_request=None):
        session = pending_request.metadata.session_id if pending_request is not None else ""
        if session == NEW:
            return [random.sample(list(candidate_replicas), min(2, len(candidate_replicas)))]
        if session:
            owner = owner_of(session)
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == owner]
            # the owner is gone: any replica answers "unknown session"
            return [pinned or list(candidate_replicas)]
        ids = self.apply_multiplex_routing(pending_request=pending_request)
        replicas = [r for r in candidate_replicas if r.replica_id in ids] or list(candidate_replicas)
        return [random.sample(replicas, min(2, len(replicas)))]
