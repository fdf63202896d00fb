"""Errors eeonnx raises on purpose.

Every EEError is a user-facing, one-line explanation of what is wrong and what
to do; the CLI prints it without a traceback and exits with ``exit_code``.
"""
from __future__ import annotations


class EEError(Exception):
    """Base of all deliberate eeonnx errors (CLI exit code 2)."""

    exit_code = 2


class ModelLoadError(EEError):
    """The model file cannot be read or is not a valid ONNX model."""


class UnsupportedOpError(EEError):
    """A node whose op has no rule in the registry."""

    def __init__(self, node_name: str, op_type: str, domain: str, reason: str):
        self.node_name, self.op_type, self.domain, self.reason = node_name, op_type, domain, reason
        super().__init__(
            f"node '{node_name}': op {domain or 'ai.onnx'}::{op_type} is not supported: {reason}"
        )


class StrictPinError(EEError):
    """--strict was given and the analysis had to pin an axis to the identity."""


class ClearBoundaryError(EEError):
    """An input or output would travel to/from the server with no secret axis."""


class KeyFileError(EEError):
    """A --key file is missing, malformed, or of the wrong version."""


class OutputExistsError(EEError):
    """The output directory exists and is not empty, and --force was not given."""


class ShapeError(EEError):
    """A shape the analysis needs could not be resolved."""


class ArtifactMismatchError(EEError):
    """A client and a server model that do not belong to the same compile (artifact ids differ)."""


class VerifyError(EEError):
    """Decoded outputs differ from the original's (CLI exit code 1)."""

    exit_code = 1


class InputError(EEError):
    """An input tensor whose name, shape or dtype the model does not take."""


class ArtifactDirError(EEError):
    """A path that is not an artifact directory, or an artifact that does not belong to the model given."""


class NotALanguageModelError(EEError):
    """generate was asked of a model without a token-id input and a logits output."""


class ProviderError(EEError):
    """An execution provider was asked for explicitly and cannot be used here."""


class EEWarning(UserWarning):
    """Something accepted but worth a line on stderr (the CLI prints ``warning: ...``)."""


class RemoteError(EEError):
    """A remote server refused a request or could not be reached (its message says why)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class SessionLostError(RemoteError):
    """The server no longer holds a generation session (ended, expired, evicted, replica died)."""


class KeyReuseWarning(EEWarning):
    """A --key that compiled other models before is used on a new one (a warning, not an error)."""
