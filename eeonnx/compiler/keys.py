"""Keys: a 256-bit master secret and the permutations derived from it.

A permutation of n elements for a class label is a Fisher-Yates shuffle
driven by the SHAKE-256 stream of (domain || secret || label): each swap
index is uniform on [0, i] by rejection sampling of 64-bit words, so the
result is exactly uniform over all n! permutations, the identity included
(a 2-element class is the identity half of the time: it holds 1 bit of
permutation entropy, and nothing treats an identity draw as an error).
Reproducible from the key file, unrelated across labels.

Labels come from keygen and bind the permutation to the model's content
(see ``eeonnx.compiler.digest``), so one key on two models gives unrelated
permutations. The key file records the digests of the models it compiled
(``"models"``); compiling another model with it warns (KeyReuseWarning).

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
PERM_DOMAIN = b"eeonnx-perm/2\0"


class _Words:
    """64-bit little-endian words of a SHAKE-256 stream, read in order (the digest is
    re-read longer when used up: an XOF's longer output extends its shorter one)."""

    def __init__(self, seed: bytes, hint: int):
        self._h = hashlib.shake_256(seed)
        self._count = max(16, hint)
        self._words = np.frombuffer(self._h.digest(8 * self._count), dtype="<u8").tolist()
        self._pos = 0

    def next(self) -> int:
        if self._pos == len(self._words):
            self._count *= 2
            self._words = np.frombuffer(self._h.digest(8 * self._count), dtype="<u8").tolist()
        w = self._words[self._pos]
        self._pos += 1
        return w


def uniform_permutation(seed: bytes, n: int) -> np.ndarray:
    """Fisher-Yates over range(n); swap index j uniform on [0, i] by rejection sampling."""
    words = _Words(seed, n + 8)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        m = i + 1
        limit = (1 << 64) - ((1 << 64) % m)  # largest multiple of m: no modulo bias
        w = words.next()
        while w >= limit:
            w = words.next()
        j = w % m
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


class Key:
    def __init__(self, secret: bytes, models=()):
        if len(secret) != 32:
            raise KeyFileError("a key holds exactly 32 bytes (256 bits) of secret")
        self.secret = secret
        self.models: list[str] = list(models)  # digests of the models compiled with this key

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
        models = data.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise KeyFileError(f"{path}: \"models\" must be a list of model digests")
        return cls(secret, models)

    def to_json(self) -> str:
        data = {"format": KEY_FORMAT, "secret": self.secret.hex()}
        if self.models:
            data["models"] = self.models
        return json.dumps(data, indent=2) + "\n"

    def record_model(self, digest: str) -> bool:
        """Note that this key compiled the model ``digest``; True when the key had
        already compiled other models (and not this one): a reuse worth a warning."""
        if digest in self.models:
            return False
        other = bool(self.models)
        self.models.append(digest)
        return other

    def fingerprint(self) -> str:
        """A public name for the key (does not reveal it)."""
        return hashlib.sha256(b"eeonnx-fingerprint" + self.secret).hexdigest()[:16]

    def permutation(self, label: str, n: int) -> np.ndarray:
        """Uniform over all n! permutations (identity included), fixed by secret and label."""
        return uniform_permutation(PERM_DOMAIN + self.secret + b"\0" + label.encode(), n)

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
