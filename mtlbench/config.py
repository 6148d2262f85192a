"""Layered configuration.

Precedence, lowest to highest:

1. built-in defaults (:data:`DEFAULTS` and each plugin's ``Config`` dataclass);
2. a preset (``mtlbench/presets/<name>.yaml``; ``quick`` unless told otherwise);
3. an experiment YAML holding only deltas (``--config FILE``);
4. CLI flags (``--epochs``, ``--method``, ...) and ``--set a.b=c`` (values parsed
   as YAML scalars), in the order given.

The resolved config is a nested dict with the sections ``method``, ``backbone``,
``dataset`` (each with a ``name`` that selects the plugin, the rest validated
against that plugin's ``Config`` dataclass) and ``train`` (validated against
:class:`TrainConfig`), plus ``seed`` and ``preset``.  An unknown key or a value
of the wrong type is a :class:`~mtlbench.errors.UserError` naming the key, the
layer it came from and the valid keys.  When a layer switches a section's
plugin (``--method okd`` over a preset that chose ``baseline``), keys of lower
layers that the new plugin does not know are dropped if a preset set them;
if the user did (a ``--config`` file, a flag, ``--set``) that is an error
naming the keys, since they would otherwise vanish in silence.

Ranges and choices
------------------
Every option declares its allowed values once, beside its default, with
:func:`option` (a :func:`dataclasses.field` carrying a :class:`Check`)::

    @dataclass
    class MyConfig:
        T: float = option(2.0, gt=0)                          # a positive number
        alpha: float = option(0.5, ge=0, le=1)                # in [0, 1]
        steps: int | None = option(None, ge=1)                # None, or an int >= 1
        form: str = option("paper", choices=("paper", "libmtl"))
        rates: list[int] = option([12, 24, 36], ge=1, min_items=1)  # each element >= 1
        lr: float | None = option(None, gt=0, example=0.025)  # example for the hint

:func:`build_dataclass` checks every given value while the config resolves,
before any model or data is built; a violation is a ``UserError`` naming the
key, the layer it came from, the allowed range or choices and an example
(``hint: e.g. --set method.T=2.0``).  ``None`` passes when the type allows it
(the message then says "or null"); bounds and choices apply to each element
of a list and to each value of a dict; floats must be finite
(``finite=False`` allows inf/nan).  An option added after records exist can
pass ``hash_default=False``: at its default it is left out of the config hash
(:func:`identity_data`), so older records keep their identity.  A plugin may
still define ``validate(self)`` raising ``ValueError`` for rules that tie
several options together; it runs after the per-option checks.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import PluginError, UserError, bounded_text, quote
from .trackers import TRACKERS

PRESET_DIR = Path(__file__).parent / "presets"

#: sections whose ``name`` picks a plugin, and the registry kind of each
PLUGIN_SECTIONS = ("method", "backbone", "dataset")
TOP_LEVEL_KEYS = ("seed", "preset", "method", "backbone", "dataset", "train")

#: keys that do not change what a run computes; left out of the config hash so a
#: run keeps its identity across machines (device, worker count, data location)
#: the largest run seed (numpy's legacy seeding takes 32 bits; the per-epoch shuffle seed, about
#: seed * 1e5, must stay within torch's 64-bit generator seed)
MAX_SEED = 2**32 - 1

RUNTIME_KEYS = ("train.device", "dataset.num_workers", "dataset.root", "train.progress", "train.compile",
                "train.loggers")


# ---------------------------------------------------------------------------
# ranges and choices of options
# ---------------------------------------------------------------------------

#: the key of an option's :class:`Check` in its dataclass field's metadata
CHECK_KEY = "mtlbench.check"
_MISSING = dataclasses.MISSING


class _Unset:
    """No example given (``dataclasses.MISSING`` cannot be a dataclass default)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Check:
    """The allowed values of one option (see :func:`option`)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    min_items: int | None = None  # lists: at least this many elements
    unique: bool = False  # lists: no element twice
    finite: bool = True  # floats must be finite
    example: Any = UNSET  # a valid value for the hint (default: the option's default)
    hash_default: bool = True  # False: at its default, the key is left out of the config hash

    def describe(self) -> str:
        """The allowed values in words: ``"a positive number (> 0)"``, ``"in [0, 1)"``, ``"one of: a, b"``."""
        if self.choices is not None:
            return "one of: " + ", ".join(_flow(c) for c in self.choices)
        lo = (f"[{_num(self.ge)}" if self.ge is not None else
              f"({_num(self.gt)}" if self.gt is not None else None)
        hi = (f"{_num(self.le)}]" if self.le is not None else
              f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo == "(0":
            return "a positive number (> 0)"
        if lo == "[0":
            return "a non-negative number (>= 0)"
        if lo:
            return (">= " if lo[0] == "[" else "> ") + lo[1:]
        if hi:
            return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
        return "a finite number" if self.finite else "any value"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` (of the right type) is not allowed, or None when it is."""
        if value is None:
            return None  # the type annotation decided whether None is allowed
        if isinstance(value, (list, tuple)):
            if self.min_items is not None and len(value) < self.min_items:
                return (f"must hold at least {self.min_items} element{'s' if self.min_items != 1 else ''}"
                        f"{', each ' + self.describe() if self._constrains() else ''}")
            if self.unique:
                twice = next((v for i, v in enumerate(value) if v in value[:i]), None)
                if twice is not None:
                    return f"names {_flow(twice)} twice: each element may appear once"
            for i, v in enumerate(value):
                why = self.problem(v)
                if why:
                    return f"element {i} ({_flow(v)}) {why}"
            return None
        if isinstance(value, dict):
            for k, v in value.items():
                why = self.problem(v)
                if why:
                    return f"entry {_flow(k)} ({_flow(v)}) {why}"
            return None
        if self.choices is not None:
            return None if value in self.choices else f"must be {self.describe()}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.finite and not math.isfinite(value):
                d = self.describe() if self._bounded() else ""
                return ("must be a finite" + d[1:] if d.startswith("a ")
                        else "must be a finite number" + (f" {d}" if d else ""))
            ok = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
            return None if ok else f"must be {self.describe()}"
        return None

    def _bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def _constrains(self) -> bool:
        return self._bounded() or self.choices is not None


