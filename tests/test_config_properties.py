"""Property tests of config resolution (hypothesis): any value of any key resolves or is a UserError.

Values are drawn from each option's own declaration (its type and its
:func:`mtlbench.config.option` range or choices), so a new option is covered
without touching this file.  Valid values must resolve to themselves; values
of the wrong type or out of range must be a ``UserError`` that names the key;
nothing else may ever be raised.  No model or data is built.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlbench.config import TrainConfig, check_options, option_check, plugin_config_class, resolve
from mtlbench.errors import UserError
from mtlbench.registry import BACKBONES, DATASETS, METHODS

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: fewer per plugin option: there are some sixty of them
PLUGIN_FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TRAIN_HINTS = typing.get_type_hints(TrainConfig)

#: (section, plugin name, option) of plugin options declared with option(): every method's, and some
#: of the backbones'
PLUGIN_KEYS = [("method", name, f.name) for name in METHODS.names()
               for f in dataclasses.fields(METHODS.get(name).Config) if option_check(f) is not None] + [
    ("backbone", "vit_tiny", "head_dropout"), ("backbone", "vit_tiny", "head_layers"),
    ("backbone", "deeplabv3", "aspp_rates"), ("backbone", "deeplabv3", "head_dropout")]


def as_set_value(v) -> str:
    """``v`` written as the VALUE of ``--set KEY=VALUE`` (YAML flow style, one line)."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _allows_none(tp) -> bool:
    return type(None) in typing.get_args(tp)


