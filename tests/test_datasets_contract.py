"""The dataset plugin contract, parametrised over every registered dataset (and each family it
can stand in for).

A newly registered dataset is tested here automatically: its tasks name one
primary metric each, its splits yield the documented keys, dtypes and shapes,
its ``family_options`` make it the family they name, ``--data-root`` is
handled as ``needs_root`` says, and, where it implements the hooks, ``check``
finds a planted bad label and a NaN and ``validate_for_training`` refuses them
before training.  Datasets that need a data directory read a tiny one
fabricated here in their format (:func:`fabricate`; teach it a new format when
a plugin brings one).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlbench.data.base import CheckReport, DatasetPlugin, check_data_root, implementing, overrides
from mtlbench.data.mtan import MTANPlugin, MTANSpec
from mtlbench.data.synthetic import Synthetic
from mtlbench.errors import UserError
from mtlbench.registry import DATASETS

H, W, N_TRAIN, N_VAL = 16, 24, 3, 2
#: documented sample keys: (channels or None for (H, W), dtype)
DOCUMENTED = {"image": (3, torch.float32), "semseg": (None, torch.int64), "depth": (1, torch.float32),
              "normal": (3, torch.float32)}

CASES = [(name, fam) for name in DATASETS.names()
         for fam in (sorted(DATASETS.get(name).family_options) or [None])]
IDS = [f"{n}-{f}" if f else n for n, f in CASES]


# ---------------------------------------------------------------------------
# tiny directories in each format
# ---------------------------------------------------------------------------

def write_mtan(root: Path, spec: MTANSpec, n_train: int = N_TRAIN, n_val: int = N_VAL, seed: int = 0) -> None:
    """A tiny directory in the MTAN layout of ``spec`` (valid values everywhere)."""
    rng = np.random.default_rng(seed)
    folders = {k: names[0] for k, names in spec.folders().items()}
    for split, n in (("train", n_train), ("val", n_val)):
        for f in folders.values():
            os.makedirs(root / split / f, exist_ok=True)
        for i in range(n):
            depth = rng.uniform(0.5, 8.0, (H, W, 1)).astype(np.float32)
            depth[rng.uniform(size=(H, W)) < 0.1] = 0
            normal = rng.normal(size=(H, W, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            arrays = {"image": rng.uniform(0, 1, (H, W, 3)).astype(np.float32),
                      "semseg": rng.integers(-1, spec.num_classes, (H, W)).astype(np.float32),
                      "depth": depth, "normal": normal.astype(np.float32)}
            for key, f in folders.items():
                np.save(root / split / f / f"{i}.npy", arrays[key])


def fabricate(name: str, family: str | None, tmp_path: Path) -> tuple[DatasetPlugin, Path]:
    """A plugin of dataset ``name`` (as ``family``) reading tiny data, and that data's directory."""
    cls = DATASETS.get(name)
    opts = dict(cls.family_options.get(family, {})) if family else {}
    if isinstance(cls, type) and issubclass(cls, MTANPlugin):
        root = tmp_path / name
        write_mtan(root, cls.spec)
        plugin = cls(cls.Config(root=str(root), image_size=[H, W], **opts))
        return plugin, root
    if isinstance(cls, type) and issubclass(cls, Synthetic):
        plugin = cls(cls.Config(root=str(tmp_path / "cache"), image_size=[H, W], n_train=N_TRAIN, n_val=N_VAL,
                                height=H, width=W, **opts))
        return plugin, plugin.data_dir()
    pytest.fail(f"no tiny {name!r} data can be made here: teach fabricate() in {__file__} its format")


def _label_file(root: Path, spec: MTANSpec, split: str, i: int) -> Path:
    return next(root / split / d / f"{i}.npy" for d in spec.label_dirs if (root / split / d).is_dir())


def _spec_of(plugin: DatasetPlugin) -> MTANSpec:
    """The MTAN layout the fabricated data of ``plugin`` follows (where to plant bad values)."""
    if isinstance(plugin, Synthetic):
        from mtlbench.data.synthetic import _spec

        return _spec(plugin.cfg.variant)
    return plugin.spec


def plant(root: Path, spec: MTANSpec) -> tuple[Path, Path]:
    """A label outside 0..C-1 in train/0 and a NaN depth in val/1; returns the two files."""
    label = _label_file(root, spec, "train", 0)
    a = np.load(label)
    a[2, 3] = spec.num_classes + 3
    np.save(label, a)
    depth = root / "val" / "depth" / "1.npy"
    d = np.load(depth)
    d[0, 0, 0] = np.nan
    np.save(depth, d)
    return label, depth


# ---------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_tasks_have_exactly_one_primary_metric(name, family, tmp_path):
    plugin, _ = fabricate(name, family, tmp_path)
    tasks = plugin.tasks()
    assert tasks
    for t, task in tasks.items():
        keys = [m.key for m in task.metrics]
        assert len(keys) == len(set(keys)), f"{name}.{t}: repeated metric keys {keys}"
        primaries = [m.key for m in task.metrics if m.primary]
        assert len(primaries) == 1, f"{name}.{t}: primary metrics {primaries}"
        assert task.primary_metric.key == primaries[0] == task.describe()["primary"]


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_family_options_make_the_family(name, family, tmp_path):
    cls = DATASETS.get(name)
    plugin, _ = fabricate(name, family, tmp_path)
    if family is not None:
        assert plugin.family == family
    else:  # a real dataset is its own family
        assert not cls.family_options and plugin.family


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_splits_yield_the_documented_samples(name, family, tmp_path):
    plugin, _ = fabricate(name, family, tmp_path)
    tasks = plugin.tasks()
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        ds = plugin.split(split)
        assert len(ds) == n
        s = ds[n - 1]
        assert set(s) == {"image", "index", *tasks} and s["index"] == n - 1
        for key in ("image", *tasks):
            channels, dtype = DOCUMENTED[key]
            x = s[key]
            assert x.dtype == dtype, (split, key, x.dtype)
            assert tuple(x.shape) == ((H, W) if channels is None else (channels, H, W)), (split, key)
        assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
        if "semseg" in tasks:
            assert -1 <= int(s["semseg"].min()) and int(s["semseg"].max()) < tasks["semseg"].channels
        if "depth" in tasks:
            assert float(s["depth"].min()) >= 0
        if "normal" in tasks:
            norms = s["normal"].norm(dim=0)
            assert bool((((norms - 1).abs() < 1e-3) | (norms == 0)).all())
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
        assert batch["image"].shape == (2, 3, H, W) and batch["index"].tolist() == [0, 1]
    with pytest.raises(UserError, match="unknown split"):
        plugin.split("test")