def option(default: Any = _MISSING, *, default_factory: Any = _MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices=None, min_items: int | None = None, unique: bool = False,
           finite: bool = True, example: Any = UNSET, hash_default: bool = True) -> Any:
    """A dataclass field with its allowed values: ``epochs: int = option(10, ge=1)``.

    ``ge``/``gt``/``le``/``lt``: bounds of a number (or of each element of a
    list); ``choices``: the allowed values; ``min_items``: the shortest list; ``unique``: a list
    holds no element twice;
    ``finite=False`` allows inf and nan; ``example``: a valid value shown in
    the error's hint (default: ``default``); ``hash_default=False``: leave the
    key out of the config hash while it holds its default (for options added
    after records exist).  A list or dict default is copied per instance.
    """
    check = Check(ge=ge, gt=gt, le=le, lt=lt, choices=tuple(choices) if choices is not None else None,
                  min_items=min_items, unique=unique, finite=finite, example=example,
                  hash_default=hash_default)
    meta = {CHECK_KEY: check}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    if default is _MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def option_check(f: dataclasses.Field) -> Check | None:
    """The :class:`Check` of a dataclass field declared with :func:`option`, if any."""
    return f.metadata.get(CHECK_KEY) if f.metadata else None


def _or_null(why: str, tp: Any) -> str:
    """``why``, saying that null is allowed too when the annotation ``tp`` admits None."""
    if why.startswith("element ") or why.startswith("entry "):
        return why
    return why + ", or null" if type(None) in typing.get_args(tp) else why


