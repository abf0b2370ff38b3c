"""User-facing errors: each carries one line that says what is wrong and what to do.

The CLI catches `DclError` and prints only its message (no traceback) with a non-zero exit code,
so any layer can raise one and trust the user sees a clear line.
"""
from __future__ import annotations


class DclError(Exception):
    """An error caused by the user's input or environment, with a one-line remedy."""

    exit_code = 2


class ConfigError(DclError):
    """A bad configuration key or value."""


class DataMissingError(DclError):
    """A data package is not installed; the message names the command that installs it."""


class CheckpointError(DclError):
    """A checkpoint or run directory is missing or unreadable."""


class ExportError(DclError):
    """An export could not be produced (unsupported layer/op, converter failure)."""


class TrainingNotExpressible(ExportError):
    """A format's training mechanism cannot express this training program at all (e.g. Core ML
    cannot backpropagate through an add). The export records it as not exported, with the reason."""


class ValidationError(ExportError):
    """An exported artifact does not match PyTorch; the export is refused."""


class BundleError(DclError):
    """A bundle or manifest is missing, corrupt, or fails its sha256 check."""


class OutputError(DclError):
    """An output destination that cannot or must not be written (a user's files, an input)."""


class DeviceError(DclError):
    """A device is missing, unauthorized, disconnected, or lacks a runner."""
