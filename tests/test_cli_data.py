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


# -- through the registry: any dataset implementing the hooks -------------------------------------

def test_synth_with_dataset_and_set_options(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["data", "synth", "--dataset", "synthetic", "--out", str(out), "--set", "variant=cityscapes",
                 "--set", "n_train=2", "--n-val", "1", "--set", "height=16", "--width", "24"]) == 0
    assert "wrote 3 images (2 train + 1 val, cityscapes, 16x24)" in capsys.readouterr().out
    assert json.loads((out / "synthetic.json").read_text())["variant"] == "cityscapes"
    assert np.load(out / "train" / "image" / "1.npy").shape == (16, 24, 3)


@pytest.mark.parametrize("argv,fragment", [
    (["--dataset", "nyuv2"], "'nyuv2' cannot be generated: its plugin does not implement the synth hook"),
    (["--set", "image_size=[8,8]"], "takes no option image_size"),
    (["--set", "variant=nyuv2", "--variant", "cityscapes"], "contradicts --set variant=nyuv2"),
    (["--set", "n_train=many"], "n_train"),
    (["--dataset", "nyuv3"], "did you mean 'nyuv2'"),
])
def test_synth_refuses_what_it_cannot_do(argv, fragment, tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["data", "synth", "--out", str(out), *argv]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_check_variant_option(tmp_path, nyu_dir, capsys):
    bare = tmp_path / "bare"
    assert _synth(bare, "cityscapes") == 0
    (bare / "synthetic.json").unlink()
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(bare), "--set", "variant=cityscapes"]) == 0
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(bare), "--variant", "cityscapes"]) == 0
    capsys.readouterr()
    # the manifest knows the variant: a contradicting option is an error, not silently ignored
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(nyu_dir), "--variant", "cityscapes"]) == 2
    assert "synthetic.json says the data is 'nyuv2'" in capsys.readouterr().err
    assert main(["data", "check", "--dataset", "nyuv2", "--data-root", str(nyu_dir), "--variant", "nyuv2"]) == 2
    assert "check takes no options, got --set variant=nyuv2" in capsys.readouterr().err


def test_check_names_a_dataset_without_the_hook(tmp_path, capsys):
    from mtlbench.data.base import DatasetPlugin
    from mtlbench.registry import DATASETS

    class NoCheck(DatasetPlugin):
        """A test-only dataset without hooks."""

    DATASETS.add("test_nocheck", NoCheck, origin="tests/test_cli_data.py")
    try:
        assert main(["data", "check", "--dataset", "test_nocheck", "--data-root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "dataset 'test_nocheck' cannot check a data directory" in err and "check hook" in err
        # with two datasets able to generate, synth needs --dataset; with one, it picks it
        assert main(["data", "synth", "--out", str(tmp_path / "o")]) == 0
    finally:
        DATASETS._entries.pop("test_nocheck", None)


def test_tolerated_problems_are_marked(tmp_path, capsys):
    d = tmp_path / "d"
    assert _synth(d) == 0
    np.save(d / "train" / "image" / "0.npy", np.full((16, 24, 3), 1.5, np.float32))
    np.save(d / "val" / "label" / "0.npy", np.full((16, 24), 40, np.float32))
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "synthetic", "--data-root", str(d)]) == 2
    out = capsys.readouterr().out
    image = next(ln for ln in out.splitlines() if ln.startswith(str(d / "train" / "image" / "0.npy")))
    label = next(ln for ln in out.splitlines() if ln.startswith(str(d / "val" / "label" / "0.npy")))
    assert image.endswith("[tolerated in training]") and not label.endswith("[tolerated in training]")
    assert "FAILED: 2 problems" in out


# -- the progress class ----------------------------------------------------------------------------

def test_progress_plain_lines_every_tenth(capsys):
    from mtlbench.progress import Progress

    with Progress("plain", label="writing") as p:
        for i in range(1, 21):
            p.update(i, 20, "train")
        p.update(20, 20, "train")  # reported again: printed once
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"writing train: {i}/20" for i in range(2, 21, 2)]


def test_progress_epochs_plain_quiet_and_rich():
    import io

    from mtlbench.progress import Progress

    buf = io.StringIO()
    p = Progress("plain", label="okd seed 0", total_epochs=2, steps=3, stream=buf)
    p.epoch_start(0, 0)
    p.step("loss=1")
    p.epoch_end("epoch 1/2 loss 0.5")
    p.message("resuming")
    p.close()
    assert buf.getvalue().splitlines() == ["[okd seed 0] epoch 1/2 loss 0.5", "resuming"]

    quiet = io.StringIO()
    p = Progress("plain", label="x", quiet=True, stream=quiet, total_epochs=1, steps=1)
    p.epoch_end("e")
    p.message("m")
    p.update(1, 1)
    p.close()
    assert quiet.getvalue() == "" and p.mode == "none"

    rich = io.StringIO()
    p = Progress("rich", label="run", total_epochs=2, steps=2, stream=rich)
    for e in range(2):
        p.epoch_start(e, e)
        p.step("l=1")
        p.step("l=2")
        p.epoch_end(f"epoch {e + 1}/2 done")
    p.message("a message")
    p.update(3, 4, "files")
    p.close()
    p.close()  # idempotent
    text = rich.getvalue()
    assert "a message" in text and "run epochs" in text and "2/2" in text
    with pytest.raises(ValueError, match="progress mode"):
        Progress("loud")


def test_auto_mode_is_plain_off_a_terminal():
    import io

    from mtlbench.progress import Progress

    assert Progress("auto", stream=io.StringIO()).mode == "plain"
