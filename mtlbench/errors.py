"""User-facing errors.

A :class:`UserError` is something the user can fix (a bad flag, an unknown
name, a broken data directory).  The CLI prints its message and exits with
code 2, without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

#: the most characters of an error's message (and, apart, of its hint) that are kept: past it the
#: text is cut with "... (N more characters)", so no input makes an error message unbounded
MESSAGE_LIMIT = 10_000
#: the most characters of one value quoted in a message (:func:`quote`)
VALUE_LIMIT = 500


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text``, cut after ``limit`` characters with ``... (N more characters)``."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class _Full(Exception):
    """The text of :func:`bounded_text` reached its limit."""


class _Writer:
    def __init__(self, limit: int):
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def __call__(self, piece: str) -> None:
        self.parts.append(piece)
        self.size += len(piece)
        if self.size > self.limit:
            raise _Full


def bounded_text(value: Any, walk: Callable[[Any, Callable[[str], None]], None],
                 limit: int = VALUE_LIMIT) -> str:
    """The text ``walk(value, put)`` writes piece by piece (``put(str)``), stopped once it passes
    ``limit`` characters: a value built of shared parts (YAML aliases) may be exponentially
    larger than its source, so it is never written out in full."""
    put = _Writer(limit)
    try:
        walk(value, put)
    except _Full:
        text = "".join(put.parts)
        return f"{text[:limit]}... (truncated; more than {limit} characters)"
    except RecursionError:
        return "".join(put.parts)[:limit] + "... (truncated; nested too deeply)"
    return "".join(put.parts)


def _repr_walk(v: Any, put: Callable[[str], None]) -> None:
    if isinstance(v, (list, tuple)):
        put("[" if isinstance(v, list) else "(")
        for i, x in enumerate(v):
            if i:
                put(", ")
            _repr_walk(x, put)
        put("]" if isinstance(v, list) else ("," if len(v) == 1 else "") + ")")
    elif isinstance(v, dict):
        put("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                put(", ")
            _repr_walk(k, put)
            put(": ")
            _repr_walk(x, put)
        put("}")
    else:
        put(repr(v))


def quote(value: Any, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)`` for a message, at most about ``limit`` characters (strings cut with
    ``... (N more characters)``; lists and dicts are not written out past the limit)."""
    if isinstance(value, (list, tuple, dict)):
        return bounded_text(value, _repr_walk, limit)
    return clip(repr(value), limit)


class UserError(Exception):
    """An error caused by user input: ``message`` says what and where, ``hint`` how to fix it.

    ``str(exc)`` shows both (the hint on a line of its own, as the CLI prints it);
    code that needs one of them reads the attribute, never the text.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        message = clip(message)  # never unbounded, whatever input it quotes (MESSAGE_LIMIT)
        hint = None if hint is None else clip(hint)
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


@dataclass(frozen=True)
class PluginFailure:
    """One plugin that could not be loaded: what it is, the names it would have provided (an
    entry point's name; a built-in module's own name), and the error, on one line."""

    plugin: str  # e.g. "method plugin 'foo' from entry point foo-pkg:foo.mod:Foo"
    names: tuple[str, ...]
    error: str  # "ModuleNotFoundError: No module named 'x'"
    hint: str | None = None

    def line(self) -> str:
        return f"{self.plugin}: {self.error}"


class PluginError(UserError):
    """Plugins of a registry failed to load (every one of them in :attr:`failures`).

    Raised by every lookup of that registry; code that treats a lookup's
    :class:`UserError` as "not registered" must let this one through, so a broken
    plugin is named rather than reported as a missing name."""

    def __init__(self, message: str, failures: tuple[PluginFailure, ...] = (), *, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.failures = tuple(failures)
