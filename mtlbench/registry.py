"""One registry class for methods, backbones, datasets and architectures.

Built-in plugins register with a decorator (``@METHODS.register("okd")``).
Third-party packages declare entry points in the groups ``mtlbench.methods``,
``mtlbench.backbones``, ``mtlbench.datasets`` and ``mtlbench.architectures``;
those are loaded lazily, the
first time a registry is looked up.  A duplicate name is an error naming both
origins; an unknown name is an error listing close matches and every name.  A
plugin that fails to import is an error on every lookup of its registry, not
only the first (a registry is never used half-loaded): a
:class:`~mtlbench.errors.PluginError` naming every plugin that failed, one line
each with its error, whatever it raised while importing (``sys.exit()`` too;
only ``KeyboardInterrupt`` passes through).  Looking up a name that a failed
plugin would have provided (an entry point's name, a built-in module's name)
says that this plugin failed to load.

The build sequence of a resolved config (dataset, tasks, backbone, method) is
:func:`mtlbench.models.assemble`.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator

from .errors import PluginError, PluginFailure, UserError, clip


@dataclass
class Entry:
    name: str
    obj: Any
    origin: str  # "builtin (module)" or "entry point dist:module"
    summary: str
    aliases: tuple[str, ...] = ()


def _summary(obj: Any) -> str:
    text = getattr(obj, "summary", None) or inspect.getdoc(obj) or ""
    return text.strip().splitlines()[0] if text.strip() else ""


class Registry:
    """A named collection of plugins of one kind."""

    def __init__(self, kind: str, group: str, builtin_packages: tuple[str, ...] = ()):
        self.kind = kind  # "method", "backbone", "dataset"
        self.group = group
        self._builtin_packages = builtin_packages
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = False  # every plugin imported
        self._loading = False  # importing them now (a plugin may look the registry up meanwhile)
        self._failures: tuple[PluginFailure, ...] = ()  # plugins that failed to load, said on every lookup

    # -- registration -------------------------------------------------------
    def register(self, name: str, *, aliases: tuple[str, ...] | list[str] = (),
                 origin: str | None = None) -> Callable[[Any], Any]:
        """Decorator: register ``obj`` under ``name`` (and optional aliases)."""

        def deco(obj: Any) -> Any:
            self.add(name, obj, aliases=tuple(aliases),
                     origin=origin or f"builtin ({obj.__module__})")
            return obj

        return deco

    def add(self, name: str, obj: Any, *, aliases: tuple[str, ...] = (), origin: str,
            hint: str | None = None) -> None:
        """Register ``obj``; a name or alias another object holds is an error naming both origins.

        ``hint``: how to fix a duplicate (default: rename one of the two).
        """
        for key in (name, *aliases):
            prev = self._entries.get(key) or (self._entries.get(self._aliases[key])
                                               if key in self._aliases else None)
            if prev is not None and prev.obj is not obj:
                raise UserError(
                    f"duplicate {self.kind} name {key!r}: registered by {prev.origin} "
                    f"and again by {origin}",
                    hint=hint or f"rename one of the two {self.kind}s")
        try:
            obj.registry_name = name
        except (AttributeError, TypeError):
            pass
        self._entries[name] = Entry(name, obj, origin, _summary(obj), tuple(aliases))
        for a in aliases:
            self._aliases[a] = name

    # -- loading ------------------------------------------------------------
    def _ensure_loaded(self, name: str | None = None) -> None:
        """Import every plugin once; if any failed, raise :meth:`failure_error` on every lookup
        (``name``: the name looked up, if one is)."""
        if self._failures:
            raise self.failure_error(name)
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            self._failures = tuple(self._load())
        finally:
            self._loading = False
        self._loaded = True
        if self._failures:
            raise self.failure_error(name)

    def failure_error(self, name: str | None = None) -> PluginError:
        """The error of a registry whose plugins failed to load: every failure, one line each;
        first, when ``name`` is one a failed plugin would have provided, that it failed."""
        fs = self._failures
        lines = []
        culprit = next((f for f in fs if name is not None and name in f.names), None)
        if culprit is not None:
            lines.append(f"{self.kind} {name!r} comes from a plugin that failed to load: {culprit.line()}")
        if culprit is None or len(fs) > 1:
            head = (f"{len(fs)} {self.kind} plugins failed to load" if len(fs) > 1
                    else f"a {self.kind} plugin failed to load")
            lines.append(head + (f", so {self.kind} {name!r} cannot be looked up" if name and culprit is None
                                 else "") + ":")
            lines += [f"  {f.line()}" for f in fs]
        hints = list(dict.fromkeys(f.hint for f in fs if f.hint))
        return PluginError("\n".join(lines), fs, hint="; ".join(hints) or None)

    def _load(self) -> list[PluginFailure]:
        """Import every plugin, going on past a failing one; returns the failures."""
        failures: list[PluginFailure] = []
        for pkg_name in self._builtin_packages:
            pkg = importlib.import_module(pkg_name)
            for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not mod.name.startswith("_"):
                    name = f"{pkg_name}.{mod.name}"
                    try:
                        importlib.import_module(name)
                    except KeyboardInterrupt:
                        raise
                    except UserError as exc:
                        failures.append(PluginFailure(f"the built-in {self.kind} plugin {name}", (mod.name,),
                                                      _one_line(exc.message), exc.hint))
                    except BaseException as exc:  # noqa: BLE001 - SystemExit too: a plugin must not end mtlbench
                        failures.append(PluginFailure(
                            f"could not import the built-in {self.kind} plugin {name}", (mod.name,), _describe(exc),
                            "a broken install or a bug: `mtlbench --debug ...` shows the "
                            "traceback; reinstall with pip install -e ."))
        for ep in _entry_points(self.group):
            if ep.name in self._entries and self._entries[ep.name].origin.startswith("entry point"):
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None)
            origin = f"entry point {dist}:{ep.value}" if dist else f"entry point {ep.value}"
            dist = dist or f"package declaring the entry point {ep.name!r} (group {self.group})"
            try:
                obj = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit too (see above)
                failures.append(PluginFailure(f"could not load {self.kind} plugin {ep.name!r} from {origin}",
                                              (ep.name,), _describe(exc), f"fix or uninstall the {dist} package"))
                continue
            try:
                self.add(ep.name, obj, origin=origin, hint=f"rename the entry point in the {dist} package")
            except UserError as exc:
                failures.append(PluginFailure(f"{self.kind} plugin {ep.name!r} from {origin}", (ep.name,),
                                              _one_line(exc.message), exc.hint))
        return failures

    # -- lookup -------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._ensure_loaded()
        for n in sorted(self._entries):
            yield self._entries[n]

    def canonical(self, name: str) -> str:
        self._ensure_loaded(name)
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = sorted([*self._entries, *self._aliases])
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        raise UserError(msg + f"\n  registered {self.kind}s: {', '.join(known) or '(none)'}",
                        hint=f"run `mtlbench list {self.kind}s` to see them with a summary")

    def get(self, name: str) -> Any:
        return self._entries[self.canonical(name)].obj

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded(name)
        return name in self._entries or name in self._aliases


def _describe(exc: BaseException) -> str:
    """An exception raised while importing a plugin, on one line: ``Type: message``."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) while being imported"
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    """``text`` on one line, at most a few hundred characters."""
    return clip(" ".join(str(text).split()), 500)


def _entry_points(group: str):
    try:
        return list(metadata.entry_points(group=group))
    except TypeError:  # pragma: no cover - Python < 3.10
        return list(metadata.entry_points().get(group, []))


METHODS = Registry("method", "mtlbench.methods", ("mtlbench.methods",))
BACKBONES = Registry("backbone", "mtlbench.backbones", ("mtlbench.backbones",))
DATASETS = Registry("dataset", "mtlbench.datasets", ("mtlbench.data",))
#: how the task networks share (hard sharing, single-task, Cross-Stitch, MTAN): the second axis of a
#: run beside its weighting (the method), chosen by ``method.architecture`` (mtlbench.architectures)
ARCHITECTURES = Registry("architecture", "mtlbench.architectures", ("mtlbench.architectures",))


def __getattr__(name: str) -> Any:
    # ``from mtlbench.registry import assemble`` keeps working for one release (it moved to
    # mtlbench.models, being no registry work); remove this in the release after.
    if name == "assemble":
        import warnings

        from .models import assemble

        warnings.warn("mtlbench.registry.assemble moved to mtlbench.models.assemble; import it from "
                      "there (the old name goes in the next release)", DeprecationWarning, stacklevel=2)
        return assemble
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
