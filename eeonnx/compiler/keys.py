"""Keys: a 256-bit master secret and the permutations derived from it.

A permutation of n elements for a class label is ``argsort`` of n 64-bit
words of SHAKE-256(secret || label): uniform over all n! permutations up to
negligible ties, reproducible from the key file, unrelated across labels.
The identity is never returned for n > 1 (a re-derivation with a counter
follows), so no secret axis ever travels in the clear by bad luck.

Continuous draws (for classes whose group is larger than the permutations,
see ``eeonnx.compiler.groups``) read their own XOF stream, domain-separated
from the permutation's by a purpose tag, for the same class label:
``scales`` (log-uniform in a bounded range, so fp32 keeps its precision) and
``orthogonal`` (QR of a Gaussian matrix with the sign fix: Haar-distributed).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets

import numpy as np

from eeonnx.errors import KeyFileError

KEY_FORMAT = "eeonnx-key/1"


class Key:
    def __init__(self, secret: bytes):
        if len(secret) != 32:
            raise KeyFileError("a key holds exactly 32 bytes (256 bits) of secret")
        self.secret = secret

    @classmethod
    def generate(cls) -> "Key":
        return cls(secrets.token_bytes(32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Key":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise KeyFileError(f"{path}: no such key file") from None
        except (OSError, ValueError) as e:
            raise KeyFileError(f"{path}: not a JSON key file ({e})") from None
        if not isinstance(data, dict) or data.get("format") != KEY_FORMAT:
            raise KeyFileError(f"{path}: not an eeonnx key (expected \"format\": \"{KEY_FORMAT}\")")
        try:
            secret = bytes.fromhex(data["secret"])
        except (KeyError, TypeError, ValueError):
            raise KeyFileError(f"{path}: \"secret\" must be 64 hex digits") from None
        return cls(secret)

    def to_json(self) -> str:
        return json.dumps({"format": KEY_FORMAT, "secret": self.secret.hex()}, indent=2) + "\n"

    def fingerprint(self) -> str:
        """A public name for the key (does not reveal it)."""
        return hashlib.sha256(b"eeonnx-fingerprint" + self.secret).hexdigest()[:16]

    def permutation(self, label: str, n: int) -> np.ndarray:
        for attempt in range(64):
            h = hashlib.shake_256(self.secret + b"\0" + label.encode() + b"\0" + str(attempt).encode())
            words = np.frombuffer(h.digest(8 * n), dtype="<u8")
            perm = np.argsort(words, kind="stable").astype(np.int64)
            if n <= 1 or not np.array_equal(perm, np.arange(n)):
                return perm
        raise AssertionError("unreachable: 64 identity permutations in a row")

    def _uniform(self, label: str, purpose: str, count: int) -> np.ndarray:
        """``count`` floats uniform in (0, 1), 53 bits each, from SHAKE-256(secret, label, purpose)."""
        h = hashlib.shake_256(self.secret + b"\0" + label.encode() + b"\0" + purpose.encode())
        words = np.frombuffer(h.digest(8 * count), dtype="<u8")
        return ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53

    def scales(self, label: str, n: int, lo: float = 0.25, hi: float = 4.0) -> np.ndarray:
        """n positive scales, log-uniform in [lo, hi] (float64)."""
        u = self._uniform(label, f"scales:{lo!r}:{hi!r}", n)
        return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))

    def orthogonal(self, label: str, n: int) -> np.ndarray:
        """A Haar-random n x n orthogonal matrix (float64): QR of a Gaussian
        (Box-Muller from the XOF), columns' signs fixed by R's diagonal."""
        u = self._uniform(label, "orthogonal", 2 * n * n).reshape(2, n * n)
        g = (np.sqrt(-2.0 * np.log(u[0])) * np.cos(2.0 * np.pi * u[1])).reshape(n, n)
        q, r = np.linalg.qr(g)
        return q * np.where(np.diag(r) < 0, -1.0, 1.0)[None, :]


def write_key(key: Key, path: str) -> None:
    """Write the key file readable by its owner only (0600 from creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key.to_json())
    os.chmod(path, 0o600)
