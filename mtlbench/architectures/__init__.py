"""Architectures: how the task networks share, the second axis of a run beside its weighting.

A run names an *architecture* and a *weighting*.  The weighting is the method
(``--method dwa``: how the task losses or gradients are combined); the
architecture is ``method.architecture`` (``--set method.architecture=cross_stitch``),
``hard`` by default, so ``mtlbench run --method dwa`` is DWA on hard sharing as
before.  Built-in architectures, one module each here:

============  ==========================================================================
``hard``      hard parameter sharing: one encoder for all tasks, one head per task (on a
              backbone whose encoder has task-specific paths, e.g. ``deeplabv3_mtan``,
              that encoder as it is)
``single_task``  one independent network per task (alias ``stl_nets``)
``cross_stitch``  one network per task, linked by learnable T x T mixing (Misra et al., 2016)
``mtan``      MTAN's per-task attention over the backbone's shared network (Liu et al.,
              2019), from the backbone's :meth:`~mtlbench.api.BackboneFactory.mtan_encoder`
============  ==========================================================================

An architecture's options sit in the ``method`` section beside the weighting's
(``--set method.groups=[2,1,1,1]`` for Cross-Stitch); the config resolver
validates the section against the weighting's ``Config`` joined with the
architecture's (:func:`method_config_class`).  ``method.architecture`` is a
backward-compatible option (``hash_default=False``): at ``hard`` it is left out
of the run identity, so every run and record from before the two axes keeps its
identity.

Pair aliases.  ``stl`` and ``cross_stitch`` are methods too, as before: equal
weights on ``single_task`` and on ``cross_stitch``, each declaring
``fixed_architecture`` and ``alias_of = "baseline"`` (:class:`mtlbench.api.Method`).
Their configs are what they always were (so are their identities), and
``--method baseline --set method.architecture=cross_stitch`` resolves to
``method.name: cross_stitch`` (:func:`pair_alias`): one computation, one name,
one identity.

Which pairs are defined is the plugins' to say: a weighting that needs something
of the network (shared parameters, one shared representation, a last shared
layer, one encoder to distil into) refuses at build time with a
:class:`~mtlbench.errors.UserError` saying "unsupported" and why, which exits 2.
The list is in ``README.md`` ("Two axes") and pinned by ``tests/test_architectures.py``.

Adding an architecture: one module here (an :class:`~mtlbench.api.Architecture`
registered with ``@ARCHITECTURES.register("name")``, building a
:class:`~mtlbench.api.TaskModel`), or a third-party package's entry point in the
group ``mtlbench.architectures``.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from ..errors import UserError

#: the architecture of a run that names none (and of every record written before the two axes)
DEFAULT_ARCHITECTURE = "hard"
ARCHITECTURE_KEY = "architecture"


def _registry():
    from ..registry import ARCHITECTURES

    return ARCHITECTURES


def canonical_architecture(name: Any, where: str = "method.architecture") -> str:
    """The registered name of architecture ``name`` (an alias resolved); a UserError naming ``where``."""
    if not isinstance(name, str):
        raise UserError(f"{where} must be an architecture name (a string), got {name!r}",
                        hint="e.g. --set method.architecture=cross_stitch (`mtlbench list architectures`)")
    try:
        return _registry().canonical(name)
    except UserError as exc:
        raise UserError(f"{where}: {exc.message}", hint=exc.hint) from None


def method_config_class(method_cls: type, section: dict | None = None) -> type:
    """The dataclass a ``method`` section is validated against: the method's ``Config`` joined
    with ``method.architecture`` and the options of the architecture that ``section`` names.

    A pair alias (``fixed_architecture`` set) keeps its own ``Config``.  ``section["architecture"]``
    is replaced by the architecture's registered name when it is an alias."""
    base = method_cls.Config
    if getattr(method_cls, "fixed_architecture", None) is not None:
        return base
    section = section if section is not None else {}
    arch = canonical_architecture(section.get(ARCHITECTURE_KEY, DEFAULT_ARCHITECTURE))
    if ARCHITECTURE_KEY in section:
        section[ARCHITECTURE_KEY] = arch
    return _joined(base, _registry().get(arch), arch, getattr(method_cls, "registry_name", base.__name__))


@functools.lru_cache(maxsize=None)
def _joined(base: type, arch_cls: type, arch: str, method: str) -> type:
    from ..config import option

    arch_cfg = arch_cls.Config
    own = {f.name for f in dataclasses.fields(base)}
    clash = sorted(own & ({ARCHITECTURE_KEY} | {f.name for f in dataclasses.fields(arch_cfg)}))
    if clash:
        raise UserError(f"method {method!r} and architecture {arch!r} both have the option"
                        f"{'s' if len(clash) > 1 else ''} {', '.join(clash)}: the pair is unsupported",
                        hint="rename the option in one of the two plugins")
    hints = typing.get_type_hints(arch_cfg)
    fields: list[tuple] = [(ARCHITECTURE_KEY, str, option(DEFAULT_ARCHITECTURE, hash_default=False))]
    for f in dataclasses.fields(arch_cfg):
        kw: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        fields.append((f.name, hints[f.name], dataclasses.field(**kw)))

    def validate(self) -> None:
        base_validate = getattr(base, "validate", None)
        if callable(base_validate):
            base_validate(self)
        sub = arch_options(arch_cls, self)
        sub_validate = getattr(sub, "validate", None)
        if callable(sub_validate):
            sub_validate()

    cls = dataclasses.make_dataclass(f"{base.__name__}On{arch_cls.__name__}", fields, bases=(base,),
                                     namespace={"validate": validate})
    cls.__module__ = base.__module__
    cls.__doc__ = f"Options of method {method!r} on architecture {arch!r}."
    return cls


def arch_options(arch_cls: type, cfg: Any) -> Any:
    """The architecture's ``Config`` filled from a method config's fields of the same names."""
    names = [f.name for f in dataclasses.fields(arch_cls.Config)]
    return arch_cls.Config(**{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def architecture_name(method_cls: type, cfg: Any) -> str:
    """The architecture a method of class ``method_cls`` with config ``cfg`` runs on."""
    fixed = getattr(method_cls, "fixed_architecture", None)
    if fixed is not None:
        return fixed
    return canonical_architecture(getattr(cfg, ARCHITECTURE_KEY, None) or DEFAULT_ARCHITECTURE)


def architecture_for(method_cls: type, cfg: Any):
    """The architecture plugin (an :class:`~mtlbench.api.Architecture`) of a method and its config."""
    arch_cls = _registry().get(architecture_name(method_cls, cfg))
    return arch_cls(arch_options(arch_cls, cfg))


def pair_alias(method: str, architecture: str) -> str | None:
    """The registered pair alias running weighting ``method`` on ``architecture`` (``cross_stitch``
    for baseline on cross_stitch), or None."""
    from ..registry import METHODS

    for entry in METHODS.entries():
        obj = entry.obj
        if getattr(obj, "fixed_architecture", None) == architecture and getattr(obj, "alias_of", None) == method:
            return entry.name
    return None
