"""Encoder pretraining (mtlbench pretrain): deterministic, cached by everything that made it,
and carried into the records of the runs that start from it."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from mtlbench import pretrain as P
from mtlbench.cli import main
from mtlbench.errors import UserError

from conftest import shrink_argv

pytestmark = pytest.mark.usefixtures("one_thread")

#: the shrunk ViT of the contract tests (conftest.shrink_sets), on 6 generated 32x48 images
TINY = {"backbone": {"name": "vit_tiny", "depth": 2, "embed_dim": 64, "num_heads": 2},
        "corpus": {"variant": "nyuv2", "generator": 2, "n_images": 6, "height": 32, "width": 48, "seed": 1000},
        "objective": {"mask_ratio": 0.5},
        "train": {"epochs": 2, "batch_size": 4, "lr": 0.001, "weight_decay": 0.05, "warmup_epochs": 1},
        "seed": 3, "threads": 1}


@pytest.fixture
def recipes(tmp_path, monkeypatch):
    """A recipe directory holding ``tiny`` (and whatever a test writes), and a cache of its own."""
    d = tmp_path / "recipes"
    d.mkdir()
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.setattr(P, "RECIPE_DIR", d)
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path / "cache"))
    return d


def test_build_is_deterministic_and_cached(recipes, tmp_path, monkeypatch):
    path, rec = P.build("tiny", out=tmp_path / "res")
    assert path.is_file() and rec["key"] == P.recipe_key(P.load_recipe("tiny"))
    assert len(rec["loss_per_epoch"]) == 2 and all(v > 0 for v in rec["loss_per_epoch"])
    assert rec["sha256"] == P._sha256(path) and rec["spec"]["corpus"]["seed"] == 1000
    copied = json.loads((tmp_path / "res" / "pretrained" / f"tiny-{rec['key']}.json").read_text())
    assert copied == rec
    # cached: a second build reads the artefact (same file, untouched)
    mtime = os.stat(path).st_mtime_ns
    path2, rec2 = P.build("tiny", out=None)
    assert path2 == path and rec2 == rec and os.stat(path).st_mtime_ns == mtime
    # deterministic: built again from nothing in another cache, the weights are the same bytes' worth
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path / "cache2"))
    path3, rec3 = P.build("tiny", out=None)
    assert path3 != path and rec3["key"] == rec["key"]
    a, b = torch.load(path, weights_only=True), torch.load(path3, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec3["loss_per_epoch"] == rec["loss_per_epoch"]


@pytest.mark.parametrize("change", [("objective", "mask_ratio", 0.6), ("corpus", "seed", 1001),
                                    ("corpus", "generator", 1), ("train", "lr", 0.002), ("seed", None, 4),
                                    ("backbone", "depth", 3), ("threads", None, 2)])
def test_every_option_is_in_the_key(change):
    section, key, value = change
    r = P.check_recipe(json.loads(json.dumps(TINY)), "t")
    changed = json.loads(json.dumps(r))
    if key is None:
        changed[section] = value
    else:
        changed[section][key] = value
    assert P.recipe_key(P.check_recipe(changed, "t")) != P.recipe_key(r)


def test_the_key_follows_the_loop_version(monkeypatch):
    r = P.check_recipe(json.loads(json.dumps(TINY)), "t")
    k = P.recipe_key(r)
    monkeypatch.setattr(P, "PRETRAIN_VERSION", P.PRETRAIN_VERSION + 1)
    assert P.recipe_key(r) != k


def test_a_run_starts_from_the_artefact_and_its_record_names_it(recipes, tmp_path):
    enc, rec = P.build("tiny", out=None)
    out = tmp_path / "res"
    argv = ["run", "--method", "baseline", "--preset", "smoke", "--device", "cpu", "--quiet", *shrink_argv("vit_tiny"),
            "--set", "backbone.pretraining=tiny", "--set", "train.epochs=1", "--out", str(out)]
    assert main(argv) == 0
    run = json.loads(next((out / "runs").rglob("seed0-*.json")).read_text())
    assert run["encoder_init"] == {"pretraining": {"recipe": "tiny", "key": rec["key"], "sha256": rec["sha256"],
                                                   "version": P.PRETRAIN_VERSION}}
    assert run["config"]["backbone"]["pretraining"] == "tiny"
    # the encoder really starts from the artefact's weights
    from mtlbench.config import resolve
    from mtlbench.models import assemble

    sets = [a for a in argv if "=" in a]
    cfg = resolve(preset="smoke", sets=sets)
    _, _, _, method = assemble(cfg)
    sd = torch.load(enc, weights_only=True)
    vit = method.model.encoder.vit.state_dict()
    assert sd.keys() == vit.keys() and all(torch.equal(vit[k], sd[k]) for k in sd)
    # and a run without it has another identity
    scratch = resolve(preset="smoke", sets=[a for a in sets if "pretraining" not in a])
    assert cfg.hash != scratch.hash


def test_missing_artefact_and_bad_recipes_are_clear_errors(recipes, tmp_path, capsys):
    with pytest.raises(UserError, match=r"has not been built.*\n?.*") as info:
        P.encoder_file("tiny")
    assert "mtlbench pretrain --recipe tiny" in info.value.hint
    bad = dict(TINY, lr=1)
    (recipes / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(UserError, match="unknown key"):
        P.load_recipe("bad")
    with pytest.raises(UserError, match="unknown pretraining recipe 'nope'"):
        P.load_recipe("nope")
    (recipes / "ratio.yaml").write_text(yaml.safe_dump(dict(TINY, objective={"mask_ratio": 1.5})))
    assert main(["pretrain", "--recipe", "ratio", "--out", str(tmp_path)]) == 2
    assert "mask_ratio must lie in (0, 1)" in capsys.readouterr().err
    assert main(["pretrain"]) == 2
    # an arch the artefact does not fit: named, before training
    P.build("tiny", out=None)
    rc = main(["run", "--method", "baseline", "--preset", "smoke", "--device", "cpu", "--quiet",
               "--set", "backbone.pretraining=tiny", "--set", "train.epochs=1", "--out", str(tmp_path / "r")])
    assert rc == 2 and "backbone.pretraining 'tiny'" in capsys.readouterr().err


def test_shipped_recipes_are_pinned():
    """A run names its recipe, so a recipe's content never changes under its name: a changed
    recipe is a new file (and a new line here)."""
    pinned = {"simmim_nyuv2_v2": "d0777d064099"}
    assert {n: P.recipe_key(P.load_recipe(n)) for n in P.recipe_names()} == pinned
