"""The standard preset (issue 23): it is the design study's chosen candidate, nothing else."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtlbench.config import config_hash, identity_data, resolve
from mtlbench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CANDIDATE = ROOT / "docs" / "design" / "p_m8_v2.yaml"


def _flags(method="baseline", backbone=None):
    out = [("method.name", method, "--method")]
    if backbone:
        out.append(("backbone.name", backbone, "--backbone"))
    return out


@pytest.mark.parametrize("method", ["baseline", "stl", "okd"])
def test_standard_is_the_studied_candidate_but_for_the_preset_name(method):
    # the design records (results/design) were trained as `--config p_m8_v2.yaml` over quick; the
    # preset must compute the same thing, so only the preset's name may tell them apart
    std = identity_data(resolve(preset="standard", flags=_flags(method)).data)
    cand = identity_data(resolve(preset="quick", config_file=str(CANDIDATE), flags=_flags(method)).data)
    assert std.pop("preset") == "standard" and cand.pop("preset") == "quick"
    assert std == cand


def test_standard_is_a_new_identity_and_asks_for_v2_data_and_the_pretrained_encoder():
    std = resolve(preset="standard", flags=_flags())
    quick = resolve(preset="quick", flags=_flags())
    assert config_hash(std.data) != config_hash(quick.data)
    assert std.dataset.generator == 2 and std.dataset.n_train == 960 and std.dataset.n_val == 256
    assert std.backbone.pretraining == "simmim_nyuv2_v2"
    assert (std.train.epochs, std.train.batch_size, std.train.eval_every) == (16, 8, 4)


def test_a_backbone_without_the_option_drops_the_preset_pretraining_quietly():
    cfg = resolve(preset="standard", flags=_flags(backbone="deeplabv3"))
    assert "pretraining" not in cfg.data["backbone"]
    assert cfg.dataset.generator == 2


def test_a_run_without_the_built_encoder_says_how_to_build_it(tmp_path, monkeypatch):
    from mtlbench.pretrain import encoder_file

    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path))
    with pytest.raises(UserError) as exc:
        encoder_file(resolve(preset="standard", flags=_flags()).backbone.pretraining)
    assert "has not been built" in exc.value.message
    assert "mtlbench pretrain --recipe simmim_nyuv2_v2" in exc.value.hint
