"""The serving pieces that need no Ray: the catalog (what may be served, by artifact id; client
files refused) and the session table (KV state per session: step counts, TTL, LRU caps, memory
cap, one step at a time, failed steps keep the state)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import eeonnx
from eeonnx.server.serve import catalog
from eeonnx.server.serve.catalog import CatalogError
from eeonnx.server.serve.sessions import NEW, SessionError, SessionTable, state_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "out"
    eeonnx.compile(ROOT / "models" / "cnn.onnx", out)
    return out


# --------------------------------------------------------------------------- catalog
def test_catalog_reads_the_id_from_the_server_model(artifact, tmp_path):
    manifest = json.loads((artifact / "client" / "manifest.json").read_text())
    entries = catalog.scan([artifact / "server"])
    assert list(entries) == [manifest["artifact_id"]]
    e = entries[manifest["artifact_id"]]
    assert [i["name"] for i in e.inputs] == manifest["server_inputs"]
    assert [o["name"] for o in e.outputs] == manifest["server_outputs"]
    assert e.state == [] and e.metadata()["name"] == manifest["artifact_id"]
    # a directory of server directories, and a model file, work too
    shutil.copytree(artifact / "server", tmp_path / "models" / "a")
    assert list(catalog.scan([tmp_path / "models"])) == [manifest["artifact_id"]]
    assert list(catalog.scan([tmp_path / "models" / "a" / "model.onnx"])) == [manifest["artifact_id"]]


@pytest.mark.parametrize("bad", ["client", "key.json", "nested/manifest.json"])
def test_catalog_refuses_directories_with_client_files(artifact, tmp_path, bad):
    root = tmp_path / "srv"
    shutil.copytree(artifact / "server", root)
    target = root / bad
    target.parent.mkdir(parents=True, exist_ok=True)
    if bad == "client":
        target.mkdir()
    else:
        target.write_text("{}")
    with pytest.raises(CatalogError, match="refusing to serve"):
        catalog.scan([root])
    with pytest.raises(CatalogError, match="refusing to serve"):
        catalog.scan([artifact])  # the whole artifact holds client/


def test_catalog_refuses_models_without_an_id_and_duplicates(artifact, tmp_path):
    m = onnx.load(artifact / "server" / "model.onnx")
    del m.metadata_props[:]
    (tmp_path / "plain").mkdir()
    onnx.save(m, tmp_path / "plain" / "model.onnx")
    with pytest.raises(CatalogError, match="no eeonnx.artifact_id"):
        catalog.scan([tmp_path / "plain"])
    shutil.copytree(artifact / "server", tmp_path / "copy")
    with pytest.raises(CatalogError, match="also the id of"):
        catalog.scan([artifact / "server", tmp_path / "copy"])
    with pytest.raises(CatalogError, match="no such file"):
        catalog.scan([tmp_path / "nothing"])


# --------------------------------------------------------------------------- sessions
PAIRS = [{"input": "past", "output": "present", "axis": 1, "shape": [1, "t", 4]}]


class FakeServer:
    def initial_state(self, pairs, batch=1):
        return {p["input"]: np.zeros((1, 0, 4), np.float32) for p in pairs}


def grown(state, n=1):
    return {k: np.concatenate([v, np.ones((1, n, 4), np.float32)], axis=1) for k, v in state.items()}


def step(table, sid, steps, aid="m", n=1):
    s = table.begin(sid, aid, steps, FakeServer(), PAIRS)
    table.release(s, grown(s.state, n))
    return s


def test_session_steps_are_counted_and_checked():
    t = SessionTable("r1")
    s = step(t, NEW, 0)
    assert s.id.startswith("r1.") and s.steps == 1 and s.state["past"].shape == (1, 1, 4)
    step(t, s.id, 1)
    assert s.steps == 2 and s.state["past"].shape == (1, 2, 4) and s.nbytes == state_bytes(s.state) == 32
    with pytest.raises(SessionError) as e:
        t.begin(s.id, "m", 1, FakeServer(), PAIRS)  # a repeated step
    assert e.value.status == 409
    with pytest.raises(SessionError) as e:
        t.begin(s.id, "other", 2, FakeServer(), PAIRS)
    assert e.value.status == 400
    with pytest.raises(SessionError) as e:
        t.begin("r1.nope", "m", 0, FakeServer(), PAIRS)
    assert e.value.status == 404
    with pytest.raises(SessionError) as e:
        t.begin(s.id, "m", "x", FakeServer(), PAIRS)
    assert e.value.status == 400


def test_one_step_at_a_time_and_failed_steps_keep_the_state():
    t = SessionTable("r")
    s = step(t, NEW, 0)
    held = t.begin(s.id, "m", 1, FakeServer(), PAIRS)
    with pytest.raises(SessionError) as e:
        t.begin(s.id, "m", 1, FakeServer(), PAIRS)
    assert e.value.status == 409
    t.release(held, None)  # the step failed
    assert s.steps == 1 and s.state["past"].shape == (1, 1, 4)
    step(t, s.id, 1)
    assert s.steps == 2


def test_ttl_max_sessions_memory_and_end_evict():
    t = SessionTable("r", max_sessions=2, ttl_s=100.0, max_bytes=10_000)
    a, b = step(t, NEW, 0), step(t, NEW, 0)
    step(t, a.id, 1)  # b is now the least recently used
    c = step(t, NEW, 0)
    assert t.evicted["max_sessions"] == 1
    with pytest.raises(SessionError):
        t.begin(b.id, "m", 1, FakeServer(), PAIRS)
    t.expire(now=a.last_used + 1000)
    assert len(t) == 0 and t.evicted["ttl"] == 2
    big = step(t, NEW, 0, n=100)  # 1600 bytes
    step(t, NEW, 0, n=600)  # 9600 bytes: over the cap with big, which goes first
    assert t.evicted["memory"] == 1 and big.id not in [s for s in t._sessions]
    d = step(t, NEW, 0)
    assert t.end(d.id) and not t.end(d.id) and t.evicted["end"] == 1
    del c