def _num(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _flow(v: Any) -> str:
    """``v`` as a YAML flow scalar, as a user would write it after ``--set key=`` (for messages:
    at most about :data:`mtlbench.errors.VALUE_LIMIT` characters, however large ``v``)."""
    return bounded_text(v, _flow_walk)


def _flow_walk(v: Any, put) -> None:
    if isinstance(v, bool):
        put("true" if v else "false")
    elif v is None:
        put("null")
    elif isinstance(v, (list, tuple)):
        put("[")
        for i, x in enumerate(v):
            if i:
                put(",")
            _flow_walk(x, put)
        put("]")
    elif isinstance(v, dict):
        put("{")
        for i, (k, x) in enumerate(v.items()):
            if i:
                put(", ")
            put(f"{k}: ")
            _flow_walk(x, put)
        put("}")
    else:
        put(str(v))


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _example(f: dataclasses.Field, check: Check | None) -> Any:
    """A valid value of field ``f`` for a hint, or _MISSING."""
    if check is not None and check.example is not UNSET:
        return check.example
    d = _field_default(f)
    if d is not _MISSING and d is not None and (check is None or check.problem(d) is None):
        return d
    if check is not None:
        if check.choices:
            return check.choices[0]
        if check.ge is not None:
            return check.ge
    return _MISSING


def _hint(section: str, f: dataclasses.Field, check: Check | None) -> str | None:
    ex = _example(f, check)
    if ex is _MISSING:
        return None
    return f"e.g. --set {section}.{f.name}={_flow(ex)}"


@dataclass
class TrainConfig:
    """The trainer's options (the paper §4.0.1: AdamW, OneCycleLR, lr 1e-3)."""

    epochs: int = option(10, ge=1)
    batch_size: int = option(8, ge=1)  # the paper does not state its batch size
    lr: float = option(1e-3, gt=0)  # OneCycleLR peak learning rate (the paper's "initial lr")
    weight_decay: float = option(0.01, ge=0)  # AdamW's default
    # the model's optimiser (the paper: AdamW); methods with their own optimisers keep theirs
    optimizer: str = option("adamw", choices=("adamw", "adam"), hash_default=False)
    scheduler: str = option("onecycle", choices=("onecycle", "constant"))
    pct_start: float = option(0.3, gt=0, lt=1)  # OneCycleLR warm-up share of the steps
    eval_every: int = option(1, ge=0)  # evaluate on val every N epochs (0: only after the last)
    report: str = option("last", choices=("last", "best_train_loss"))  # which epoch the record reports
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    amp: str = option("auto", choices=("auto", "bf16", "fp32"))  # auto: the backbone's choice for the device
    channels_last: bool | None = None  # None: the backbone's choice for the device
    max_steps_per_epoch: int | None = option(None, ge=1, example=2)  # cap the steps of an epoch (smoke tests)
    log_every: int = option(1, ge=0)  # record per-step logs (losses, weights) every N steps (0: never)
    # clip the gradient norm (off in the paper)
    grad_clip: float | None = option(None, gt=0, example=1.0)
    threads: int | None = option(None, ge=1, le=1024, example=2)  # torch CPU threads (None: torch's default)
    # A/A pairs (`mtlbench noise`): the random stream left after initialisation (dropout, random
    # loss weights, any sampling a method does) is reseeded from (seed, nuisance_seed), while the
    # initialisation and the data order still come from `seed` alone.  None: one stream, from `seed`.
    nuisance_seed: int | None = option(None, ge=0, le=2**32 - 1, hash_default=False, example=1)
    # torch.compile the networks' blocks and heads (Method.compile_modules); a runtime choice, like the device
    compile: bool = False
    progress: str = option("auto", choices=("auto", "plain", "none"))  # auto: rich bars on a terminal
    # experiment trackers that mirror the run's scalars (mtlbench.trackers); a runtime choice
    loggers: list[str] = option(default_factory=list, choices=TRACKERS, unique=True, example=["tensorboard"])
    # data-parallel runs (torchrun, --nproc): BatchNorm layers normalise with the statistics of the
    # global batch (mtlbench.distributed.SyncBatchNorm), so N processes compute what one does;
    # false: each process's shard alone (faster, a different computation); no effect in one process
    sync_batchnorm: bool = option(True, hash_default=False)


#: the built-in defaults: seed, preset and which plugins run when nothing says otherwise;
#: the plugin names are data (``presets/_defaults.yaml``), not code
DEFAULTS: dict[str, Any] = yaml.safe_load((PRESET_DIR / "_defaults.yaml").read_text())


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; researchers write it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


# Numbers that YAML 1.1 reads otherwise than everyone else are refused, in files and ``--set``
# alike, with how to write either reading (:class:`AmbiguousNumber`; the one place for it):
# * an integer with a leading zero (``010``) is octal in YAML 1.1 (8) but decimal to ``--seed 010``
#   and to Python (10).  ``0x``/``0b`` stay as they are;
# * digits separated by colons (``1:30``, ``1:30.5``) are sexagesimal (base 60) in YAML 1.1 (90),
#   where a reader sees a time, a ratio or a range.
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?0[0-9_]+$"), list("-+0"))


class AmbiguousNumber(yaml.YAMLError):
    """A YAML number that YAML 1.1 reads otherwise than a reader would: refused, never guessed."""

    def __init__(self, text: str, mark=None):
        super().__init__(text + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""))


class LeadingZeroError(AmbiguousNumber):
    """A YAML integer with a leading zero (``010``): octal to YAML 1.1, decimal to everyone else."""


class SexagesimalError(AmbiguousNumber):
    """A YAML number of colon-separated digits (``1:30``): base 60 to YAML 1.1 (90)."""


