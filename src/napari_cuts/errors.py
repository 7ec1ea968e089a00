"""Errors the user can act on.

Every failure that a user can cause (bad input, a corrupt file, weights for another
image type, a full disk, a cancel) is raised as a :class:`CutsError` subclass whose
message names the problem and what to do. The CLI prints such messages on one line
and exits non-zero; the widget shows them as notifications. Anything else is a bug.
"""

from __future__ import annotations


class CutsError(Exception):
    """Base class of the errors meant for the user (one clear sentence or two)."""


class InputError(CutsError, ValueError):
    """An image, array or parameter that the method cannot work on."""


class ReadError(CutsError, OSError):
    """A file that cannot be read (missing, corrupt, unsupported)."""


class WriteError(CutsError, OSError):
    """An output that cannot be written (read-only folder, full disk)."""


class WeightsError(CutsError, ValueError):
    """Encoder weights that are corrupt or do not fit the image."""


class ResourceError(CutsError, MemoryError):
    """Work that would not fit this machine's memory."""


class Cancelled(CutsError):
    """The user asked the work to stop; nothing was left half-done."""

    def __init__(self, message: str = "Cancelled by the user.") -> None:
        super().__init__(message)
