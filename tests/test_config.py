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
