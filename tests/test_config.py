from __future__ import annotations

import pytest
import yaml

from mtlbench.config import TrainConfig, config_hash, parse_set, resolve
from mtlbench.errors import UserError


def test_defaults_then_preset():
    cfg = resolve()
    assert cfg.preset == "quick"
    assert cfg.name("method") == "baseline" and cfg.name("backbone") == "vit_tiny"
    # the quick preset overrides the built-in default epochs (10)
    assert TrainConfig().epochs == 10
    assert cfg.train.epochs == yaml.safe_load(open(
        __import__("mtlbench.config", fromlist=["x"]).PRESET_DIR / "quick.yaml"))["train"]["epochs"]
    assert cfg.origins["train.epochs"].startswith("preset 'quick'")


def test_layer_order_file_then_flags_then_set(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  epochs: 3\n  batch_size: 5\nseed: 4\n")
    cfg = resolve(config_file=str(f), flags=[("train.epochs", 7, "--epochs")],
                  sets=["train.batch_size=2", "train.lr=3e-4"])
    assert cfg.train.epochs == 7  # flag beats file
    assert cfg.train.batch_size == 2  # --set beats file
    assert cfg.seed == 4  # file beats defaults
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.origins["train.epochs"] == "--epochs"
    assert cfg.origins["seed"] == f"config file {f}"


def test_set_values_are_yaml_scalars():
    assert parse_set("a.b=3") == ("a.b", 3)
    assert parse_set("a.b=true") == ("a.b", True)
    assert parse_set("a.b=[1,2]") == ("a.b", [1, 2])
    assert parse_set("a.b=null") == ("a.b", None)
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_set("a.b")


def test_unknown_key_names_key_origin_and_valid_keys(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  epoch: 3\n")
    with pytest.raises(UserError) as e:
        resolve(config_file=str(f))
    msg = str(e.value)
    assert "train.epoch" in msg and str(f) in msg and "epochs" in msg and "batch_size" in msg


def test_unknown_top_level_key():
    with pytest.raises(UserError) as e:
        resolve(sets=["trian.epochs=3"])
    assert "trian.epochs" in str(e.value) and "--set trian.epochs=3" in str(e.value)
    assert "train" in str(e.value)


def test_wrong_type_names_key_and_flag():
    with pytest.raises(UserError) as e:
        resolve(sets=["train.epochs=three"])
    msg = str(e.value)
    assert "train.epochs" in msg and "int" in msg and "--set train.epochs=three" in msg
    with pytest.raises(UserError, match="bool"):
        resolve(sets=["backbone.pretrained=3"])


def test_plugin_section_validated_against_plugin_config():
    with pytest.raises(UserError) as e:
        resolve(sets=["backbone.no_such_option=1"])
    assert "backbone.no_such_option" in str(e.value) and "pretrained_file" in str(e.value)


def test_unknown_plugin_name_is_an_error_with_origin():
    with pytest.raises(UserError) as e:
        resolve(flags=[("method.name", "basline", "--method")])
    msg = str(e.value)
    assert "--method" in msg and "did you mean 'baseline'" in msg


def test_switching_plugin_drops_lower_layer_keys_of_the_old_plugin():
    # the quick preset sets synthetic-only keys (n_train, ...); choosing another dataset drops them
    cfg = resolve(flags=[("dataset.name", "nyuv2", "--dataset"), ("dataset.root", "/x", "--data-root")])
    assert cfg.name("dataset") == "nyuv2"
    assert "n_train" not in cfg.data["dataset"]
    assert cfg.data["dataset"]["image_size"] == [96, 128]  # shared key kept


def test_int_accepted_for_float_and_alias_canonicalised():
    cfg = resolve(flags=[("method.name", "ew", "--method")], sets=["train.lr=1"])
    assert cfg.name("method") == "baseline"
    assert isinstance(cfg.train.lr, float)


def test_hash_is_stable_and_ignores_runtime_keys():
    a = resolve()
    b = resolve(flags=[("train.device", "cpu", "--device")])
    c = resolve(sets=["train.epochs=2"])
    assert a.hash == b.hash == config_hash(a.data)
    assert a.hash != c.hash
    assert len(a.hash) == 10


def test_yaml_dump_round_trips(tmp_path):
    from mtlbench.config import from_dict

    cfg = resolve(sets=["train.epochs=2", "seed=3"])
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.data == cfg.data and again.hash == cfg.hash


def test_missing_config_file_and_bad_preset():
    with pytest.raises(UserError, match="does not exist"):
        resolve(config_file="/nonexistent/exp.yaml")
    with pytest.raises(UserError, match="unknown preset 'fast'"):
        resolve(preset="fast")


# ---------------------------------------------------------------------------
# ranges and choices declared with option()
# ---------------------------------------------------------------------------

def test_option_declares_range_and_the_message_names_key_origin_range_and_example():
    with pytest.raises(UserError) as e:
        resolve(sets=["train.lr=-1"])
    msg = str(e.value)
    assert "train.lr" in msg and "--set train.lr=-1" in msg and "> 0" in msg
    assert "hint: e.g. --set train.lr=0.001" in msg  # the default is the example
    with pytest.raises(UserError) as e:
        resolve(flags=[("train.epochs", 0, "--epochs")])
    assert "train.epochs must be >= 1; got 0 (from --epochs)" in str(e.value)


def test_option_choices_fail_at_resolution_with_the_choices(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("train:\n  report: bogus\n")
    with pytest.raises(UserError) as e:
        resolve(config_file=str(f))
    msg = str(e.value)
    assert "train.report" in msg and "last, best_train_loss" in msg and str(f) in msg
    assert "--set train.report=last" in msg


def test_option_bounds_open_closed_and_optional():
    assert resolve(sets=["train.grad_clip=null"]).train.grad_clip is None  # None: off
    assert resolve(sets=["train.grad_clip=0.5"]).train.grad_clip == 0.5
    assert resolve(sets=["train.log_every=0"]).train.log_every == 0  # ge=0 includes 0
    for bad in ("train.pct_start=0", "train.pct_start=1", "train.grad_clip=0", "train.threads=0"):
        with pytest.raises(UserError, match=bad.partition("=")[0]):
            resolve(sets=[bad])
    assert resolve(sets=["train.pct_start=0.999"]).train.pct_start == 0.999


def test_floats_must_be_finite_even_without_a_declared_range():
    with pytest.raises(UserError, match="finite"):
        resolve(sets=["train.lr=.inf"])
    with pytest.raises(UserError, match="method.init_log_var.*finite"):
        resolve(flags=[("method.name", "uw", "--method")], sets=["method.init_log_var=.nan"])


def test_option_on_a_plugin_config_and_lists():
    from dataclasses import dataclass

    from mtlbench.config import Check, build_dataclass, check_options, option, option_check

    @dataclass
    class Cfg:
        T: float = option(2.0, gt=0)
        rates: list[int] = option([1, 2], ge=1, min_items=1)
        form: str = option("a", choices=("a", "b"))
        s_lr: float | None = option(None, gt=0, example=0.025)

    a, b = Cfg(), Cfg()
    a.rates.append(3)
    assert b.rates == [1, 2]  # the list default is copied per instance
    assert build_dataclass(Cfg, {"T": 1, "rates": [4]}, "method", {}).T == 1.0
    with pytest.raises(UserError) as e:
        build_dataclass(Cfg, {"rates": [2, 0]}, "method", {"method.rates": "--set method.rates=[2,0]"})
    assert "method.rates element 1 (0) must be >= 1" in str(e.value) and "--set method.rates=[2,0]" in str(e.value)
    with pytest.raises(UserError, match="at least 1 element"):
        build_dataclass(Cfg, {"rates": []}, "method", {})
    with pytest.raises(UserError) as e:
        build_dataclass(Cfg, {"s_lr": 0}, "method", {})
    assert "e.g. --set method.s_lr=0.025" in str(e.value)
    with pytest.raises(UserError, match="one of: a, b"):
        build_dataclass(Cfg, {"form": "c"}, "method", {})
    bad = Cfg(T=-1.0)
    with pytest.raises(UserError, match="method.T"):
        check_options(bad, "method")
    assert isinstance(option_check(__import__("dataclasses").fields(Cfg)[0]), Check)
    assert option_check(__import__("dataclasses").fields(Cfg)[0]).describe() == "a positive number (> 0)"


def test_validate_still_runs_after_the_option_checks():
    from dataclasses import dataclass

    from mtlbench.config import build_dataclass, option

    @dataclass
    class Cfg:
        lo: int = option(0, ge=0)
        hi: int = option(1, ge=0)

        def validate(self):
            if self.lo > self.hi:
                raise ValueError("lo must not exceed hi")

    with pytest.raises(UserError, match="lo must not exceed hi"):
        build_dataclass(Cfg, {"lo": 3}, "method", {})


def test_new_option_at_its_default_keeps_old_hashes():
    # train.optimizer is declared hash_default=False: a record written before it existed
    # (no such key) has the hash of a config that holds the default.
    cfg = resolve()
    assert cfg.train.optimizer == "adamw" and cfg.data["train"]["optimizer"] == "adamw"
    old = {**cfg.data, "train": {k: v for k, v in cfg.data["train"].items() if k != "optimizer"}}
    assert config_hash(old) == cfg.hash
    assert resolve(sets=["train.optimizer=adam"]).hash != cfg.hash
    with pytest.raises(UserError, match="adamw, adam"):
        resolve(sets=["train.optimizer=sgd"])


# ---------------------------------------------------------------------------
# nothing dropped in silence; files that are not config files
# ---------------------------------------------------------------------------

def test_method_flag_discarding_file_options_is_an_error(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("method:\n  name: okd\n  T: 0.05\n  afd: softmax\n")
    with pytest.raises(UserError) as e:
        resolve(config_file=str(f), flags=[("method.name", "baseline", "--method")])
    msg = str(e.value)
    assert "--method" in msg and str(f) in msg and "method.T" in msg and "method.afd" in msg
    assert f"remove them from {f}" in msg
    # a method with the same option keeps it
    g = tmp_path / "dwa.yaml"
    g.write_text("method:\n  name: okd\n  T: 0.5\n")
    assert resolve(config_file=str(g), flags=[("method.name", "dwa", "--method")]).method.T == 0.5
    # without name the same T is an error too (baseline has no T)
    h = tmp_path / "noname.yaml"
    h.write_text("method:\n  T: 0.05\n")
    with pytest.raises(UserError, match="method.T"):
        resolve(config_file=str(h))


def test_set_then_switch_is_an_error_but_preset_keys_go_quietly():
    with pytest.raises(UserError) as e:
        resolve(flags=[("method.name", "okd", "--method")], sets=["method.T=0.05", "method.name=baseline"])
    assert "method.T (from --set method.T=0.05)" in str(e.value)
    # the smoke preset's synthetic-only keys are dropped when --dataset switches, as before
    cfg = resolve(preset="smoke", flags=[("dataset.name", "nyuv2", "--dataset"), ("dataset.root", "/x", "--data-root")])
    assert "n_train" not in cfg.data["dataset"]


def test_set_a_whole_section_as_a_mapping():
    cfg = resolve(sets=["method={name: okd, T: 0.5}"])
    assert cfg.name("method") == "okd" and cfg.method.T == 0.5
    with pytest.raises(UserError, match="must be a mapping"):
        resolve(sets=["train=3"])


def test_config_path_that_is_a_directory_binary_or_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        resolve(config_file=str(tmp_path))
    b = tmp_path / "exp.yaml"
    b.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(UserError, match="not a text file"):
        resolve(config_file=str(b))
    b.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        resolve(config_file=str(b))
    b.write_text("")
    assert resolve(config_file=str(b)).preset == "quick"  # an empty file changes nothing


def test_preset_in_a_file_is_checked_even_when_the_flag_wins(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("preset: 5\n")
    with pytest.raises(UserError, match="preset"):
        resolve(preset="smoke", config_file=str(f))
    f.write_text("preset: fast\n")
    with pytest.raises(UserError, match="unknown preset 'fast'"):
        resolve(preset="smoke", config_file=str(f))


@pytest.mark.parametrize("preset", ["quick", "smoke", "paper", "standard"])
def test_every_preset_resolves_within_the_declared_ranges(preset):
    from mtlbench.config import check_options

    cfg = resolve(preset=preset)
    for section in ("train", "method", "backbone", "dataset"):
        check_options(getattr(cfg, section), section)


# ---------------------------------------------------------------------------
# every method's options: ranges and choices declared with option(), validate()
# only for rules that tie options together
# ---------------------------------------------------------------------------

#: (method, option) whose allowed values depend on another option: validate() may refuse
#: a value of it on its own (okd: a teacher_run needs teachers=pretrained)
CROSS_OPTION_RULES = {("okd", "teacher_run")}
#: str options that are free text (a record's path), not one of a set of choices
FREE_TEXT = {("okd", "teacher_run"), ("kd_mtl", "teacher_run")}


def _probes(tp):
    """Values of the annotation ``tp`` that span the ranges an option could declare."""
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [v for arg in typing.get_args(tp) for v in _probes(arg)]
    if tp is type(None):
        return [None]
    if tp is bool:
        return [True, False]
    if tp is int:
        return [-10**6, -2, -1, 0, 1, 2, 3, 10**6]
    if tp is float:
        return [-1e9, -1.0, -1e-9, 0.0, 1e-9, 0.25, 0.5, 1.0, 1.5, 2.0, 1e9]
    if tp is str:
        return ["bogus", ""]
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [[], *([v] for v in _probes(inner)), [*_probes(inner)[-2:]]]
    if origin is dict:
        key, inner = typing.get_args(tp)
        return [{}, *({"semseg": v} for v in _probes(inner))]
    raise AssertionError(f"no probes for {tp}: extend _probes")


def _method_options():
    import dataclasses
    import typing

    from mtlbench.registry import METHODS

    for name in METHODS.names():
        cls = METHODS.get(name).Config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield name, cls, f, hints[f.name]


def test_no_method_validate_refuses_a_value_of_one_option_alone():
    """A range or a set of choices of one option belongs in option(); validate() ties options together.

    Each option of each registered method is set, alone, to values across its type's range:
    a refusal by validate() (the resolver's "invalid method config") is a rule option() could
    have declared, unless the option is listed in CROSS_OPTION_RULES.
    """
    from mtlbench.config import build_dataclass

    found = []
    for name, cls, f, tp in _method_options():
        if (name, f.name) in CROSS_OPTION_RULES:
            continue
        for v in _probes(tp):
            try:
                build_dataclass(cls, {f.name: v}, "method", {})
            except UserError as exc:
                if str(exc).startswith("invalid method config"):
                    found.append(f"{name}.{f.name}={v!r}: {exc}")
    assert not found, "validate() checks single options; declare them with option():\n" + "\n".join(found)


def test_every_out_of_range_value_of_a_method_option_names_key_value_and_range():
    from mtlbench.config import _flow, build_dataclass, option_check

    checked = 0
    for name, cls, f, tp in _method_options():
        check = option_check(f)
        for v in _probes(tp):
            origins = {f"method.{f.name}": f"--set method.{f.name}=..."}
            try:
                build_dataclass(cls, {f.name: v}, "method", origins)
            except UserError as exc:
                msg = str(exc)
                if (name, f.name) in CROSS_OPTION_RULES and msg.startswith("invalid method config"):
                    continue
                assert f"method.{f.name}" in msg, (name, v, msg)
                assert "(from --set method." in msg, (name, v, msg)
                if "must be of type" not in msg:  # a value of the right type out of its range
                    assert check is not None, f"{name}.{f.name}: refused {v!r} without an option() range"
                    assert f"got {_flow(v)}" in msg, (name, v, msg)
                    if not isinstance(v, (list, dict)):
                        assert check.describe() in msg, (name, v, msg)
                    assert "hint: e.g. --set method." in msg, (name, v, msg)
                    checked += 1
                continue
            # accepted: then it is within the declared range
            if check is not None:
                assert check.problem(v) is None, (name, f.name, v)
    assert checked > 40  # the walk reached the declared ranges


def test_every_method_option_declares_its_values():
    """Numbers and strings of a method's Config are declared with option() (a str with its choices)."""
    from mtlbench.config import option_check

    undeclared = []
    for name, cls, f, tp in _method_options():
        if tp is bool or (name, f.name) in FREE_TEXT:
            continue
        check = option_check(f)
        texts = "str" in str(tp) and "list" not in str(tp) and "dict" not in str(tp)
        if check is None or (texts and check.choices is None):
            undeclared.append(f"{name}.{f.name}: {tp}")
    assert not undeclared, "declare these with option(...):\n" + "\n".join(undeclared)


def test_a_nullable_option_says_null_is_allowed():
    from mtlbench.config import build_dataclass
    from mtlbench.registry import METHODS

    with pytest.raises(UserError) as e:
        build_dataclass(METHODS.get("okd").Config, {"afd_features": "rawish"}, "method", {})
    assert "method.afd_features must be one of: raw, normalized, or null; got rawish" in str(e.value)
    with pytest.raises(UserError) as e:
        build_dataclass(METHODS.get("okd").Config, {"stl_train_fraction": 0}, "method", {})
    assert "method.stl_train_fraction must be in (0, 1], or null; got 0" in str(e.value)
    assert "e.g. --set method.stl_train_fraction=1.0" in str(e.value)