@pytest.mark.parametrize("name", DATASETS.names())
def test_data_root_flag(name, tmp_path):
    cls = DATASETS.get(name)
    assert check_data_root(cls, None) is None
    if cls.needs_root:
        assert check_data_root(cls, str(tmp_path)) is None
        return
    with pytest.raises(UserError, match=f"--data-root {tmp_path}: dataset '{name}' reads no data directory") as err:
        check_data_root(cls, str(tmp_path))
    if cls.root_use:  # what dataset.root does for it, and how to ask for that
        assert cls.root_use in str(err.value) and f"--set dataset.root={tmp_path}" in str(err.value)


def test_a_root_that_would_do_nothing_is_refused(tmp_path):
    class NoFiles(DatasetPlugin):
        needs_root = False

    with pytest.raises(UserError, match="--data-root .* reads no data directory") as err:
        check_data_root(NoFiles, str(tmp_path))
    assert "dataset.root" not in str(err.value)  # no other use to point at
    with pytest.raises(UserError, match="does not implement the check hook") as err:
        NoFiles.check(tmp_path, full=True)
    assert f"datasets that can be checked: {', '.join(implementing('check'))}" in str(err.value)
    assert not overrides(NoFiles, "check") and overrides(Synthetic, "check") and overrides(Synthetic, "synth")
    with pytest.raises(UserError, match="does not implement the synth hook"):
        NoFiles.synth(tmp_path / "out", {})
    NoFiles(None).validate_for_training()  # the default accepts everything


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_check_hook_finds_a_bad_label_and_a_nan(name, family, tmp_path):
    cls = DATASETS.get(name)
    plugin, root = fabricate(name, family, tmp_path)
    if not overrides(cls, "check"):
        with pytest.raises(UserError, match="does not implement the check hook"):
            cls.check(root, full=True)
        return
    seen = []
    report = cls.check(root, full=True, progress=lambda d, t, what: seen.append((d, t)))
    assert isinstance(report, CheckReport) and report.ok, [str(p) for p in report.problems]
    assert report.counts == {"train": N_TRAIN, "val": N_VAL}
    assert (N_TRAIN, N_TRAIN) in seen and (N_VAL, N_VAL) in seen
    spec = _spec_of(plugin)
    label, depth = plant(root, spec)
    problems = cls.check(root, full=True).problems
    assert {p.path for p in problems} == {str(label), str(depth)}, [str(p) for p in problems]
    bad_label = next(p for p in problems if p.path == str(label))
    assert f"{spec.num_classes + 3:g} outside {{-1, 0..{spec.num_classes - 1}}}" in bad_label.message
    assert bad_label.fatal
    nan = next(p for p in problems if p.path == str(depth))
    assert "1 NaN/inf value(s) (first at index (0, 0, 0))" in nan.message and nan.fatal
    assert cls.check(root, full=False).ok  # values are not looked at by the quick check


@pytest.mark.parametrize("name,family", CASES, ids=IDS)
def test_bad_values_fail_before_training_naming_the_file(name, family, tmp_path, monkeypatch):
    plugin, root = fabricate(name, family, tmp_path)
    notes = []
    plugin.validate_for_training(log=notes.append)
    if not overrides(type(plugin), "validate_for_training"):
        return  # nothing to refuse: the default accepts every value
    assert any("once" in n for n in notes)  # the first run checked the values
    # the verdict is remembered: unchanged files are not loaded again
    from mtlbench.data import mtan

    def no_validate(*a, **k):
        raise AssertionError("validated again although no file changed")

    with monkeypatch.context() as m:
        m.setattr(mtan, "validate", no_validate)
        plugin.validate_for_training()
    label, depth = plant(root, _spec_of(plugin))
    with pytest.raises(UserError) as err:
        plugin.validate_for_training()
    msg = str(err.value)
    assert str(label) in msg and str(depth) in msg and "before the first step" in msg


def test_run_stops_before_training_on_a_nan(tmp_path, toy_backbone, smoke_config):
    """``trainer.build`` (what ``mtlbench run`` does first) refuses a NaN image, naming the file."""
    from mtlbench.trainer import build

    plugin, root = fabricate("nyuv2", None, tmp_path)
    image = root / "train" / "image" / "2.npy"
    a = np.load(image)
    a[5, 5, 1] = math.inf
    np.save(image, a)
    cfg = smoke_config("baseline", toy_backbone, "dataset.name=nyuv2", f"dataset.root={root}",
                       f"dataset.image_size=[{H},{W}]")
    with pytest.raises(UserError) as err:
        build(cfg)
    assert str(image) in str(err.value) and "NaN/inf" in str(err.value)
