"""One registry class for methods, backbones and datasets.

Built-in plugins register with a decorator (``@METHODS.register("okd")``).
Third-party packages declare entry points in the groups ``mtlbench.methods``,
``mtlbench.backbones`` and ``mtlbench.datasets``; those are loaded lazily, the
first time a registry is looked up.  A duplicate name is an error naming both
origins; an unknown name is an error listing close matches and every name.
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
        self._loaded = False

    # -- registration -------------------------------------------------------
    def register(self, name: str, *, aliases: tuple[str, ...] | list[str] = (),
                 origin: str | None = None) -> Callable[[Any], Any]:
        """Decorator: register ``obj`` under ``name`` (and optional aliases)."""

        def deco(obj: Any) -> Any:
            self.add(name, obj, aliases=tuple(aliases),
                     origin=origin or f"builtin ({obj.__module__})")
            return obj

        return deco

    def add(self, name: str, obj: Any, *, aliases: tuple[str, ...] = (), origin: str) -> None:
        for key in (name, *aliases):
            prev = self._entries.get(key) or (self._entries.get(self._aliases[key])
                                               if key in self._aliases else None)
            if prev is not None and prev.obj is not obj:
                raise UserError(
                    f"duplicate {self.kind} name {key!r}: registered by {prev.origin} "
                    f"and again by {origin}",
                    hint=f"rename one of the two {self.kind}s")
        try:
            obj.registry_name = name
        except (AttributeError, TypeError):
            pass
        self._entries[name] = Entry(name, obj, origin, _summary(obj), tuple(aliases))
        for a in aliases:
            self._aliases[a] = name

    # -- loading ------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for pkg_name in self._builtin_packages:
            pkg = importlib.import_module(pkg_name)
            for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if not mod.name.startswith("_"):
                    importlib.import_module(f"{pkg_name}.{mod.name}")
        for ep in _entry_points(self.group):
            if ep.name in self._entries and self._entries[ep.name].origin.startswith("entry point"):
                continue
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            origin = f"entry point {dist}:{ep.value}"
            if ep.name in self._entries or ep.name in self._aliases:
                prev = self._entries.get(ep.name) or self._entries[self._aliases[ep.name]]
                raise UserError(
                    f"duplicate {self.kind} name {ep.name!r}: registered by {prev.origin} "
                    f"and again by {origin}",
                    hint=f"rename the entry point in the {dist} package")
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the harness
                raise UserError(f"could not load {self.kind} plugin {ep.name!r} from {origin}: {exc}",
                                hint=f"fix or uninstall the {dist} package") from exc
            self.add(ep.name, obj, origin=origin)

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


def assemble(cfg: Any, dataset: Any = None) -> tuple[Any, dict, Any, Any]:
    """The one build sequence of a resolved config: dataset -> tasks -> backbone factory -> method
    (on the CPU).

    Used by :func:`mtlbench.trainer.build` (training) and
    :func:`mtlbench.runs.load_trained_method` (a finished run's networks).
    ``dataset``: an already built dataset plugin.
    """
    if dataset is None:
        dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    tasks = dataset.tasks()
    factory = BACKBONES.get(cfg.name("backbone"))(cfg.backbone, tasks)
    factory.check_image_size(cfg.dataset.image_size)
    method = METHODS.get(cfg.name("method"))(cfg.method, tasks, factory)
    return dataset, tasks, factory, method
