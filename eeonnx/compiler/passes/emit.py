"""emit: write the artifact directory atomically.

Everything is written into a temporary sibling directory first; only when
every file is complete is it renamed to OUT (an existing OUT, allowed by
--force, is swapped out and deleted afterwards). An error or interruption
at any point leaves OUT as it was and no temporary directory behind.

Layout: OUT/server/model.onnx (+ model.onnx.data for large models),
OUT/client/{encode.onnx, decode.onnx, key.json (0600), manifest.json}.

The server model's only metadata (``metadata_props``) is what server-side
code needs, and nothing that names the original: ``eeonnx.artifact_id`` (the
compile's random id, also in the manifest, checked by the client) and
``eeonnx.state`` (JSON list of the state pairs in the server's names); no
producer, version, domain or doc string.

Unless ``comp.keep_names`` (``--keep-names``, a debugging aid), the written
server model is then renamed by :mod:`eeonnx.compiler.passes.anonymize`
(opaque names for every value, initializer and node); the map goes into
``comp.server_names`` and from there into the manifest and the re-key
record, which are written after it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager

import onnx
import onnx_ir as ir

from eeonnx.errors import OutputExistsError
from eeonnx.compiler.keys import write_key
from eeonnx.compiler.passes import anonymize
from eeonnx.compiler.progress import Progress

EXTERNAL_DATA_THRESHOLD = 1 << 30  # weights above 1 GiB go to model.onnx.data


def check_target(out: str, force: bool) -> None:
    """Refuse to touch a non-empty OUT without --force (before any work is done)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputExistsError(f"{out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it")


@contextmanager
def _signals_as_exceptions():
    """SIGTERM unwinds like Ctrl-C, so cleanup handlers run."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


ARTIFACT_ID_PROP = "eeonnx.artifact_id"
STATE_PROP = "eeonnx.state"


SERVER_GRAPH_NAME = "server"  # the original graph's name often names the model


def _proto_graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph under it (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _proto_graphs(g)


def server_metadata(comp) -> dict[str, str]:
    return {ARTIFACT_ID_PROP: comp.artifact_id, STATE_PROP: json.dumps(comp.server_state())}


def stamp_proto(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model-level metadata of a ModelProto by ``props`` (producer, graph name and
    every doc string, nodes' included, dropped: exporters put source paths and stack traces there)."""
    for f in ("producer_name", "producer_version", "domain", "doc_string", "model_version"):
        model.ClearField(f)
    model.graph.name = SERVER_GRAPH_NAME
    for graph in _proto_graphs(model.graph):
        graph.ClearField("doc_string")
        for node in graph.node:
            node.ClearField("doc_string")
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def stamp_ir(model: ir.Model, props: dict[str, str]) -> None:
    """The same for an onnx_ir Model."""
    model.producer_name = model.producer_version = model.domain = model.doc_string = None
    model.model_version = None
    model.graph.name = SERVER_GRAPH_NAME
    for graph in (model.graph, *model.graph.subgraphs()):
        graph.doc_string = None
        for node in graph:
            node.doc_string = None
    model.metadata_props.clear()
    model.metadata_props.update(props)


def move_into_place(done: str, out: str) -> None:
    """Rename the finished directory ``done`` to ``out`` (a sibling). An existing ``out`` is
    swapped out first and deleted afterwards, so ``out`` is always either the old or the
    new artifact, never a mix."""
    if os.path.exists(out):
        parent = os.path.dirname(os.path.abspath(out)) or "."
        old = tempfile.mkdtemp(prefix=".eeonnx-old-", dir=parent)
        os.rename(out, os.path.join(old, "out"))
        os.rename(done, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(done, out)


def emit(comp, out: str, force: bool, progress: bool = False) -> None:
    check_target(out, force)
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".eeonnx-", dir=parent)
    try:
        with _signals_as_exceptions():
            _write(comp, tmp, progress)
            move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_client_graph(proto: onnx.ModelProto, path: str) -> None:
    """Write a client graph self-contained: its weights inline, or, above
    EXTERNAL_DATA_THRESHOLD, in its own data file next to it (``encode.onnx.data``).
    The proto must hold all its data (see boundary.serialize_self_contained)."""
    weights = sum(len(t.raw_data) for t in proto.graph.initializer)
    if weights > EXTERNAL_DATA_THRESHOLD:
        onnx.save(proto, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
    else:
        onnx.save(proto, path)


def _write(comp, root: str, progress: bool = False) -> None:
    server_dir, client_dir = os.path.join(root, "server"), os.path.join(root, "client")
    os.makedirs(server_dir)
    os.makedirs(client_dir)
    os.chmod(client_dir, 0o700)
    server_path = os.path.join(server_dir, "model.onnx")
    external = comp.weight_bytes > EXTERNAL_DATA_THRESHOLD or comp.had_external_data
    props = server_metadata(comp)
    if comp.server_proto is not None:  # client split: the server is a subgraph
        stamp_proto(comp.server_proto, props)
        onnx.save(comp.server_proto, server_path, save_as_external_data=external,
                  location="model.onnx.data")
    else:
        server = comp.server_model if comp.server_model is not None else comp.model  # restructure.py
        stamp_ir(server, props)
        bar = Progress(comp.weight_bytes) if progress and external else None
        ir.save(server, server_path, external_data="model.onnx.data" if external else None,
                callback=bar.tensor_written if bar else None)
        if bar:
            bar.close()
    if not getattr(comp, "keep_names", False):
        _anonymize(comp, server_path)
    save_client_graph(comp.encode_model, os.path.join(client_dir, "encode.onnx"))
    save_client_graph(comp.decode_model, os.path.join(client_dir, "decode.onnx"))
    write_key(comp.key, os.path.join(client_dir, "key.json"))
    if comp.tokenizer is not None:
        with open(os.path.join(client_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(comp.tokenizer, f, ensure_ascii=False)
    from eeonnx.compiler import rekey

    rekey.write_record(comp, client_dir)  # client/rekey.json: what `eeonnx rekey` needs
    manifest = comp.manifest(server_path)
    with open(os.path.join(client_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    make_private(client_dir)


def _anonymize(comp, server_path: str) -> None:
    """Opaque names in the written server model (weights untouched, see anonymize); the
    metadata is stamped again, now with the state pairs in the new names."""
    model = onnx.load(server_path, load_external_data=False)
    comp.server_names = anonymize.rename(model)
    stamp_proto(model, server_metadata(comp))
    anonymize.rewrite(model, server_path)


def make_private(client_dir: str) -> None:
    """Every file under client/ 0600, every directory 0700: all of it is key material
    (index arrays in encode/decode, the encrypted vocabulary, layouts, the key). Runs
    before OUT appears (the temporary directory is renamed last), inside a 0700 dir."""
    os.chmod(client_dir, 0o700)
    for base, dirs, files in os.walk(client_dir):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o700)
        for f in files:
            os.chmod(os.path.join(base, f), 0o600)
