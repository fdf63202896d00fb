"""The trust boundary in the tree: the server half cannot reach the secret.

The import graph is read from the code (every ``import`` statement, including
those inside functions), not from a hand-written list. A module *holds the
secret* when it lives under ``eeonnx/compiler``, ``eeonnx/client`` or
``eeonnx/audit``, or when its source names a client file or key material.
Nothing reachable from ``eeonnx/server`` may hold the secret.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "eeonnx"
SECRET_PACKAGES = ("eeonnx.compiler", "eeonnx.client", "eeonnx.audit")
CLIENT_FILES = ("key.json", "encode.onnx", "decode.onnx", "manifest.json", "tokenizer.json", "Key.load")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """eeonnx modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            # importing a.b.c runs a, a.b and a.b.c
            parts = t.split(".")
            out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in known)
    return out


def reachable(start: set[str]) -> set[str]:
    mods = modules()
    known = set(mods)
    graph = {n: imports_of(n, p, known) for n, p in mods.items()}
    seen, todo = set(), list(start)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(graph[n])
    return seen


def holds_secret(name: str) -> bool:
    if name.startswith(SECRET_PACKAGES):
        return True
    source = modules()[name].read_text(encoding="utf-8")
    return any(f in source for f in CLIENT_FILES)


def test_server_half_reaches_no_secret():
    server = {n for n in modules() if n.startswith("eeonnx.server")}
    assert server, "eeonnx/server/ has no modules"
    bad = sorted(n for n in reachable(server) if holds_secret(n))
    assert not bad, f"the server half can import modules that hold the secret: {bad}"


def test_the_checker_sees_secret_holders():
    """The walk is not vacuous: the client reaches the compiler's keys."""
    assert "eeonnx.compiler.keys" in reachable({"eeonnx.cli"})
    assert holds_secret("eeonnx.compiler.keys") and holds_secret("eeonnx.client.client")


def test_relative_and_function_level_imports_are_seen(tmp_path):
    src = "def f():\n    from eeonnx.compiler import keys\n"
    p = tmp_path / "m.py"
    p.write_text(src)
    assert "eeonnx.compiler.keys" in imports_of("eeonnx.server.m", p, {"eeonnx.compiler", "eeonnx.compiler.keys"})


@pytest.mark.parametrize("module", ["eeonnx.server", "eeonnx.server.session"])
def test_server_import_loads_no_compiler(module):
    code = (f"import sys, {module}, eeonnx; "
            "bad = sorted(m for m in sys.modules if m.startswith(('eeonnx.compiler', 'eeonnx.client', "
            "'eeonnx.audit', 'onnx_ir', 'onnxscript'))); print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_public_api_is_reexported():
    import eeonnx
    from eeonnx.client.client import Client
    from eeonnx.compiler.api import check, compile
    from eeonnx.server.session import Server

    assert (eeonnx.Client, eeonnx.Server, eeonnx.compile, eeonnx.check) == (Client, Server, compile, check)