def _refuse_sexagesimal(node: yaml.ScalarNode, value: int | float) -> None:
    text = str(node.value)
    if ":" in text:
        raise SexagesimalError(
            f"{text} is a sexagesimal (base-60) number to YAML 1.1, which reads it as {value!r}: "
            f"write the number itself ({value!r}), or quote it ('{text}') if it is a string",
            node.start_mark)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(node.value)
    digits = text.replace("_", "").lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
        sign = -1 if text.startswith("-") else 1
        octal = (f"YAML 1.1 reads it as the octal number {sign * int(digits, 8)}, while --seed and "
                 f"Python read {sign * int(digits)}"
                 if set(digits) <= set("01234567") and int(digits, 8) != int(digits)
                 else "YAML 1.1 reads numbers written so as octal")
        raise LeadingZeroError(
            f"{text} is an integer with a leading zero, ambiguous ({octal}): write it without the "
            f"leading zero ({sign * int(digits)}), or quote it ('{text}') if it is a string",
            node.start_mark)
    value = yaml.SafeLoader.construct_yaml_int(loader, node)
    _refuse_sexagesimal(node, value)
    return value


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    value = yaml.SafeLoader.construct_yaml_float(loader, node)
    _refuse_sexagesimal(node, value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)

#: the most values (scalars, lists, mappings) a YAML document may hold once its aliases are
#: expanded: ``b: [*a, *a, ...]`` nested a few levels deep ("billion laughs") turns a few hundred
#: bytes into millions of values, which any later walk (a check, a message, the config hash)
#: would write out in full.  A config file holds hundreds.
MAX_YAML_NODES = 100_000


