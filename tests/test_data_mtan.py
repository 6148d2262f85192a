"""The MTAN-format reader and validator, on small directories fabricated in the real formats."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from mtlbench.data import mtan
from mtlbench.data.cityscapes import Cityscapes
from mtlbench.data.mtan import CITYSCAPES, NYUV2, MTANDataset, validate
from mtlbench.data.nyuv2 import NYUv2
from mtlbench.errors import UserError
from mtlbench.registry import DATASETS

H, W, N = 16, 24, 3


def make_mtan(root, variant: str = "nyuv2", n_train: int = N, n_val: int = 2, h: int = H, w: int = W,
              label_dir: str | None = None, seed: int = 0) -> dict:
    """Write an MTAN-format directory exactly as the real releases store it; returns the arrays."""
    rng = np.random.default_rng(seed)
    classes = 13 if variant == "nyuv2" else 7
    label_dir = label_dir or ("label" if variant == "nyuv2" else "label_7")
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val)):
        folders = {"image": "image", "semseg": label_dir, "depth": "depth"}
        if variant == "nyuv2":
            folders["normal"] = "normal"
        for f in folders.values():
            os.makedirs(os.path.join(root, split, f), exist_ok=True)
        for i in range(n):
            image = rng.uniform(0, 1, (h, w, 3)).astype(np.float32)
            label = rng.integers(-1, classes, (h, w)).astype(np.float32)
            depth = rng.uniform(*((0.5, 8.0) if variant == "nyuv2" else (0.01, 0.45)), (h, w, 1)).astype(np.float32)
            depth[rng.uniform(size=(h, w)) < 0.1] = 0  # invalid
            a = {"image": image, "semseg": label, "depth": depth}
            if variant == "nyuv2":
                n_ = rng.normal(size=(h, w, 3))
                n_ /= np.linalg.norm(n_, axis=-1, keepdims=True)
                n_[depth[..., 0] == 0] = 0
                a["normal"] = n_.astype(np.float32)
            for key, f in folders.items():
                np.save(os.path.join(root, split, f, f"{i}.npy"), a[key])
            arrays[(split, i)] = a
    return arrays


@pytest.fixture
def nyu(tmp_path):
    root = tmp_path / "nyuv2"
    return root, make_mtan(root, "nyuv2")


# -- the loader ----------------------------------------------------------------------------

def test_nyuv2_loader_shapes_dtypes_values(nyu):
    root, arrays = nyu
    plugin = NYUv2(NYUv2.Config(root=str(root), image_size=[H, W]))
    assert plugin.family == "nyuv2"
    tasks = plugin.tasks()
    assert list(tasks) == ["semseg", "depth", "normal"] and tasks["semseg"].num_classes == 13
    train, val = plugin.split("train"), plugin.split("val")
    assert (len(train), len(val)) == (3, 2)
    s = train[1]
    assert set(s) == {"image", "semseg", "depth", "normal", "index"} and s["index"] == 1
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["semseg"].shape == (H, W) and s["semseg"].dtype == torch.int64
    assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
    assert s["normal"].shape == (3, H, W) and s["normal"].dtype == torch.float32
    a = arrays[("train", 1)]
    # channels-last files become channels-first tensors without transposing H and W
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), a["image"])
    np.testing.assert_array_equal(s["semseg"].numpy(), a["semseg"].astype(np.int64))
    np.testing.assert_array_equal(s["depth"][0].numpy(), a["depth"][..., 0])
    np.testing.assert_array_equal(s["normal"].permute(1, 2, 0).numpy(), a["normal"])
    assert int(s["semseg"].min()) == -1  # ignore survives
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    assert batch["image"].shape == (2, 3, H, W) and batch["semseg"].shape == (2, H, W)


@pytest.mark.parametrize("label_dir", ["label_7", "label"])
def test_cityscapes_loader_label_dirs(tmp_path, label_dir):
    arrays = make_mtan(tmp_path, "cityscapes", label_dir=label_dir)
    plugin = Cityscapes(Cityscapes.Config(root=str(tmp_path), image_size=[H, W]))
    assert plugin.family == "cityscapes"
    assert list(plugin.tasks()) == ["semseg", "depth"] and plugin.tasks()["semseg"].num_classes == 7
    s = plugin.split("val")[1]
    assert set(s) == {"image", "semseg", "depth", "index"}
    np.testing.assert_array_equal(s["semseg"].numpy(), arrays[("val", 1)]["semseg"].astype(np.int64))
    np.testing.assert_array_equal(s["depth"][0].numpy(), arrays[("val", 1)]["depth"][..., 0])
    assert float(s["depth"].max()) <= 0.45  # disparity values pass through untouched


def test_label_7_preferred_over_label(tmp_path):
    make_mtan(tmp_path, "cityscapes", label_dir="label_7", seed=1)
    for split in ("train", "val"):  # a 19-class copy under label/ must not be read
        shutil.copytree(tmp_path / split / "label_7", tmp_path / split / "label")
        for f in (tmp_path / split / "label").iterdir():
            np.save(f, np.full((H, W), 18, np.float32))
    s = MTANDataset(tmp_path, "train", CITYSCAPES)[0]
    assert int(s["semseg"].max()) <= 6


def test_registered_plugins():
    assert DATASETS.get("nyuv2") is NYUv2 and DATASETS.get("cityscapes") is Cityscapes
    assert NYUv2.summary and Cityscapes.summary
    assert NYUv2.Config().image_size == [288, 384] and Cityscapes.Config().image_size == [128, 256]


@pytest.mark.parametrize("root", [None, "", "/nonexistent/mtlbench-data"])
def test_missing_root_is_user_error(root):
    with pytest.raises(UserError) as e:
        NYUv2(NYUv2.Config(root=root)).split("train")
    assert "--data-root" in str(e.value) and "mtan" in str(e.value).lower()


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        Cityscapes(Cityscapes.Config(root=str(f))).split("train")


def test_unknown_split(nyu):
    with pytest.raises(UserError, match="unknown split"):
        NYUv2(NYUv2.Config(root=str(nyu[0]))).split("test")


# -- resizing -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(8, 12), (32, 40)])
def test_resize(nyu, size):
    root, arrays = nyu
    s = MTANDataset(root, "train", NYUV2, image_size=size)[0]
    a = arrays[("train", 0)]
    assert s["image"].shape == (3, *size) and s["semseg"].shape == size
    assert s["depth"].shape == (1, *size) and s["normal"].shape == (3, *size)
    # nearest for labels and depth: no new values are invented
    assert set(np.unique(s["semseg"].numpy())) <= set(np.unique(a["semseg"]).astype(int))
    assert set(np.unique(s["depth"].numpy())) <= set(np.unique(a["depth"]))
    assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
    norm = s["normal"].norm(dim=0)
    assert torch.all(((norm - 1).abs() < 1e-4) | (norm == 0))


def test_no_resize_at_native_size(nyu):
    root, arrays = nyu
    s = MTANDataset(root, "train", NYUV2, image_size=(H, W))[2]
    np.testing.assert_array_equal(s["normal"].permute(1, 2, 0).numpy(), arrays[("train", 2)]["normal"])


# -- augmentation ---------------------------------------------------------------------------

def _sample(arrays, key=("train", 0)):
    a = arrays[key]
    return {"image": torch.from_numpy(a["image"]).permute(2, 0, 1), "semseg": torch.from_numpy(a["semseg"]),
            "depth": torch.from_numpy(a["depth"]).permute(2, 0, 1),
            "normal": torch.from_numpy(a["normal"]).permute(2, 0, 1)}


def test_flip_negates_normal_x(nyu):
    s = _sample(nyu[1])
    out = mtan.scale_crop_flip(s, 1.0, 0, 0, flip=True)
    torch.testing.assert_close(out["image"], s["image"].flip(-1))
    torch.testing.assert_close(out["depth"], s["depth"].flip(-1))
    torch.testing.assert_close(out["semseg"], s["semseg"].flip(-1))
    torch.testing.assert_close(out["normal"][0], -s["normal"][0].flip(-1))
    torch.testing.assert_close(out["normal"][1:], s["normal"][1:].flip(-1))


def test_scale_divides_depth(nyu):
    s = _sample(nyu[1])
    out = mtan.scale_crop_flip(s, 1.5, 2, 3, flip=False)
    assert out["depth"].shape == s["depth"].shape
    orig = set(np.unique(s["depth"].numpy()).tolist())
    got = np.unique(out["depth"].numpy())
    assert 0.0 in got.tolist()  # invalid stays 0
    allowed = np.array(sorted(orig)) / 1.5
    assert np.all(np.min(np.abs(got[:, None] - allowed[None]), axis=1) < 1e-5)
    crop_labels = set(np.unique(s["semseg"][2:2 + int(H / 1.5), 3:3 + int(W / 1.5)].numpy()).tolist())
    assert set(np.unique(out["semseg"].numpy()).tolist()) <= crop_labels
    # the crop's top-left pixel lands at the top-left corner (align_corners=True)
    torch.testing.assert_close(out["image"][:, 0, 0], s["image"][:, 2, 3])


def test_augmentation_is_deterministic_and_varies(nyu):
    root, _ = nyu
    ds = MTANDataset(root, "train", NYUV2, augment=True)
    torch.manual_seed(0)
    a = [ds[i] for i in range(3)]
    torch.manual_seed(0)
    b = [ds[i] for i in range(3)]
    for x, y in zip(a, b):
        for k in ("image", "semseg", "depth", "normal"):
            assert torch.equal(x[k], y[k])
    torch.manual_seed(1)
    draws = [ds[0]["image"] for _ in range(8)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = _sample(nyu[1])
    o1, o2 = mtan.random_scale_crop_flip(s, g1), mtan.random_scale_crop_flip(s, g2)
    assert all(torch.equal(o1[k], o2[k]) for k in o1)


def test_augment_only_on_train(nyu):
    root, arrays = nyu
    plugin = NYUv2(NYUv2.Config(root=str(root), image_size=[H, W], augment=True))
    assert plugin.split("train").augment and not plugin.split("val").augment
    s = plugin.split("val")[0]
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), arrays[("val", 0)]["image"])


# -- validation: every broken variant -----------------------------------------------------------

def _save(path, a):
    np.save(path, a)


BROKEN = {
    # name: (mutation(root), file or folder named in the problem, message fragment)
    "missing folder": (lambda r: shutil.rmtree(r / "train" / "normal"), "train/normal", "missing folder normal/"),
    "missing split": (lambda r: shutil.rmtree(r / "val"), "val", "missing split folder"),
    "index gap": (lambda r: [os.remove(r / "train" / f / "1.npy") for f in ("image", "label", "depth", "normal")],
                  "train/image/1.npy", "missing: indices must run from 0"),
    "count mismatch": (lambda r: os.remove(r / "train" / "depth" / "2.npy"), "train/depth",
                       "2 files but image/ has 3"),
    "no files": (lambda r: [os.remove(f) for f in (r / "val" / "label").iterdir()], "val/label", "no .npy files"),
    "wrong shape": (lambda r: _save(r / "train" / "image" / "0.npy", np.zeros((H, W, 4), np.float32)),
                    "train/image/0.npy", "expected (H, W, 3)"),
    "channels first": (lambda r: _save(r / "train" / "normal" / "0.npy", np.zeros((3, H, W), np.float32)),
                       "train/normal/0.npy", "channels-first"),
    "depth without trailing axis": (lambda r: _save(r / "train" / "depth" / "1.npy", np.ones((H, W), np.float32)),
                                    "train/depth/1.npy", "trailing axis"),
    "label with trailing axis": (lambda r: _save(r / "val" / "label" / "0.npy", np.zeros((H, W, 1), np.float32)),
                                 "val/label/0.npy", "expected (H, W)"),
    "size differs from image": (lambda r: _save(r / "train" / "depth" / "2.npy", np.ones((H, W - 2, 1), np.float32)),
                                "train/depth/2.npy", "differs from the image"),
    "wrong dtype": (lambda r: _save(r / "train" / "image" / "1.npy", np.zeros((H, W, 3), np.uint8)),
                    "train/image/1.npy", "dtype uint8"),
    "int depth": (lambda r: _save(r / "val" / "depth" / "1.npy", np.ones((H, W, 1), np.int32)),
                  "val/depth/1.npy", "expected float"),
    "bad file name": (lambda r: shutil.copy(r / "train" / "image" / "0.npy", r / "train" / "image" / "00.npy"),
                      "train/image/00.npy", "unexpected file name"),
    "truncated": (lambda r: _truncate(r / "train" / "normal" / "1.npy"), "train/normal/1.npy", "truncated"),
    "not npy": (lambda r: (r / "train" / "depth" / "0.npy").write_bytes(b"hello"), "train/depth/0.npy",
                "not a readable .npy"),
}
VALUES = {  # found only by the full check
    "image out of range": ("train/image/0.npy", lambda a: a * 255, "image", "expected [0, 1]"),
    "label out of range": ("train/label/1.npy", lambda a: np.where(a == 0, 13, a), "semseg", "outside {-1, 0..12}"),
    "label 255": ("val/label/0.npy", lambda a: np.where(a == -1, 255, a), "semseg", "map it to -1"),
    "non-integer label": ("train/label/0.npy", lambda a: a + 0.5, "semseg", "non-integer"),
    "negative depth": ("train/depth/2.npy", lambda a: a - 100, "depth", "negative"),
    "nan depth": ("val/depth/1.npy", lambda a: np.where(a > 1, np.nan, a).astype(np.float32), "depth", "NaN"),
    "inf image": ("train/image/1.npy", lambda a: np.where(a > 0.9, np.inf, a).astype(np.float32), "image", "NaN/inf"),
    "normal not unit": ("train/normal/0.npy", lambda a: a * 0.5, "normal", "not unit length"),
    "normal out of range": ("train/normal/2.npy", lambda a: a * 3, "normal", "expected [-1, 1]"),
}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_clean_directory_has_no_problems(nyu, tmp_path):
    assert validate(nyu[0], NYUV2) == [] and validate(nyu[0], NYUV2, full=True) == []
    make_mtan(tmp_path / "cs", "cityscapes")
    assert validate(tmp_path / "cs", CITYSCAPES, full=True) == []


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_structural_problems(nyu, name):
    root, _ = nyu
    mutate, where, fragment = BROKEN[name]
    mutate(root)
    problems = validate(root, NYUV2)
    hits = [p for p in problems if p.path == str(root / where) and fragment in p.message]
    assert hits, f"{name}: {[str(p) for p in problems]}"
    # the loader refuses up front, naming the file
    split = where.split("/")[0]
    with pytest.raises(UserError) as e:
        MTANDataset(root, split, NYUV2)
    assert str(root / where) in str(e.value) and "MTAN" in str(e.value)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_value_problems(nyu, name):
    root, _ = nyu
    rel, change, key, fragment = VALUES[name]
    path = root / rel
    np.save(path, change(np.load(path)))
    assert validate(root, NYUV2) == []  # the cheap check reads headers only
    problems = validate(root, NYUV2, full=True)
    assert [str(p) for p in problems if p.path == str(path) and fragment in p.message], \
        f"{name}: {[str(p) for p in problems]}"
    assert all(p.path == str(path) for p in problems)


def test_cheap_check_reads_headers_only(nyu, monkeypatch):
    def no_load(*a, **k):
        raise AssertionError("validate(full=False) must not load arrays")

    monkeypatch.setattr(np, "load", no_load)
    assert validate(nyu[0], NYUV2) == []


def test_nested_root_hint(tmp_path):
    make_mtan(tmp_path / "nyuv2", "nyuv2")
    problems = validate(tmp_path, NYUV2)
    assert any(f"--data-root {tmp_path / 'nyuv2'}" in p.message for p in problems)


def test_error_lists_problems_and_caps(nyu):
    root, _ = nyu
    for i in range(N):
        np.save(root / "train" / "depth" / f"{i}.npy", np.ones((H, W), np.float32))
    with pytest.raises(UserError) as e:
        NYUv2(NYUv2.Config(root=str(root))).split("train")
    msg = str(e.value)
    assert all(str(root / "train" / "depth" / f"{i}.npy") in msg for i in range(N))
    assert "hint:" in msg and "(H, W, 1)" in msg
    many = [mtan.Problem(f"f{i}", "bad") for i in range(60)]
    capped = str(mtan.problems_error(many, root, NYUV2))
    assert "f49: bad" in capped and "f50: bad" not in capped and "10 more" in capped
    assert "mtlbench data check --dataset nyuv2" in capped


# -- fatal or tolerated; the once-per-directory check before training ----------------------------

FATAL = {"label out of range", "label 255", "nan depth", "inf image"}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_value_problems_are_fatal_only_when_training_would_break(nyu, name):
    root, _ = nyu
    rel, change, key, fragment = VALUES[name]
    np.save(root / rel, change(np.load(root / rel)))
    problems = [p for p in validate(root, NYUV2, full=True) if fragment in p.message]
    assert problems and all(p.fatal == (name in FATAL) for p in problems), [(str(p), p.fatal) for p in problems]


def test_structural_problems_are_fatal(nyu):
    root, _ = nyu
    BROKEN["wrong shape"][0](root)
    assert all(p.fatal for p in validate(root, NYUV2))


def test_validate_values_once_per_directory_state(nyu, monkeypatch):
    root, _ = nyu
    calls = []
    real = mtan.validate
    monkeypatch.setattr(mtan, "validate", lambda *a, **k: calls.append(k) or real(*a, **k))
    notes = []
    mtan.validate_values(root, NYUV2, log=notes.append)
    assert calls == [{"full": True}] and len(notes) == 1 and "once" in notes[0]
    mtan.validate_values(root, NYUV2, log=notes.append)
    assert len(calls) == 1 and len(notes) == 1  # remembered: nothing loaded, nothing said
    # a tolerated problem: validated again (the file changed), then remembered with its note
    np.save(root / "train" / "image" / "0.npy", np.full((H, W, 3), 1.2, np.float32))
    mtan.validate_values(root, NYUV2, log=notes.append)
    assert len(calls) == 2 and "1 tolerated problem" in notes[-1] and "expected [0, 1]" in notes[-1]
    mtan.validate_values(root, NYUV2, log=notes.append)
    assert len(calls) == 2 and "1 tolerated problem" in notes[-1]
    # the same directory checked as another dataset is another verdict (13 classes read as 7)
    with pytest.raises(UserError) as err:
        mtan.validate_values(root, CITYSCAPES)
    assert "would break training" in str(err.value) and "outside {-1, 0..6}" in str(err.value)
    assert calls[2:] == [{"full": True}, {}]  # a refusal also reads the headers, to tell layout from values
    # a fatal value: refused, naming the file, and not remembered
    bad = root / "val" / "label" / "1.npy"
    np.save(bad, np.full((H, W), 13, np.float32))
    for _ in range(2):
        with pytest.raises(UserError) as err:
            mtan.validate_values(root, NYUV2)
        assert f"{bad}: label value(s) 13 outside {{-1, 0..12}}" in str(err.value)
        assert "would break training" in str(err.value)
    assert calls[4:] == [{"full": True}, {}] * 2  # a refusal is not remembered: checked anew
    # a layout problem gets the layout message
    (root / "val" / "depth" / "0.npy").unlink()
    with pytest.raises(UserError, match="does not follow the MTAN layout"):
        mtan.validate_values(root, NYUV2)


def test_plugin_hooks(nyu):
    root, _ = nyu
    assert NYUv2.needs_root and not NYUv2.family_options and not NYUv2.synth_options
    report = NYUv2.check(str(root), full=True)
    assert report.ok and report.counts == {"train": N, "val": 2} and report.root == root
    assert report.layout.startswith("NYUv2 layout: {train,val}/{image, label, depth, normal}")
    assert "MTAN" in report.remedy
    with pytest.raises(UserError, match="takes no options"):
        NYUv2.check(str(root), options={"variant": "nyuv2"})
    with pytest.raises(UserError, match="needs its data directory"):
        NYUv2.check(None)
    plugin = NYUv2(NYUv2.Config(root=str(root)))
    plugin.validate_for_training()
    np.save(root / "train" / "depth" / "0.npy", np.full((H, W, 1), np.nan, np.float32))
    with pytest.raises(UserError, match=r"train/depth/0\.npy: .* NaN/inf"):
        plugin.validate_for_training()
