"""The served server half (``eeonnx serve``: Ray Serve, Open Inference Protocol v2) against the
in-process Server: same outputs over HTTP, same greedy tokens with the KV cache held on the
replica, 8 concurrent sessions kept apart, bad requests answered 4xx without harm to the
service or other sessions, and a replica killed mid-generation giving a clear error (or, with
replay, the same tokens). One local Ray (2 CPUs, 127.0.0.1, a free port) for the whole module,
shut down at the end. Run with ``pytest -m serve``."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import eeonnx
from eeonnx.errors import ArtifactMismatchError, RemoteError, SessionLostError

pytestmark = pytest.mark.serve
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from eeonnx.cli import main as cli_main  # noqa: E402
from eeonnx.client.remote import RemoteServer  # noqa: E402
from eeonnx.server import protocol  # noqa: E402
from eeonnx.server.serve import service  # noqa: E402
from eeonnx.server.serve.app import Options  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "models" / "fixtures"
CPU = ["CPUExecutionProvider"]
MAX_REQUEST = 1 << 20
PROMPT = [5, 17, 42, 99]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    outs = {}
    for name, src in (("cnn", ROOT / "models" / "cnn.onnx"), ("gpt2", FIXTURES / "gpt2_kv.dynamo.onnx"),
                      ("llama", FIXTURES / "llama_kv.ts.onnx")):
        outs[name] = tmp_path_factory.mktemp(name) / "out"
        eeonnx.compile(src, outs[name])
    port = free_port()
    opts = Options(replicas=2, replica_cpus=0.5, max_request_bytes=MAX_REQUEST, session_ttl=300)
    try:
        entries = service.start([outs[n] / "server" for n in outs], port=port, options=opts, num_cpus=2)
        yield {"url": f"http://127.0.0.1:{port}", "outs": outs, "entries": entries}
    finally:
        service.stop()


def pair(svc, name, **kw):
    out = svc["outs"][name]
    client = eeonnx.Client(out)
    return client, eeonnx.Server(out / "server" / "model.onnx", CPU), RemoteServer(svc["url"], client.artifact_id, **kw)


# --------------------------------------------------------------------------- metadata
def test_health_and_metadata(svc):
    client, local, remote = pair(svc, "llama")
    with httpx.Client(base_url=svc["url"]) as h:
        assert h.get("/v2/health/ready").status_code == 200
        assert h.get("/v2/health/live").status_code == 200
        assert h.get(f"/v2/models/{client.artifact_id}/ready").status_code == 200
        assert h.get("/v2/models/0123abcd").status_code == 404
    assert remote.artifact_id == local.artifact_id == client.artifact_id
    assert remote.state_pairs == local.state_pairs and len(remote.state_pairs) == 4
    state = {p["input"] for p in local.state_pairs} | {p["output"] for p in local.state_pairs}
    assert remote.input_names == [n for n in local.input_names if n not in state]
    assert remote.output_names == [n for n in local.output_names if n not in state]


def test_unknown_artifact_and_mismatch_are_refused(svc):
    with pytest.raises(ArtifactMismatchError, match="does not serve"):
        RemoteServer(svc["url"], "f" * 32)
    cnn = eeonnx.Client(svc["outs"]["cnn"])
    other = RemoteServer(svc["url"], eeonnx.Client(svc["outs"]["llama"]).artifact_id)
    with pytest.raises(ArtifactMismatchError):
        cnn.infer(other, {"image": np.zeros((1, 3, 32, 32), np.float32)})


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("binary", [True, False])
def test_outputs_equal_the_in_process_server(svc, binary):
    client, local, remote = pair(svc, "cnn", binary=binary)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    feeds = client.encode({client.input_names[0]: x})
    want, got = local.run(feeds), remote.run(feeds)
    assert list(got) == list(want)
    for n in want:
        assert got[n].dtype == want[n].dtype and got[n].shape == want[n].shape
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6)
    plain = client.decode(want)
    for n, v in client.decode(got).items():
        np.testing.assert_allclose(v, plain[n], rtol=1e-5, atol=1e-6)


def test_cli_run_with_server(svc, tmp_path):
    client, local, _ = pair(svc, "cnn")
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    name = client.input_names[0]
    res = CliRunner().invoke(cli_main, ["run", str(svc["outs"]["cnn"]), "--input", f"{name}={tmp_path / 'x.npy'}",
                                        "--server", svc["url"], "--save", str(tmp_path / "res")])
    assert res.exit_code == 0, res.output
    want = client.infer(local, {name: x})
    for n, v in want.items():
        np.testing.assert_allclose(np.load(tmp_path / "res" / f"{n}.npy"), v, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_generation_gives_identical_tokens(svc, name):
    client, local, remote = pair(svc, name)
    want = list(client.generate(local, PROMPT, max_new_tokens=12))
    assert list(client.generate(remote, PROMPT, max_new_tokens=12)) == want
    if name == "llama":
        assert len(set(want)) > 1


def test_cli_generate_with_server(svc):
    client, local, _ = pair(svc, "llama")
    want = list(client.generate(local, [1, 2, 3], max_new_tokens=5))
    res = CliRunner().invoke(cli_main, ["generate", str(svc["outs"]["llama"]), "--prompt-ids", "1,2,3",
                                        "--max-new-tokens", "5", "--server", svc["url"]])
    assert res.exit_code == 0, res.output
    assert [int(t) for t in res.stdout.split()] == want


def test_eight_concurrent_sessions_stay_separate(svc):
    client, local, remote = pair(svc, "llama")
    prompts = [[i, (7 * i) % 300, (13 * i + 5) % 300] for i in range(1, 9)]
    want = [list(client.generate(local, p, max_new_tokens=8)) for p in prompts]
    assert len({tuple(w) for w in want}) > 1
    start = threading.Barrier(8)

    def run(p):
        start.wait()
        return list(client.generate(remote, p, max_new_tokens=8))

    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(run, prompts))
    assert got == want


# --------------------------------------------------------------------------- bad requests
class Tap:
    """A server that remembers the states its steps returned."""

    def __init__(self, inner):
        self.inner, self.states, self.feeds = inner, [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, feeds, state):
        out, st = self.inner.step(feeds, state)
        self.states.append(st)
        self.feeds.append(feeds)
        return out, st


def _post(h, model, doc=None, body=None, headers=None):
    body = json.dumps(doc).encode() if body is None else body
    return h.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})


def test_bad_requests_get_4xx_and_harm_nothing(svc):
    client, local, remote = pair(svc, "llama", replay=False)
    cnn = eeonnx.Client(svc["outs"]["cnn"]).artifact_id
    want = list(client.generate(local, PROMPT, max_new_tokens=10))
    tap = Tap(remote)
    gen = client.generate(tap, PROMPT, max_new_tokens=10)
    first = [next(gen) for _ in range(4)]  # a session in the middle of its generation
    aid, name = client.artifact_id, remote.input_names[0]
    ok_ids = {"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [3]}
    cnn_in = svc["entries"][cnn].inputs[0]
    big = np.zeros([d if d > 0 else 1 for d in cnn_in["shape"]], np.float32)
    cases = [
        (404, dict(model="nope", doc={"inputs": []})),
        (400, dict(model=aid, body=b"{not json")),
        (400, dict(model=aid, doc={"inputs": [{**ok_ids, "name": "wrong_name"}]})),
        (400, dict(model=aid, doc={"inputs": [{**ok_ids, "datatype": "FP32", "data": [3.0]}] +
                                   [{**ok_ids, "name": n} for n in remote.input_names[1:]]})),
        (400, dict(model=cnn, doc={"inputs": [{"name": cnn_in["name"], "shape": [1, 2], "datatype": "FP32",
                                               "data": [1.0, 2.0]}]})),
        (400, dict(model=cnn, doc={"inputs": [{"name": cnn_in["name"], "shape": list(big.shape),
                                               "datatype": "FP32", "data": big.reshape(-1).tolist()}],
                                   "outputs": [{"name": "not_an_output"}]})),
        (413, dict(model=cnn, body=b"{" + b" " * (MAX_REQUEST + 10) + b"}")),
        (404, dict(model=aid, doc={"inputs": [{**ok_ids, "name": n} for n in remote.input_names]},
                   headers={"eeonnx-session-id": "ffff.0000", "eeonnx-session-step": "1"})),
        (409, dict(model=aid, doc={"inputs": [{**ok_ids, "name": n} for n in remote.input_names]},
                   headers={"eeonnx-session-id": tap.states[-1].session, "eeonnx-session-step": "0"})),
        (400, dict(model=cnn, doc={"inputs": [{"name": cnn_in["name"], "shape": list(big.shape),
                                               "datatype": "FP32", "data": big.reshape(-1).tolist()}]},
                   headers={"eeonnx-session-id": "new"})),
    ]
    with httpx.Client(base_url=svc["url"], timeout=60) as h:
        for status, kw in cases:
            r = _post(h, **kw)
            assert r.status_code == status, (kw.get("doc"), r.text)
            assert r.json()["error"]
        assert h.get("/v2/health/ready").status_code == 200
    # a stale state handle is refused, never run on the advanced cache
    stale = tap.states[1]
    with pytest.raises(RemoteError, match="409"):
        remote.step(tap.feeds[-1], stale)
    assert first + list(gen) == want  # the session in progress went on untouched
    assert list(client.generate(remote, PROMPT, max_new_tokens=10)) == want


def test_ended_session_is_gone(svc):
    client, _, remote = pair(svc, "llama", replay=False)
    tap = Tap(remote)
    gen = client.generate(tap, PROMPT, max_new_tokens=5)
    next(gen)
    remote.end(tap.states[-1])
    with pytest.raises(SessionLostError, match="unknown session"):
        next(gen)


# --------------------------------------------------------------------------- a replica dies
def _replica_actor(unique_id: str):
    for a in ray.util.list_named_actors(all_namespaces=True):
        if unique_id in a["name"] and "ModelHost" in a["name"]:
            return ray.get_actor(a["name"], namespace=a["namespace"])
    raise AssertionError(f"no replica actor for {unique_id}")


def test_killed_replica_gives_a_clear_error_and_replay_recovers(svc):
    client, local, _ = pair(svc, "llama")
    want = list(client.generate(local, PROMPT, max_new_tokens=10))
    runs = []  # (tap, generator, tokens so far) on sessions spread over both replicas
    owner = lambda tap: tap.states[-1].session.split(".")[0]  # noqa: E731
    victim = None
    for _ in range(16):
        for replay in (False, True):
            tap = Tap(RemoteServer(svc["url"], client.artifact_id, replay=replay))
            gen = client.generate(tap, PROMPT, max_new_tokens=10)
            runs.append((tap, gen, [next(gen) for _ in range(3)]))
        kinds = {}
        for tap, _, _ in runs:
            kinds.setdefault(owner(tap), set()).add(tap.inner.replay)
        both = [o for o, k in kinds.items() if k == {False, True}]
        if both and len(kinds) == 2:
            victim = both[0]
            break
    assert victim, "new sessions never spread over both replicas"
    ray.kill(_replica_actor(victim), no_restart=True)
    time.sleep(1)
    lost = recovered = survived = 0
    for tap, gen, tokens in runs:
        on_victim = owner(tap) == victim
        if on_victim and not tap.inner.replay:
            with pytest.raises(SessionLostError):
                next(gen)
            lost += 1
            continue
        assert tokens + list(gen) == want  # never a wrong token: replayed or untouched
        if on_victim:
            recovered += 1
        else:
            survived += 1
    assert lost and recovered and survived
    assert list(client.generate(RemoteServer(svc["url"], client.artifact_id), PROMPT, max_new_tokens=10)) == want


def test_refuses_to_serve_an_artifact_with_client_files(svc):
    from eeonnx.server.serve.catalog import CatalogError

    with pytest.raises(CatalogError, match="refusing to serve"):
        service.start([svc["outs"]["cnn"]])
    res = CliRunner().invoke(cli_main, ["serve", str(svc["outs"]["cnn"]), "--port", str(free_port())])
    assert res.exit_code == 2 and "refusing to serve" in res.output


def test_protocol_error_bodies_are_json(svc):
    with httpx.Client(base_url=svc["url"]) as h:
        body, headers = protocol.encode_request({"x": np.zeros(3, np.float32)})
        r = h.post("/v2/models/nope/infer", content=body, headers=headers)
        assert r.status_code == 404 and "unknown model" in r.json()["error"]


def test_tritons_own_http_client_can_infer(svc):
    try:
        import tritonclient.http as http
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"tritonclient[http] not installed: {e}")
    client, local, _ = pair(svc, "cnn")
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    feeds = client.encode({client.input_names[0]: x})
    (name, value), = feeds.items()
    tc = http.InferenceServerClient(svc["url"].removeprefix("http://"))
    try:
        assert tc.is_server_ready() and tc.is_model_ready(client.artifact_id)
        inp = http.InferInput(name, list(value.shape), "FP32")
        inp.set_data_from_numpy(value, binary_data=True)
        res = tc.infer(client.artifact_id, [inp])
        want = local.run(feeds)
        for n, v in want.items():
            np.testing.assert_allclose(res.as_numpy(n), v, rtol=1e-5, atol=1e-6)
    finally:
        tc.close()