class YAMLTooLarge(yaml.YAMLError):
    """A YAML document whose aliases expand beyond :data:`MAX_YAML_NODES` values, that refers to
    itself, or that nests too deeply to read."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """The number of nodes of ``root``'s document with every alias written out, counted without
    writing them out (each distinct node once, memoised); YAMLTooLarge past ``limit`` or on a
    node that contains itself (``&a [*a]``)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                raise YAMLTooLarge(f"its aliases expand it to more than {limit} values")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YAMLTooLarge("an alias refers to a value that contains it (a recursive structure)")
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise YAMLTooLarge("an alias refers to a value that contains it (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def guarded_yaml_load(text: str, loader: type = None, limit: int | None = None):
    """``text`` parsed with ``loader`` (mtlbench's rules by default), refusing a document whose
    aliases expand beyond ``limit`` values (:data:`MAX_YAML_NODES`) or that nests too deeply
    (:class:`YAMLTooLarge`)."""
    ld = (loader or _Loader)(text)
    try:
        node = ld.get_single_node()
        if node is None:
            return None
        _expanded_size(node, MAX_YAML_NODES if limit is None else limit)
        return ld.construct_document(node)
    except RecursionError:
        raise YAMLTooLarge("it nests too deeply to read") from None
    finally:
        ld.dispose()


_PARSED: dict[str, Any] = {}  # YAML text -> its parsed value (presets are read on every resolve)


def yaml_load(text: str):
    """``text`` parsed with mtlbench's YAML rules; a fresh copy each call.  Parses are kept by
    content (pure-Python YAML is most of what resolving a config costs), never by file name, so
    an edited file is parsed again.  A document whose aliases expand it beyond
    :data:`MAX_YAML_NODES` values is refused (:class:`YAMLTooLarge`), as is a number YAML 1.1
    reads otherwise than a reader would (:class:`AmbiguousNumber`: ``010``, ``1:30``)."""
    if text not in _PARSED:
        if len(_PARSED) >= 512:
            _PARSED.clear()
        _PARSED[text] = guarded_yaml_load(text)  # raises before anything is kept
    return copy.deepcopy(_PARSED[text])


def _registry(kind: str):
    from .registry import BACKBONES, DATASETS, METHODS

    return {"method": METHODS, "backbone": BACKBONES, "dataset": DATASETS}[kind]


def plugin_config_class(kind: str, name: str, section: dict | None = None) -> type:
    """The dataclass a plugin section is validated against.  For ``method``: the method's
    ``Config`` joined with ``method.architecture`` and the options of the architecture that
    ``section`` names (:func:`mtlbench.architectures.method_config_class`)."""
    obj = _registry(kind).get(name)
    cfg_cls = getattr(obj, "Config", None)
    if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
        raise UserError(f"{kind} plugin {name!r} has no Config dataclass",
                        hint="a plugin class must define `Config = SomeDataclass`")
    if kind == "method":
        from .architectures import method_config_class

        return method_config_class(obj, section)
    return cfg_cls


# ---------------------------------------------------------------------------
# parsing and merging
# ---------------------------------------------------------------------------

def parse_set(item: str) -> tuple[str, Any]:
    """``"a.b=c"`` -> ``("a.b", yaml-parsed c)``."""
    if "=" not in item:
        raise UserError(f"--set {item!r} is not of the form KEY=VALUE",
                        hint="write e.g. --set train.epochs=5 or --set method.T=0.05")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise UserError(f"--set {item!r} has an empty key", hint="write e.g. --set train.epochs=5")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except YAMLTooLarge as exc:
        raise UserError(f"--set {quote(item)}: the value is refused: {exc}",
                        hint="write the value out; YAML anchors and aliases are for sharing a few values") from None
    except AmbiguousNumber as exc:
        raise UserError(f"--set {quote(item)}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {quote(item)}: the value is not valid YAML ({exc})") from exc
    return key, value


def read_yaml_file(path: str | Path, what: str, *, example: str = "") -> Any:
    """The YAML document of the file at ``path`` (``what`` names it in messages: "config file",
    "table spec", ...), parsed with mtlbench's YAML rules (:func:`guarded_yaml_load`); every way
    a file can be wrong is a UserError naming it: missing, a directory, not a regular file (a FIFO
    is never opened: it would block), unreadable, not UTF-8, aliases that expand it hugely, an
    ambiguous number, invalid YAML.  ``example`` is a hint of what the file should hold.  The
    one reader of user YAML files (config files, table specs, claims files)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a directory, not a YAML file",
                        hint=f"pass the {what} itself" + (f" ({example})" if example else ""))
    if not p.is_file():
        if not p.exists():
            raise UserError(f"{what} {str(p)!r} does not exist", hint="check the path")
        from .data.base import not_a_regular_file

        raise UserError(f"{what} {str(p)!r} is not a regular file ({not_a_regular_file(str(p)) or 'unknown kind'})",
                        hint="pass a YAML file; a FIFO or device is not read (it could block or never end)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {what} {str(p)!r}: {exc.strerror or exc}",
                        hint="check the file's permissions") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {str(p)!r} is not a text file (not UTF-8 at byte {exc.start})",
                        hint=f"pass a YAML file (UTF-8 text)" + (f", e.g. {example}" if example else "")) from None
    try:
        return yaml_load(text)
    except YAMLTooLarge as exc:
        raise UserError(f"{what} {str(p)!r} is refused: {exc} ({len(raw)} bytes of YAML; mtlbench reads "
                        f"at most {MAX_YAML_NODES} values)",
                        hint="write the values out; YAML anchors and aliases (&name, *name) are for "
                             "sharing a few values, not for building large data") from None
    except AmbiguousNumber as exc:
        raise UserError(f"{what} {str(p)!r}: {exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {str(p)!r} is not valid YAML: {exc}") from None


def load_yaml(path: str | Path, what: str) -> dict:
    """Read a YAML mapping of config keys; every way a file can be wrong is a UserError."""
    p = Path(path).expanduser()
    data = read_yaml_file(p, what, example="`train: {epochs: 5}`")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{what} {str(p)!r} must hold a mapping of config keys at the top level, "
                        f"not a {type(data).__name__}", hint="e.g. `train: {epochs: 5}`")
    return data


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file() or name.startswith("_"):
        known = available_presets()
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(known)}",
                        hint="pass --preset with one of those names")
    return p


def available_presets() -> list[str]:
    return sorted(q.stem for q in PRESET_DIR.glob("*.yaml") if not q.stem.startswith("_"))


def _dotted_items(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k in (*PLUGIN_SECTIONS, "train") and not prefix:
            out.extend(_dotted_items(v, key + "."))
        else:
            out.append((key, v))
    return out


class Layers:
    """Accumulates config layers, remembering where each key came from."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = copy.deepcopy(DEFAULTS)
        self.origin: dict[str, str] = {}
        for key, _ in _dotted_items(self.data):
            self.origin[key] = "defaults"

    def apply(self, layer: dict, origin: str) -> None:
        # A section's "name" goes first so switching plugins filters lower layers' keys.
        items = _dotted_items(layer)
        items.sort(key=lambda kv: 0 if kv[0].endswith(".name") or kv[0] in PLUGIN_SECTIONS else 1)
        for key, value in items:
            self.set(key, value, origin)

    def set(self, key: str, value: Any, origin: str) -> None:
        parts = key.split(".")
        top = parts[0]
        if top not in TOP_LEVEL_KEYS:
            raise UserError(
                f"unknown config key {quote(key)} (from {origin}); valid top-level keys: "
                f"{', '.join(TOP_LEVEL_KEYS)}")
        if len(parts) == 1:
            if top in (*PLUGIN_SECTIONS, "train"):
                if isinstance(value, str) and top in PLUGIN_SECTIONS:
                    return self.set(f"{top}.name", value, origin)
                if isinstance(value, dict):
                    return self.apply({top: value}, origin)
                raise UserError(f"config key {key!r} (from {origin}) must be a mapping of "
                                f"{top} options, got {quote(value)}",
                                hint=f"e.g. --set {top}.KEY=VALUE, or `{top}: {{KEY: VALUE}}` in a file")
            self.data[top] = value
            self.origin[top] = origin
            return
        if len(parts) > 2:
            raise UserError(f"config key {quote(key)} (from {origin}) is nested too deeply; "
                            f"options live one level below {top!r} (e.g. {top}.{parts[1]})")
        sub = parts[1]
        section = self.data[top]
        if sub == "name" and top in PLUGIN_SECTIONS:
            if not isinstance(value, str):
                raise UserError(f"{key} (from {origin}) must be a string, got {quote(value)}")
            try:
                new = _registry(top).canonical(value)
            except PluginError as exc:  # a broken plugin is named, never taken for a missing name
                raise PluginError(f"{key} (from {origin}): {exc.message}", exc.failures, hint=exc.hint) from None
            except UserError as exc:
                raise UserError(f"{key} (from {origin}): {exc}") from None
            if new != section.get("name"):
                fields = {f.name for f in dataclasses.fields(plugin_config_class(top, new, dict(section)))}
                dropped = [k for k in section if k != "name" and k not in fields]
                # A preset's keys of the old plugin go quietly; the user's would vanish in silence.
                mine = [k for k in dropped if not _quiet_origin(self.origin.get(f"{top}.{k}", "defaults"))]
                if mine:
                    raise _dropped_error(top, section.get("name"), new, origin, mine, self.origin,
                                         sorted(fields))
                for k in dropped:
                    del section[k]
                    self.origin.pop(f"{top}.{k}", None)
            value = new
        section[sub] = value
        self.origin[key] = origin


def _quiet_origin(origin: str) -> bool:
    """Layers whose keys of a replaced plugin may be dropped without a word."""
    return origin == "defaults" or origin.startswith("preset ")


def _dropped_error(section: str, old: str | None, new: str, origin: str, keys: list[str],
                   origins: dict[str, str], valid: list[str]) -> UserError:
    by_origin: dict[str, list[str]] = {}
    for k in keys:
        by_origin.setdefault(origins.get(f"{section}.{k}", "?"), []).append(f"{section}.{k}")
    where = "; ".join(f"{', '.join(ks)} (from {o})" for o, ks in by_origin.items())
    valid_keys = [k for k in valid if k != "name"]
    files = [o.removeprefix("config file ") for o in by_origin if o.startswith("config file ")]
    fix = (f"remove {'them' if len(keys) > 1 else 'it'} from {', '.join(files)}" if files
           else f"drop the {section} option{'s' if len(keys) > 1 else ''}")
    return UserError(
        f"{origin} replaces {section} {old!r} by {new!r}, which has no option "
        f"{', '.join(k for k in keys)}: {where} would be ignored",
        hint=f"{fix}, or do not switch {section} ({new}'s options: {', '.join(valid_keys) or '(none)'})")


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a dataclass field annotation; return (ok, coerced)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_ok(value, typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = []
        for v in value:
            ok, cv = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(cv)
        return True, list(out)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False, value
        args = typing.get_args(tp)
        if not args:
            return True, value
        out_d = {}
        for k, v in value.items():
            ok_k, ck = _type_ok(k, args[0])
            ok_v, cv = _type_ok(v, args[1])
            if not (ok_k and ok_v):
                return False, value
            out_d[ck] = cv
        return True, out_d
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict:
    """``typing.get_type_hints`` of a config dataclass, evaluated once per class (evaluating
    string annotations compiles them: most of what building a small config costs)."""
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, values: dict, section: str, origins: dict[str, str]):
    """Validate ``values`` against dataclass ``cls`` and instantiate it.

    Checks, in order: unknown keys, types (the field annotations), each
    option's :class:`Check` (ranges, choices; floats finite), then the
    instance's ``validate()`` if it has one.
    """
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key == "name":
            continue
        where = origins.get(f"{section}.{key}", "?")
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(str(key), list(fields), n=2)
            raise UserError(
                f"unknown config key {section}.{key} (from {where})"
                + (f"; did you mean {', '.join(section + '.' + c for c in close)}?" if close else "")
                + f"\n  valid keys of {section}: {', '.join(sorted(fields)) or '(none)'}")
        f = fields[key]
        check = option_check(f)
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise UserError(
                f"config key {section}.{key} must be of type {_type_name(hints[key])}; "
                f"got {quote(value)} (from {where})", hint=_hint(section, f, check))
        why = check.problem(coerced) if check is not None else _finite_problem(coerced)
        if why:
            why = _or_null(why, hints[key])
            raise UserError(f"config key {section}.{key} {why}; got {_flow(value)} (from {where})",
                            hint=_hint(section, f, check))
        kwargs[key] = coerced
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"invalid {section} config: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise UserError(f"invalid {section} config: {exc}") from exc
    return obj


def _finite_problem(value: Any) -> str | None:
    """Floats of options without a :class:`Check` must be finite too (nan/inf are never meant)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if _finite_problem(v):
                return f"element {i} ({_flow(v)}) must be a finite number"
    if isinstance(value, dict):
        for k, v in value.items():
            if _finite_problem(v):
                return f"entry {k} ({_flow(v)}) must be a finite number"
    return None


def check_options(obj: Any, section: str = "config") -> None:
    """Check every field of a built config dataclass against its :func:`option` declaration.

    Raises a ``UserError`` like the resolver's.  For configs built outside the
    resolver (tests, ``test_overrides``); the resolver checks each value as it comes.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check = option_check(f)
        value = getattr(obj, f.name)
        why = check.problem(value) if check is not None else _finite_problem(value)
        if why:
            why = _or_null(why, hints.get(f.name))
            raise UserError(f"config key {section}.{f.name} {why}; got {_flow(value)}",
                            hint=_hint(section, f, check))


# ---------------------------------------------------------------------------
# the resolved config
# ---------------------------------------------------------------------------

@dataclass
class ResolvedConfig:
    """A fully resolved, validated config."""

    data: dict[str, Any]  # full nested dict, every default filled in
    origins: dict[str, str]
    method: Any
    backbone: Any
    dataset: Any
    train: TrainConfig
    sources: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return self.data["seed"]

    @property
    def preset(self) -> str:
        return self.data["preset"]

    def name(self, section: str) -> str:
        return self.data[section]["name"]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)

    @property
    def hash(self) -> str:
        return config_hash(self.data)


