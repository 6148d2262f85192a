"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad flag, an unknown
name, a broken data directory).  The CLI prints its message and exits with
code 2, without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; the message says what, where and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")
