"""Domain errors raised by quantcore.

Each error has a stable ``code`` (the API maps codes to HTTP statuses in one table) and a message a
person can act on. ``details`` carries structured context (offending keys, allowed ranges, ...).
"""

from __future__ import annotations

from typing import Any


class QuantcoreError(Exception):
    """Base class of every error quantcore raises on purpose."""

    code = "quantcore_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidModel(QuantcoreError):
    """The weights do not fit the architecture (missing, unexpected or mis-shaped keys)."""

    code = "invalid_model"


class UnsafeModelFile(QuantcoreError):
    """The file would run code when loaded, or is not a format we read safely."""

    code = "unsafe_model_file"


class InvalidDataset(QuantcoreError):
    """A dataset is missing, malformed, or does not match what the job needs."""

    code = "invalid_dataset"


class InvalidParams(QuantcoreError):
    """Method or job parameters are out of range or inconsistent with the model."""

    code = "invalid_params"


class InvalidArtifact(QuantcoreError):
    """A .qpack file is corrupt, truncated, or of an unknown format version."""

    code = "invalid_artifact"


class UnknownName(QuantcoreError):
    """An architecture, dataset or method name that is not registered."""

    code = "unknown_name"


class NothingQuantized(QuantcoreError):
    """Model surgery found no layer to quantize."""

    code = "nothing_quantized"


class Cancelled(QuantcoreError):
    """The run was cancelled through its context."""

    code = "cancelled"
