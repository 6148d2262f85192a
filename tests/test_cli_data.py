"""``mtlbench data synth`` and ``mtlbench data check`` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mtlbench.cli import main


def _synth(out, variant="nyuv2", n_train=3, n_val=2, h=16, w=24, seed=0):
    return main(["data", "synth", "--variant", variant, "--out", str(out), "--n-train", str(n_train),
                 "--n-val", str(n_val), "--height", str(h), "--width", str(w), "--seed", str(seed)])


@pytest.fixture(scope="module")
def nyu_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "nyu"
    assert _synth(out) == 0
    return out


def test_synth_writes_mtan_layout(tmp_path, capsys):
    out = tmp_path / "city"
    assert _synth(out, "cityscapes", 4, 2, 16, 24, seed=1) == 0
    text = capsys.readouterr().out
    assert "wrote 6 images (4 train + 2 val" in text and "images/s" in text
    assert sorted(p.name for p in (out / "train").iterdir()) == ["depth", "image", "label_7"]
    assert np.load(out / "val" / "depth" / "1.npy").shape == (16, 24, 1)
    assert json.loads((out / "synthetic.json").read_text())["variant"] == "cityscapes"
    # check it as synthetic (variant from the manifest) and as the real format it imitates
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(out)]) == 0
    assert main(["data", "check", "--dataset", "cityscapes", "--data-root", str(out)]) == 0
    assert "OK: 4 train, 2 val images" in capsys.readouterr().out


def test_check_clean(nyu_dir, capsys):
    assert main(["data", "check", "--dataset", "nyuv2", "--data-root", str(nyu_dir)]) == 0
    assert "OK: 3 train, 2 val images" in capsys.readouterr().out


def test_check_wrong_format(nyu_dir, capsys):
    # NYUv2 labels go up to 12: as Cityscapes (7 classes) they are out of range, and label_7/ is absent
    assert main(["data", "check", "--dataset", "cityscapes", "--data-root", str(nyu_dir)]) == 2
    out = capsys.readouterr().out
    assert "outside {-1, 0..6}" in out and "FAILED" in out


BREAKS = {
    "missing folder": (lambda d: __import__("shutil").rmtree(d / "val" / "normal"), "val/normal", "missing folder"),
    "index gap": (lambda d: [(d / "train" / f / "1.npy").unlink() for f in ("image", "label", "depth", "normal")],
                  "train/label/1.npy", "without gaps"),
    "wrong shape": (lambda d: np.save(d / "train" / "normal" / "0.npy", np.zeros((16, 24, 2), np.float32)),
                    "train/normal/0.npy", "expected (H, W, 3)"),
    "depth without trailing axis": (lambda d: np.save(d / "val" / "depth" / "0.npy", np.ones((16, 24), np.float32)),
                                    "val/depth/0.npy", "trailing axis"),
    "wrong dtype": (lambda d: np.save(d / "train" / "image" / "2.npy", np.zeros((16, 24, 3), np.uint8)),
                    "train/image/2.npy", "dtype uint8"),
    "out of range": (lambda d: np.save(d / "train" / "image" / "0.npy", np.full((16, 24, 3), 7, np.float32)),
                     "train/image/0.npy", "expected [0, 1]"),
    "label out of range": (lambda d: np.save(d / "train" / "label" / "0.npy", np.full((16, 24), 20, np.float32)),
                           "train/label/0.npy", "outside {-1, 0..12}"),
    "nan": (lambda d: np.save(d / "val" / "normal" / "1.npy", np.full((16, 24, 3), np.nan, np.float32)),
            "val/normal/1.npy", "NaN"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_check_reports_broken_files(tmp_path, capsys, name):
    d = tmp_path / "d"
    assert _synth(d) == 0
    capsys.readouterr()
    breaker, where, fragment = BREAKS[name]
    breaker(d)
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(d)]) == 2
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(str(d / where) + ":")]
    assert lines and any(fragment in ln for ln in lines), out
    assert "FAILED" in out and "OK:" not in out


def test_check_needs_data_root(capsys):
    assert main(["data", "check", "--dataset", "nyuv2"]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "mtan" in err.lower()


def test_check_missing_directory(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "cityscapes", "--data-root", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_check_synthetic_without_manifest(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(tmp_path)]) == 2
    assert "--variant" in capsys.readouterr().err


def test_synth_refuses_non_empty_out(nyu_dir, capsys):
    assert _synth(nyu_dir) == 2
    assert "not an empty directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data", "synth", "--variant", "kitti", "--out", "x"],
                                  ["data", "synth", "--out", "x", "--n-train", "0"],
                                  ["data", "check", "--dataset", "imagenet", "--data-root", "x"],
                                  ["data"]])
def test_bad_arguments(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert not (tmp_path / "x").exists()  # nothing written