def _strip_runtime(data: dict) -> dict:
    d = copy.deepcopy(data)
    for key in RUNTIME_KEYS:
        sec, _, sub = key.partition(".")
        if isinstance(d.get(sec), dict):
            d[sec].pop(sub, None)
    return d


def _section_class(section: str, sec: dict) -> type | None:
    if section == "train":
        return TrainConfig
    try:
        return plugin_config_class(section, sec.get("name"), dict(sec))
    except PluginError:  # a broken plugin: said, not taken for one this install lacks
        raise
    except Exception:  # a plugin this install lacks, or a broken record: nothing to drop
        return None


def identity_data(data: dict) -> dict:
    """The part of a resolved config that identifies a run.

    Runtime keys (:data:`RUNTIME_KEYS`) are removed, and so are options declared
    with ``option(..., hash_default=False)`` while they hold their default: a
    record written before such an option existed has the same identity as one
    written after with the default.  Compare two configs' settings on this.
    """
    d = _strip_runtime(data)
    for section in ("train", *PLUGIN_SECTIONS):
        sec = d.get(section)
        if not isinstance(sec, dict):
            continue
        cls = _section_class(section, sec)
        if cls is None:
            continue
        for f in dataclasses.fields(cls):
            check = option_check(f)
            if check is not None and not check.hash_default and f.name in sec \
                    and sec[f.name] == _field_default(f):
                del sec[f.name]
    return d


