"""One registry class for methods, backbones and datasets.

Built-in plugins register with a decorator (``@METHODS.register("okd")``).
Third-party packages declare entry points in the groups ``mtlbench.methods``,
``mtlbench.backbones`` and ``mtlbench.datasets``; those are loaded lazily, the
first time a registry is looked up.  A duplicate name is an error naming both
origins; an unknown name is an error listing close matches and every name.  A
plugin that fails to import is an error on every lookup of its registry, not
only the first (a registry is never used half-loaded).

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

from .errors import UserError


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
        self._failure: UserError | None = None  # why importing the plugins failed, raised on every lookup

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
    def _ensure_loaded(self) -> None:
        """Import every plugin once; if that failed, raise the same error on every lookup."""
        if self._failure is not None:
            raise self._failure
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            self._load()
        except UserError as exc:
            self._failure = exc
            raise
        finally:
            self._loading = False
        self._loaded = True

    def _load(self) -> None:
        for pkg_name in self._builtin_packages:
            pkg = importlib.import_module(pkg_name)
            for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not mod.name.startswith("_"):
                    name = f"{pkg_name}.{mod.name}"
                    try:
                        importlib.import_module(name)
                    except UserError:
                        raise
                    except Exception as exc:
                        raise UserError(f"could not import the built-in {self.kind} plugin {name}: "
                                        f"{type(exc).__name__}: {exc}",
                                        hint="a broken install or a bug: `mtlbench --debug ...` shows the "
                                             'traceback; reinstall with pip install -e .') from exc
        for ep in _entry_points(self.group):
            if ep.name in self._entries and self._entries[ep.name].origin.startswith("entry point"):
                continue
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            origin = f"entry point {dist}:{ep.value}"
            try:
                obj = ep.load()
            except Exception as exc:
                raise UserError(f"could not load {self.kind} plugin {ep.name!r} from {origin}: {exc}",
                                hint=f"fix or uninstall the {dist} package") from exc
            self.add(ep.name, obj, origin=origin, hint=f"rename the entry point in the {dist} package")

    # -- lookup -------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> Iterator[Entry]:
        self._ensure_loaded()
        for n in sorted(self._entries):
            yield self._entries[n]

    def canonical(self, name: str) -> str:
        self._ensure_loaded()
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
        self._ensure_loaded()
        return name in self._entries or name in self._aliases


def _entry_points(group: str):
    try:
        return list(metadata.entry_points(group=group))
    except TypeError:  # pragma: no cover - Python < 3.10
        return list(metadata.entry_points().get(group, []))


METHODS = Registry("method", "mtlbench.methods", ("mtlbench.methods",))
BACKBONES = Registry("backbone", "mtlbench.backbones", ("mtlbench.backbones",))
DATASETS = Registry("dataset", "mtlbench.datasets", ("mtlbench.data",))


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
