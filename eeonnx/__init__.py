"""eeonnx: Equivariant Encryption for ONNX models.

Secret permutations are folded into a model's weights so that an untrusted
server runs the unchanged graph on encrypted inputs; a small client-side
encode/decode step holds the key.
"""
__version__ = "0.1.0"

from eeonnx.client.client import Client, Server, check, compile  # noqa: E402

__all__ = ["Client", "Server", "check", "compile", "__version__"]
