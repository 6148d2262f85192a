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
layers that the new plugin does not know are dropped, not reported.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"

#: sections whose ``name`` picks a plugin, and the registry kind of each
PLUGIN_SECTIONS = ("method", "backbone", "dataset")
TOP_LEVEL_KEYS = ("seed", "preset", "method", "backbone", "dataset", "train")

#: keys that do not change what a run computes; left out of the config hash so a
#: run keeps its identity across machines (device, worker count, data location)
RUNTIME_KEYS = ("train.device", "dataset.num_workers", "dataset.root", "train.progress")


@dataclass
class TrainConfig:
    """The trainer's options (the paper §4.0.1: AdamW, OneCycleLR, lr 1e-3)."""

    epochs: int = 10
    batch_size: int = 8  # the paper does not state its batch size
    lr: float = 1e-3  # OneCycleLR peak learning rate (the paper's "initial lr")
    weight_decay: float = 0.01  # AdamW's default
    scheduler: str = "onecycle"  # onecycle | constant
    pct_start: float = 0.3  # OneCycleLR warm-up share of the steps
    eval_every: int = 1  # evaluate on val every N epochs (and always after the last)
    report: str = "last"  # which epoch's metrics the record reports: last | best_train_loss
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (the backbone's choice for the device) | bf16 | fp32
    channels_last: bool | None = None  # None: the backbone's choice for the device
    max_steps_per_epoch: int | None = None  # cap the steps of an epoch (smoke tests)
    log_every: int = 1  # record per-step logs (losses, weights) every N steps
    grad_clip: float | None = None  # clip the global gradient norm (off in the paper)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: str = "auto"  # auto (rich bars on a terminal) | plain | none


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "preset": "quick",
    "method": {"name": "baseline"},
    "backbone": {"name": "vit_tiny"},
    "dataset": {"name": "synthetic"},
    "train": {},
}


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


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def _registry(kind: str):
    from .registry import BACKBONES, DATASETS, METHODS

    return {"method": METHODS, "backbone": BACKBONES, "dataset": DATASETS}[kind]


def plugin_config_class(kind: str, name: str) -> type:
    obj = _registry(kind).get(name)
    cfg_cls = getattr(obj, "Config", None)
    if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
        raise UserError(f"{kind} plugin {name!r} has no Config dataclass",
                        hint="a plugin class must define `Config = SomeDataclass`")
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
    except yaml.YAMLError as exc:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return key, value


def load_yaml(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {str(p)!r} does not exist", hint="check the path")
    try:
        data = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {str(p)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{what} {str(p)!r} must hold a mapping of config keys at the top level")
    return data


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(known)}",
                        hint="pass --preset with one of those names")
    return p


def available_presets() -> list[str]:
    return sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))


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
                f"unknown config key {key!r} (from {origin}); valid top-level keys: "
                f"{', '.join(TOP_LEVEL_KEYS)}")
        if len(parts) == 1:
            if top in (*PLUGIN_SECTIONS, "train"):
                if isinstance(value, str) and top in PLUGIN_SECTIONS:
                    return self.set(f"{top}.name", value, origin)
                raise UserError(f"config key {key!r} (from {origin}) must be a mapping of "
                                f"{top} options, got {value!r}")
            self.data[top] = value
            self.origin[top] = origin
            return
        if len(parts) > 2:
            raise UserError(f"config key {key!r} (from {origin}) is nested too deeply; "
                            f"options live one level below {top!r} (e.g. {top}.{parts[1]})")
        sub = parts[1]
        section = self.data[top]
        if sub == "name" and top in PLUGIN_SECTIONS:
            if not isinstance(value, str):
                raise UserError(f"{key} (from {origin}) must be a string, got {value!r}")
            try:
                new = _registry(top).canonical(value)
            except UserError as exc:
                raise UserError(f"{key} (from {origin}): {exc}") from None
            if new != section.get("name"):
                fields = {f.name for f in dataclasses.fields(plugin_config_class(top, new))}
                for k in list(section):
                    if k != "name" and k not in fields:
                        del section[k]
                        self.origin.pop(f"{top}.{k}", None)
            value = new
        section[sub] = value
        self.origin[key] = origin


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------

def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check ``value`` against a dataclass field annotation; return (ok, coerced)."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
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
        return isinstance(value, dict), value
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


def build_dataclass(cls: type, values: dict, section: str, origins: dict[str, str]):
    """Validate ``values`` against dataclass ``cls`` and instantiate it."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key == "name":
            continue
        where = origins.get(f"{section}.{key}", "?")
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, list(fields), n=2)
            raise UserError(
                f"unknown config key {section}.{key} (from {where})"
                + (f"; did you mean {', '.join(section + '.' + c for c in close)}?" if close else "")
                + f"\n  valid keys of {section}: {', '.join(sorted(fields)) or '(none)'}")
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise UserError(
                f"config key {section}.{key} (from {where}) must be of type "
                f"{_type_name(hints[key])}, got {value!r}")
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


def config_hash(data: dict) -> str:
    """A stable 10-hex-digit hash of everything that changes what a run computes."""
    blob = json.dumps(_strip_runtime(data), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def finalize(layers: Layers, sources: list[str] | None = None) -> ResolvedConfig:
    data = layers.data
    seed = data.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed (from {layers.origin.get('seed', '?')}) must be a non-negative "
                        f"integer, got {seed!r}")
    objs = {}
    full = {"seed": seed, "preset": data.get("preset")}
    for section in PLUGIN_SECTIONS:
        name = data[section]["name"]
        cls = plugin_config_class(section, name)
        obj = build_dataclass(cls, data[section], section, layers.origin)
        objs[section] = obj
        full[section] = {"name": name, **dataclasses.asdict(obj)}
    train = build_dataclass(TrainConfig, data["train"], "train", layers.origin)
    full["train"] = dataclasses.asdict(train)
    return ResolvedConfig(full, dict(layers.origin), objs["method"], objs["backbone"],
                          objs["dataset"], train, list(sources or []))


def resolve(*, preset: str | None = None, config_file: str | None = None,
            flags: list[tuple[str, Any, str]] | None = None,
            sets: list[str] | None = None) -> ResolvedConfig:
    """Resolve the layers into a validated config.

    ``flags`` are ``(dotted_key, value, flag_name)`` from explicit CLI options;
    ``sets`` are the raw ``--set`` strings.  ``preset`` (the ``--preset`` flag)
    wins over a ``preset`` key in the config file, which wins over the default.
    """
    file_data = load_yaml(config_file, "config file") if config_file else {}
    preset_name = preset or file_data.get("preset") or DEFAULTS["preset"]
    if not isinstance(preset_name, str):
        raise UserError(f"preset (from config file {config_file}) must be a preset name")
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
        layers.set(key, value, f"--set {item}")
    return finalize(layers, sources)


def from_dict(data: dict) -> ResolvedConfig:
    """Rebuild a resolved config from its dumped form (a record's or checkpoint's)."""
    layers = Layers()
    layers.apply({k: v for k, v in data.items()}, "record")
    return finalize(layers)