def default_only_options(section: str, sec: dict) -> frozenset[str]:
    """The options of a config section declared ``hash_default=False``: :func:`identity_data`
    drops them at their default, so where one config has such a key and the other lacks it,
    the two differ (the one that has it holds a non-default value)."""
    cls = _section_class(section, sec) if isinstance(sec, dict) else None
    if cls is None:
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if (check := option_check(f)) is not None and not check.hash_default)


def config_hash(data: dict) -> str:
    """A stable 10-hex-digit hash of everything that changes what a run computes."""
    blob = json.dumps(identity_data(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def finalize(layers: Layers, sources: list[str] | None = None) -> ResolvedConfig:
    data = layers.data
    seed = data.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed (from {layers.origin.get('seed', '?')}) must be an integer from 0 to "
                        f"{MAX_SEED} (2^32 - 1), got {quote(seed)}",
                        hint="the per-epoch shuffle seeds are derived from it and must stay within 64 bits")
    _spell_pair_alias(data["method"], layers.origin)
    objs = {}
    full = {"seed": seed, "preset": data.get("preset")}
    for section in PLUGIN_SECTIONS:
        name = data[section]["name"]
        cls = plugin_config_class(section, name, data[section])
        obj = build_dataclass(cls, data[section], section, layers.origin)
        objs[section] = obj
        full[section] = {"name": name, **dataclasses.asdict(obj)}
    train = build_dataclass(TrainConfig, data["train"], "train", layers.origin)
    full["train"] = dataclasses.asdict(train)
    return ResolvedConfig(full, dict(layers.origin), objs["method"], objs["backbone"],
                          objs["dataset"], train, list(sources or []))


def _spell_pair_alias(section: dict, origins: dict[str, str]) -> None:
    """A weighting on an architecture that a pair alias runs (baseline on cross_stitch) is spelt
    by the alias's name (``cross_stitch``), so one computation has one run identity."""
    from .architectures import ARCHITECTURE_KEY, DEFAULT_ARCHITECTURE, canonical_architecture, pair_alias

    if ARCHITECTURE_KEY not in section:
        return
    where = f"method.architecture (from {origins.get('method.architecture', '?')})"
    arch = section[ARCHITECTURE_KEY] = canonical_architecture(section[ARCHITECTURE_KEY], where)
    if arch == DEFAULT_ARCHITECTURE:
        return
    alias = pair_alias(section.get("name"), arch)
    if alias is not None:
        del section[ARCHITECTURE_KEY]
        section["name"] = alias


def resolve(*, preset: str | None = None, config_file: str | None = None,
            flags: list[tuple[str, Any, str]] | None = None,
            sets: list[str] | None = None) -> ResolvedConfig:
    """Resolve the layers into a validated config.

    ``flags`` are ``(dotted_key, value, flag_name)`` from explicit CLI options;
    ``sets`` are the raw ``--set`` strings.  ``preset`` (the ``--preset`` flag)
    wins over a ``preset`` key in the config file, which wins over the default.
    """
    file_data = load_yaml(config_file, "config file") if config_file else {}
    file_preset = file_data.get("preset")
    if file_preset is not None:  # checked even when --preset wins over it
        if not isinstance(file_preset, str):
            raise UserError(f"preset (from config file {config_file}) must be a preset name, got "
                            f"{quote(file_preset)}", hint=f"presets: {', '.join(available_presets())}")
        preset_path(file_preset)
    preset_name = preset or file_preset or DEFAULTS["preset"]
    layers = Layers()
    pdata = load_yaml(preset_path(preset_name), f"preset {preset_name!r}")
    layers.apply(pdata, f"preset {preset_name!r} ({preset_path(preset_name).name})")
    layers.set("preset", preset_name, "--preset" if preset else
               (f"config file {config_file}" if file_data.get("preset") else "defaults"))
    sources = [f"preset:{preset_name}"]
    if file_data:
        file_data = {k: v for k, v in file_data.items() if k != "preset"}
        layers.apply(file_data, f"config file {config_file}")
        sources.append(f"file:{config_file}")
    for key, value, flag in flags or []:
        if value is not None:
            layers.set(key, value, flag)
    for item in sets or []:
        key, value = parse_set(item)
        if key == "preset":
            # the preset is the lowest layer, read before any other: set afterwards, only the name
            # would change, the values staying the preset's that was read
            raise UserError(f"--set {quote(item)}: the preset cannot be chosen with --set (it would rename "
                            f"the config's preset and keep the values of preset {preset_name!r})",
                            hint=f"use --preset {value}" if isinstance(value, str) else
                            f"use --preset NAME; presets: {', '.join(available_presets())}")
        layers.set(key, value, f"--set {item}")
    return finalize(layers, sources)


def from_dict(data: dict) -> ResolvedConfig:
    """Rebuild a resolved config from its dumped form (a record's or checkpoint's)."""
    layers = Layers()
    layers.apply({k: v for k, v in data.items()}, "record")
    return finalize(layers)
