"""English text for the frequency attack, found locally when none is given.

Default corpus: Python's own documentation shipped with every CPython
(``pydoc_data.topics``) and the docstrings of the standard library's modules,
in a fixed shuffled order. :func:`split_documents` deals documents alternately to the
*private* stream (what the client encrypts) and the *reference* (public text of
the same kind the attacker is granted), so the two never share a document.
"""
from __future__ import annotations

import ast
import os
import random
import sysconfig


def default_documents(max_chars: int = 3_000_000) -> list[str]:
    docs: list[str] = []
    try:
        from pydoc_data.topics import topics

        docs += [topics[k] for k in sorted(topics)]
    except ImportError:
        pass
    total = sum(map(len, docs))
    stdlib = sysconfig.get_paths().get("stdlib", "")
    names = sorted(f for f in os.listdir(stdlib) if f.endswith(".py")) if os.path.isdir(stdlib) else []
    for f in names:
        if total >= max_chars:
            break
        try:
            with open(os.path.join(stdlib, f), encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = [ast.get_docstring(n) for n in ast.walk(tree)
                 if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        text = "\n\n".join(p for p in parts if p and len(p) > 40)
        if text:
            docs.append(text)
            total += len(text)
    if not docs:
        docs = [_FALLBACK]
    # a fixed shuffle: the stream should not open with one kind of page (the first
    # pydoc topics are grammar notation), and both halves get every kind
    random.Random(0).shuffle(docs)
    return docs


def read_documents(paths) -> list[str]:
    """Every text file given (a directory: its files, sorted, recursively); one
    document per file, or per blank-line-separated block for a single file."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [os.path.join(root, n) for n in sorted(names)]
        else:
            files.append(p)
    docs = []
    for f in files:
        try:
            with open(f, encoding="utf-8", errors="replace") as fh:
                docs.append(fh.read())
        except OSError:
            continue
    if len(docs) == 1:
        blocks = [b for b in docs[0].split("\n\n") if b.strip()]
        # chunks of ~20 blocks, so that both halves get text from all over the file
        docs = ["\n\n".join(blocks[i:i + 20]) for i in range(0, len(blocks), 20)] or docs
    return docs


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """(private, reference): even-numbered documents vs odd-numbered ones."""
    if len(docs) < 2:
        half = len(docs[0]) // 2 if docs else 0
        return ([docs[0][:half]], [docs[0][half:]]) if docs else ([], [])
    return docs[0::2], docs[1::2]


_FALLBACK = """The quick brown fox jumps over the lazy dog. """ * 50
