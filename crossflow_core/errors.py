"""User-facing errors.

A `CrossflowError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits with `exit_code` (2 for bad input, 1 for a missing resource).
"""

from __future__ import annotations


class CrossflowError(Exception):
    """An error caused by the user's input or environment, reported as one clear line."""

    exit_code: int = 2


class MissingResourceError(CrossflowError):
    """A needed file, weights or package is absent (e.g. Inception weights offline)."""

    exit_code = 1


class OutputExistsError(CrossflowError):
    """The output folder already holds something that only an explicit overwrite may replace."""
