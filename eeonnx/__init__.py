"""eeonnx: Equivariant Encryption for ONNX models.

Secret transforms are folded into a model's weights so that an untrusted
server runs the unchanged graph on encrypted inputs; a small client-side
encode/decode step holds the key.

The package is split along the trust boundary:

- ``eeonnx.compiler``: layout analysis, keys, passes (holds the secret);
- ``eeonnx.client``: encode/decode, tokenizer, generation, verify (holds the secret);
- ``eeonnx.server``: the ONNX Runtime session the untrusted machine runs, the serving app
  (``eeonnx serve``) and the wire protocol (never sees a secret);
- ``eeonnx.cli``: the command line over all of them.

The public API is re-exported lazily, so ``import eeonnx.server`` on a server
machine loads nothing of the compiler or the client.
"""
__version__ = "0.1.0"

__all__ = ["Client", "RemoteServer", "Server", "check", "compile", "__version__"]

_EXPORTS = {
    "compile": ("eeonnx.compiler.api", "compile"),
    "check": ("eeonnx.compiler.api", "check"),
    "Client": ("eeonnx.client.client", "Client"),
    "Server": ("eeonnx.server.session", "Server"),
    "RemoteServer": ("eeonnx.client.remote", "RemoteServer"),
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eeonnx' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
