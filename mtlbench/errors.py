"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad flag, an unknown
name, a broken data directory).  The CLI prints its message and exits with
code 2, without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations


class UserError(Exception):
    """An error caused by user input: ``message`` says what and where, ``hint`` how to fix it.

    ``str(exc)`` shows both (the hint on a line of its own, as the CLI prints it);
    code that needs one of them reads the attribute, never the text.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self):  # keep the hint across processes (pickling passes only ``args``)
        return (_rebuild, (type(self), self.message, self.hint, self.__dict__))


def _rebuild(cls, message, hint, state):
    exc = cls.__new__(cls)
    UserError.__init__(exc, message, hint=hint)
    exc.__dict__.update(state)
    return exc