def _base_type(tp):
    """``X`` of ``X | None``; ``tp`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _numbers(tp, check):
    lo = check.ge if check.ge is not None else check.gt
    hi = check.le if check.le is not None else check.lt
    if tp is int:
        lo_i = None if lo is None else (math.ceil(lo) if check.gt is None else math.floor(lo) + 1)
        hi_i = None if hi is None else (math.floor(hi) if check.lt is None else math.ceil(hi) - 1)
        return st.integers(min_value=lo_i if lo_i is not None else -10**6,
                           max_value=hi_i if hi_i is not None else (lo_i or 0) + 10**6)
    return st.floats(min_value=lo, max_value=hi, exclude_min=check.gt is not None,
                     exclude_max=check.lt is not None, allow_nan=False, allow_infinity=False,
                     width=64).filter(lambda x: abs(x) < 1e15)


def valid_values(tp, check):
    """Values of type ``tp`` that ``check`` accepts."""
    strategies = []
    if _allows_none(tp):
        strategies.append(st.none())
    base = _base_type(tp)
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # e.g. int | list[int]
        return st.one_of([*strategies, *(valid_values(arg, check) for arg in typing.get_args(base))])
    if check is not None and check.choices is not None:
        strategies.append(st.sampled_from(check.choices))
    elif base is bool:
        strategies.append(st.booleans())
    elif base in (int, float):
        strategies.append(_numbers(base, check) if check is not None else
                          st.integers(-10**6, 10**6) if base is int else
                          st.floats(allow_nan=False, allow_infinity=False, width=64))
    elif typing.get_origin(base) is list:
        (inner,) = typing.get_args(base)
        strategies.append(st.lists(_numbers(inner, check), min_size=check.min_items or 0, max_size=5))
    elif typing.get_origin(base) is dict:
        _, inner = typing.get_args(base)
        strategies.append(st.dictionaries(st.sampled_from(["semseg", "depth", "normal"]),
                                          _numbers(inner, check), max_size=3))
    elif base is str:
        strategies.append(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8))
    return st.one_of(strategies)


#: anything a user might type after ``--set key=``
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**9, 10**9),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.text(max_size=12), st.lists(st.integers(-5, 50), max_size=4),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _resolve_set(key: str, value) -> object:
    return resolve(preset="smoke", sets=[f"{key}={as_set_value(value)}"])


def _in_section(cfg, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _equal(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-12, abs=0)
    return a == b


# train.loggers is a list of choices, which valid_values does not draw; tests/test_trackers.py checks it
@pytest.mark.parametrize("name", sorted(set(TRAIN_FIELDS) - {"loggers"}))
@FAST
@given(data=st.data())
def test_valid_train_values_resolve_to_themselves(name, data):
    f = TRAIN_FIELDS[name]
    value = data.draw(valid_values(TRAIN_HINTS[name], option_check(f)), label=name)
    cfg = _resolve_set(f"train.{name}", value)
    assert _equal(getattr(cfg.train, name), value)
    assert cfg.origins[f"train.{name}"].startswith("--set train.")


@pytest.mark.parametrize("name", sorted(TRAIN_FIELDS))
@FAST
@given(value=ANY_VALUE)
def test_any_train_value_resolves_within_its_declaration_or_is_a_user_error(name, value):
    f = TRAIN_FIELDS[name]
    check = option_check(f)
    try:
        cfg = _resolve_set(f"train.{name}", value)
    except UserError as exc:
        assert f"train.{name}" in str(exc) or "--set" in str(exc)
        return
    got = getattr(cfg.train, name)
    if check is not None:
        assert check.problem(got) is None, (name, got)
    if isinstance(got, float):
        assert math.isfinite(got)


@pytest.mark.parametrize("section,plugin,key", PLUGIN_KEYS, ids=[f"{p}.{k}" for _, p, k in PLUGIN_KEYS])
@PLUGIN_FAST
@given(data=st.data())
def test_plugin_options_valid_and_invalid(section, plugin, key, data):
    cls = plugin_config_class(section, plugin)
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    check = option_check(f)
    assert check is not None, f"{plugin}.{key} should declare its range with option()"
    flags = [(f"{section}.name", plugin, f"--{section}")]
    good = data.draw(valid_values(typing.get_type_hints(cls)[key], check), label="valid")
    cfg = resolve(preset="smoke", flags=flags, sets=[f"{section}.{key}={as_set_value(good)}"])
    assert _equal(getattr(getattr(cfg, section), key), good)
    anything = data.draw(ANY_VALUE, label="any")
    try:
        cfg = resolve(preset="smoke", flags=flags, sets=[f"{section}.{key}={as_set_value(anything)}"])
    except UserError as exc:
        assert f"{section}.{key}" in str(exc)
        return
    assert check.problem(getattr(getattr(cfg, section), key)) is None


@FAST
@given(key=st.text(max_size=20), raw=st.text(max_size=20))
def test_any_set_string_is_parsed_or_a_user_error(key, raw):
    try:
        resolve(preset="smoke", sets=[f"{key}={raw}"])
    except UserError:
        pass


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-100, 100), st.floats(width=32),
                     st.text(max_size=6))
_yaml_trees = st.recursive(_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(
        ["train", "method", "backbone", "dataset", "seed", "preset", "name", "epochs", "lr", "T", "x"]),
        kids, max_size=3)), max_leaves=8)


@FAST
@given(tree=_yaml_trees)
def test_any_yaml_config_file_resolves_or_is_a_user_error(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    try:
        resolve(config_file=str(path))
    except UserError as exc:
        assert str(path) in str(exc) or "config key" in str(exc) or "preset" in str(exc), str(exc)


@FAST
@given(blob=st.binary(max_size=64))
def test_any_bytes_as_a_config_file_resolve_or_are_a_user_error(blob, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "exp.yaml"
    path.write_bytes(blob)
    try:
        resolve(config_file=str(path))
    except UserError:
        pass


@pytest.mark.parametrize("kind,registry", [("method", METHODS), ("backbone", BACKBONES), ("dataset", DATASETS)])
def test_every_plugin_default_passes_its_own_declaration(kind, registry):
    for name in registry.names():
        cls = plugin_config_class(kind, name)
        check_options(cls(), kind)  # raises UserError if a default breaks its own range
    check_options(TrainConfig(), "train")


def test_every_train_option_declares_its_range_or_choices():
    undeclared = {n for n, f in TRAIN_FIELDS.items() if option_check(f) is None}
    # device: a torch device string, checked when the trainer builds (it depends on the machine);
    # channels_last (a bool or null) and compile (a bool): the type says it in full.
    assert undeclared == {"device", "channels_last", "compile"}
