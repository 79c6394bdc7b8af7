"""The library's one exception family.

Every error the library raises on bad input is a :class:`SelrelError`, a
``ValueError`` subclass, so callers can catch one type; the CLI turns it into a
one-line message and a non-zero exit.
"""

from __future__ import annotations


class SelrelError(ValueError):
    """Base class of every error selrel_jax raises on bad input or state."""


class ShapeError(SelrelError):
    """An array has the wrong rank or size for the operation."""


class DTypeError(SelrelError):
    """An array has a dtype the operation does not accept."""


class OptionError(SelrelError):
    """An option (keyword argument, method name, rule parameter) is unknown or out of range."""


class NonFiniteError(SelrelError):
    """An array holds NaN or infinite values."""


class CheckpointError(SelrelError):
    """A checkpoint or weight file is missing, corrupt, incomplete or inconsistent."""


class DataError(SelrelError):
    """A data file or dataset cannot be found, opened or decoded."""


class DataWarning(UserWarning):
    """A dataset request that was adjusted to what the data holds (a ``limit`` beyond
    a split's end, capped); the CLI prints it as one ``selrel: warning:`` line."""
