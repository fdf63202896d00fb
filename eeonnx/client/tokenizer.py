"""The client's encrypted tokenizer seen through plain ids (needs ``tokenizers``)."""
from __future__ import annotations

import os

import numpy as np

from eeonnx.compiler.tokenizer import TokenizerMapError


class PlainView:
    """The client's encrypted tokenizer seen through plain ids.

    ``encode(text)`` gives plain ids (what ``Client.encode`` expects) and
    ``decode(plain_ids)`` gives text, by composing the encrypted tokenizer with
    the id map. Needs the optional ``tokenizers`` package.
    """

    def __init__(self, path: str, id_map: np.ndarray):
        try:
            import tokenizers
        except ImportError:
            raise TokenizerMapError("text prompts need the optional 'tokenizers' package: "
                                    "pip install 'eeonnx[tokenizer]'") from None
        if not os.path.exists(path):
            raise TokenizerMapError(f"{path} not found: compile with --tokenizer tokenizer.json to get a client tokenizer")
        self._tok = tokenizers.Tokenizer.from_file(path)
        self._to_enc = np.asarray(id_map)
        self._to_plain = np.argsort(self._to_enc)

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._to_plain[self._tok.encode(text).ids]]

    def decode(self, plain_ids) -> str:
        return self._tok.decode([int(i) for i in self._to_enc[np.asarray(plain_ids, dtype=np.int64)]])
