"""Every bad input is a clear error: exit code 2, the culprit named, no traceback.

One parametrised table of bad command lines across ``run``, ``table``, ``sweep``,
``plot`` and ``data`` (the inputs of a demanding user's report, and their
neighbours).  Each case runs ``mtlbench.cli.main`` in-process and checks:

* the exit code is 2 and no exception escaped (in-process, an escaping
  exception is what a user sees as a traceback);
* the output names the culprit: each entry of ``expect`` (a string, or a tuple
  of alternatives) appears in stdout + stderr, case-insensitively; nothing of
  ``forbid`` does;
* ``guard="config"``: the error comes while the config resolves, before the
  trainer builds anything (``mtlbench.trainer.build`` and ``Method.__init__``
  fail the case if called); ``guard="model"``: before any model is built
  (``Method.__init__`` fails the case); ``guard=None``: the error needs a
  model or the data (pretrained weights, divergence, data values);
* ``run`` cases leave no run record, and no checkpoint holding non-finite
  weights.

A few cases also run as a subprocess (``python -m mtlbench``), to see the real
stderr.  Three items are not fatal by design and are tested apart at the end:
a corrupted record (a table names it in a note), ``--resume`` with nothing to
resume (trains from scratch and says so), and a resumed run's timing.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import mtlbench.api
import mtlbench.trainer
from mtlbench.cli import main

RUN = "run --preset smoke --quiet --out {out}"


class _Built(BaseException):
    """Raised by the guards: a BaseException, so no ``except Exception`` hides it."""


@dataclass
class Case:
    id: str
    argv: str  # formatted with the workspace's paths, then split like a shell
    expect: list  # each: a substring, or a tuple of alternative substrings (case-insensitive)
    guard: str | None = "config"  # "config" | "model" | None
    forbid: list = field(default_factory=list)
    check: Callable | None = None  # extra check(ws, out) after the run


def _no_bad_checkpoint(ws, out: Path) -> None:
    """A diverged run keeps no checkpoint with non-finite weights (the last good one may stay)."""
    for p in out.rglob("*.pt"):
        state = torch.load(p, map_location="cpu", weights_only=False)
        model = state.get("model", {}) if isinstance(state, dict) else {}
        for k, v in model.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert torch.isfinite(v).all(), f"{p} holds non-finite weights in {k}"


CASES = [
    # --- run: TrainConfig ranges and choices (config resolution) -----------------------------
    Case("run-epochs-0-flag", f"{RUN} --epochs 0", ["train.epochs", "--epochs", ">= 1"]),
    Case("run-epochs-neg-set", f"{RUN} --set train.epochs=-1", ["train.epochs", "--set train.epochs=-1"]),
    Case("run-epochs-word", f"{RUN} --set train.epochs=three", ["train.epochs", "int"]),
    Case("run-epochs-float", f"{RUN} --set train.epochs=2.5", ["train.epochs", "int"]),
    Case("run-epochs-argparse", f"{RUN} --epochs abc", ["--epochs"]),
    Case("run-loggers-twice", f"{RUN} --set train.loggers=[tensorboard,tensorboard]", ["train.loggers", "tensorboard twice"]),
    Case("run-batch-size-0-set", f"{RUN} --set train.batch_size=0", ["train.batch_size"]),
    Case("run-batch-size-0-flag", f"{RUN} --batch-size 0", ["train.batch_size", "--batch-size"]),
    Case("run-lr-neg", f"{RUN} --set train.lr=-1", ["train.lr", "> 0"]),
    Case("run-lr-zero", f"{RUN} --set train.lr=0", ["train.lr"]),
    Case("run-lr-nan", f"{RUN} --set train.lr=.nan", ["train.lr", "finite"]),
    Case("run-lr-inf", f"{RUN} --set train.lr=.inf", ["train.lr", "finite"]),
    Case("run-lr-word", f"{RUN} --set train.lr=fast", ["train.lr", "float"]),
    Case("run-weight-decay-neg", f"{RUN} --set train.weight_decay=-0.01", ["train.weight_decay"]),
    Case("run-pct-start-2", f"{RUN} --set train.pct_start=2", ["train.pct_start", "(0, 1)"]),
    Case("run-pct-start-0", f"{RUN} --set train.pct_start=0", ["train.pct_start"]),
    Case("run-grad-clip-neg", f"{RUN} --set train.grad_clip=-1", ["train.grad_clip", "> 0"]),
    Case("run-grad-clip-0", f"{RUN} --set train.grad_clip=0", ["train.grad_clip"]),
    Case("run-log-every-neg", f"{RUN} --set train.log_every=-1", ["train.log_every", ">= 0"]),
    Case("run-eval-every-neg", f"{RUN} --set train.eval_every=-1", ["train.eval_every"]),
    Case("run-max-steps-0", f"{RUN} --set train.max_steps_per_epoch=0", ["train.max_steps_per_epoch"]),
    Case("run-threads-0", f"{RUN} --set train.threads=0", ["train.threads"]),
    # values that used to be accepted and crash later (issue 27)
    Case("run-threads-huge", f"{RUN} --set train.threads=100000", ["train.threads", "1024"]),
    Case("run-seed-64bit", f"{RUN} --seed 200000000000000", ["seed", "4294967295", "64 bits"]),
    Case("run-seed-beyond-64bit", f"{RUN} --seed 99999999999999999999999", ["seed", "4294967295"]),
    Case("run-workers-neg", f"{RUN} --set dataset.num_workers=-1", ["dataset.num_workers", "[0, 256]"]),
    Case("run-data-seed-neg", f"{RUN} --set dataset.seed=-3", ["dataset.seed"]),
    Case("run-nuisance-neg", f"{RUN} --set train.nuisance_seed=-1", ["train.nuisance_seed"]),
    Case("run-device-meta", f"{RUN} --device meta", ["train.device", "cpu or cuda"], guard="model"),
    Case("run-device-bogus", f"{RUN} --device tpu0", ["train.device", "not a device name"], guard="model"),
    Case("run-scheduler", f"{RUN} --set train.scheduler=cosine", ["train.scheduler", "onecycle", "constant"]),
    Case("run-report-bogus", f"{RUN} --set train.report=bogus", ["train.report", "best_train_loss"]),
    Case("run-amp", f"{RUN} --set train.amp=fp16", ["train.amp", "bf16"]),
    Case("run-progress", f"{RUN} --set train.progress=loud", ["train.progress", "plain"]),
    Case("run-optimizer", f"{RUN} --set train.optimizer=sgd", ["train.optimizer", "adamw"]),
    Case("run-channels-last-word", f"{RUN} --set train.channels_last=maybe", ["train.channels_last", "bool"]),
    Case("run-unknown-train-key", f"{RUN} --set train.epoch=3", ["train.epoch", "epochs"]),
    Case("run-unknown-top-key", f"{RUN} --set trian.epochs=3", ["trian.epochs"]),
    Case("run-set-no-equals", f"{RUN} --set train.lr", ["--set", "KEY=VALUE"]),
    Case("run-set-bad-yaml", f"{RUN} --set train.lr=[1", ["--set", "yaml"]),
    Case("run-set-empty-key", f"{RUN} --set =3", ["--set", "empty key"]),
    Case("run-set-too-deep", f"{RUN} --set train.lr.x=1", ["train.lr.x"]),
    Case("run-set-section-scalar", f"{RUN} --set train=3", ["train", "mapping"]),
    Case("run-seed-neg", f"{RUN} --seed -1", ["seed", "--seed"]),
    Case("run-seed-word", f"{RUN} --set seed=abc", ["seed", "abc"]),
    Case("run-print-config-bad", f"{RUN} --print-config --set train.lr=-1", ["train.lr"]),
    # --- run: plugin names, presets, plugin options -------------------------------------------
    Case("run-method-unknown", f"{RUN} --method nosuch", ["--method", "nosuch"]),
    Case("run-backbone-unknown", f"{RUN} --backbone nosuch", ["--backbone", "nosuch"]),
    Case("run-dataset-unknown", f"{RUN} --dataset nosuch", ["--dataset", "nosuch"]),
    Case("run-preset-unknown", "run --preset fast --quiet --out {out}", ["preset", "fast", "smoke"]),
    Case("run-baseline-option", f"{RUN} --set method.T=1", ["method.T"]),
    Case("run-stl-option", f"{RUN} --method stl --set method.T=1", ["method.T"]),
    Case("run-rlw-option", f"{RUN} --method rlw --set method.T=1", ["method.T"]),
    Case("run-dwa-T-0", f"{RUN} --method dwa --set method.T=0", ["method.T", "> 0"]),
    Case("run-dwa-T-nan", f"{RUN} --method dwa --set method.T=.nan", ["method.T", "finite"]),
    Case("run-uw-form", f"{RUN} --method uw --set method.form=kendall", ["method.form", "libmtl"]),
    Case("run-uw-s-lr", f"{RUN} --method uw --set method.s_lr=-1", ["method.s_lr"]),
    Case("run-uw-init-inf", f"{RUN} --method uw --set method.init_log_var=.inf", ["method.init_log_var"]),
    Case("run-vit-head-dropout", f"{RUN} --set backbone.head_dropout=1.5", ["backbone.head_dropout", "[0, 1)"]),
    Case("run-vit-head-layers", f"{RUN} --set backbone.head_layers=0", ["backbone.head_layers"]),
    Case("run-vit-drop-path", f"{RUN} --set backbone.drop_path=-0.1", ["backbone.drop_path"]),
    Case("run-vit-queries", f"{RUN} --set backbone.n_reg_queries=0", ["backbone.n_reg_queries"]),
    Case("run-vit-pretrained-word", f"{RUN} --set backbone.pretrained=3", ["backbone.pretrained", "bool"]),
    Case("run-vit-pretrained-suffix", f"{RUN} --set backbone.pretrained_file=weights.txt",
         ["pretrained_file", "weights.txt"]),
    Case("run-deeplab-rates-empty", f"{RUN} --backbone deeplabv3 --set backbone.aspp_rates=[]",
         ["backbone.aspp_rates"]),
    Case("run-deeplab-rates-zero", f"{RUN} --backbone deeplabv3 --set backbone.aspp_rates=[12,0]",
         ["backbone.aspp_rates"]),
    Case("run-mtan-channels-0", f"{RUN} --backbone deeplabv3_mtan --set backbone.aspp_channels=0",
         ["backbone.aspp_channels"]),
    # --- run: --config files and layers ------------------------------------------------------
    Case("run-config-dir", f"{RUN} --config {{dir}}", ["{dir}", "directory"]),
    Case("run-config-missing", f"{RUN} --config {{tmp}}/missing.yaml", ["missing.yaml", "does not exist"]),
    Case("run-config-binary", f"{RUN} --config {{binary}}", ["{binary}", ("text", "utf-8", "binary")]),
    Case("run-config-bad-yaml", f"{RUN} --config {{bad_yaml}}", ["{bad_yaml}", "yaml"]),
    Case("run-config-list", f"{RUN} --config {{list_yaml}}", ["{list_yaml}", "mapping"]),
    Case("run-config-preset-int", f"{RUN} --config {{preset_int}}", ["preset", "{preset_int}"]),
    Case("run-config-lr-neg", f"{RUN} --config {{lr_neg}}", ["train.lr", "{lr_neg}"]),
    Case("run-config-method-dropped", f"{RUN} --config {{okd_T}} --method baseline",
         ["{okd_T}", "method.T", "--method"]),
    Case("run-config-method-T-without-name", f"{RUN} --config {{T_only}}", ["method.T", "{T_only}"]),
    Case("run-set-method-dropped", f"{RUN} --method okd --set method.T=0.05 --set method.name=baseline",
         ["method.T", "--set method.T=0.05"]),
    # --- run: checks of the trainer before it builds a model ---------------------------------
    Case("run-device-unknown", f"{RUN} --device tpu", ["tpu"], guard="model"),
    Case("run-data-root-with-synthetic", f"{RUN} --data-root {{dir}}", [("--data-root", "dataset.root")],
         guard="model"),
    Case("run-nyuv2-root-missing", f"{RUN} --dataset nyuv2 --data-root {{tmp}}/nowhere", ["nowhere"],
         guard="model"),
    Case("run-nyuv2-without-root", f"{RUN} --dataset nyuv2", ["--data-root"], guard="model"),
    Case("run-resume-truncated", f"{RUN} --resume", ["last.pt"], guard="model"),
    Case("run-out-is-file", "run --preset smoke --quiet --out {afile}", ["--out", "{afile}"], guard="model"),
    Case("run-out-under-file", "run --preset smoke --quiet --out {afile}/sub", ["--out"], guard="model"),
    Case("run-out-read-only", "run --preset smoke --quiet --out {readonly}", ["--out", "{readonly}"],
         guard="model"),
    # --- run: errors that need the weights, the data or training ------------------------------
    Case("run-vit-pretrained-text", f"{RUN} --set backbone.pretrained_file={{text_pth}}",
         ["pretrained_file", "{text_pth}"], guard=None),
    Case("run-vit-pretrained-missing", f"{RUN} --set backbone.pretrained_file={{tmp}}/none.pth",
         ["pretrained_file", "does not exist"], guard=None),
    Case("run-vit-pretrained-mismatch", f"{RUN} --set backbone.pretrained_file={{vit_bad}}",
         ["{vit_bad}", "missing", "unexpected"], guard=None),
    Case("run-deeplab-pretrained-text", f"{RUN} --backbone deeplabv3 --set backbone.pretrained_file={{text_pth}}",
         ["pretrained_file", "{text_pth}"], guard=None),
    Case("run-deeplab-pretrained-mismatch",
         f"{RUN} --backbone deeplabv3 --set backbone.pretrained_file={{resnet_bad}}",
         ["{resnet_bad}", "missing", "unexpected"], guard=None),
    Case("run-diverges-huge-lr", f"{RUN} --set train.lr=1e6", ["diverge", "train.lr"], guard=None,
         check=_no_bad_checkpoint),
    Case("run-diverges-constant-one-step",
         f"{RUN} --set train.lr=1e30 --set train.scheduler=constant --set train.max_steps_per_epoch=1",
         ["diverge", "train.lr"], guard=None, check=_no_bad_checkpoint),
    Case("run-data-nan-depth", f"{RUN} --dataset nyuv2 --data-root {{nan_dir}}", ["depth", "0.npy", "nan"],
         guard=None, forbid=["lower train.lr"]),
    Case("run-data-label-out-of-range", f"{RUN} --dataset nyuv2 --data-root {{label_dir}}",
         ["label", "0.npy"], guard=None, forbid=["lower train.lr"]),
    # --- table ------------------------------------------------------------------------------
    Case("table-id-7", "table --table 7 --out {results}", ["--table", "7"], forbid=["--id"]),
    Case("table-old-id-7", "table --id 7 --out {results}", ["--table", "7", "--id is now --table"]),
    Case("table-id-and-table", "table --id 1 --table 2 --out {results}", ["--table", "not allowed with", "--id"]),
    Case("table-id-file-missing", "table --table {tmp}/nope.yaml --out {results}", ["nope.yaml"]),
    Case("table-id-not-a-spec", "table --table {okd_T} --out {results}", ["{okd_T}"]),
    Case("table-seeds-empty-entry", "table --table 1 --seeds 0,,1 --out {results}", ["--seeds", "0,,1"]),
    Case("table-seeds-word", "table --table 1 --seeds a --out {results}", ["--seeds"]),
    Case("table-seeds-backwards", "table --table 1 --seeds 3-1 --out {results}", ["--seeds"]),
    Case("table-out-missing", "table --table 1 --out {tmp}/nowhere", ["--out", "nowhere"]),
    Case("table-out-file", "table --table 1 --out {afile}", ["--out", "{afile}"]),
    Case("table-delta-ref", "table --table 1 --delta-ref nosuch --out {results}", ["--delta-ref", "nosuch"]),
    Case("table-format", "table --table 1 --format xml --out {results}", ["--format"]),
    Case("table-preset", "table --table 1 --preset fast --out {results}", ["fast"]),
    Case("table-dataset", "table --table 1 --dataset nosuch --out {results}", ["nosuch"]),
    Case("table-compare-one-row", "table --table 1 --compare okd --out {results}", ["--compare"]),
    Case("table-override-malformed", "table --table 1 --override nonsense --out {results}", ["--override"]),
    # --- sweep ------------------------------------------------------------------------------
    Case("sweep-table-7", "sweep --table 7 --dry-run --out {results}", ["--table", "7"], forbid=["--id"]),
    Case("sweep-seeds-empty-entry", "sweep --table 1 --seeds 0,,1 --dry-run --out {results}", ["--seeds"]),
    Case("sweep-jobs-0", "sweep --table 1 --jobs 0 --dry-run --out {results}", ["--jobs"]),
    Case("sweep-address-without-ray", "sweep --table 1 --address 1.2.3.4 --dry-run --out {results}",
         ["--address"]),
    Case("sweep-ray-with-jobs", "sweep --table 1 --executor ray --jobs 2 --dry-run --out {results}", ["--jobs"]),
    Case("sweep-executor", "sweep --table 1 --executor pbs --out {results}", ["--executor", "pbs"]),
    Case("sweep-preset", "sweep --table 1 --preset fast --dry-run --out {results}", ["fast"]),
    Case("sweep-out-file", "sweep --table 1 --dry-run --out {afile}", ["--out", "{afile}"]),
    # --- plot -------------------------------------------------------------------------------
    Case("plot-smooth", "plot --smooth 1.5 --out {results} --save {tmp}/fig", ["--smooth"]),
    Case("plot-kind", "plot --kind fig9 --out {results}", ["--kind"]),
    Case("plot-format", "plot --format bmp --out {results}", ["--format"]),
    Case("plot-runs-missing", "plot --runs {tmp}/none.json --save {tmp}/fig", ["none.json"]),
    Case("plot-runs-corrupt", "plot --runs {corrupt_record} --save {tmp}/fig", ["{corrupt_record}"]),
    Case("plot-runs-not-a-record", "plot --runs {okd_T} --save {tmp}/fig", ["{okd_T}"]),
    Case("plot-results-empty", "plot --out {results} --save {tmp}/fig", ["runs"]),
    Case("plot-old-results-empty", "plot --results {results} --out-dir {tmp}/fig",
         ["runs", "--results is now --out", "--out-dir is now --save"]),
    Case("plot-results-and-out", "plot --results {results} --out {results}", ["--out", "not allowed with"]),
    Case("plot-results-only-corrupt", "plot --out {corrupt_results} --save {tmp}/fig",
         ["{corrupt_record}"]),
    # --- data -------------------------------------------------------------------------------
    Case("data-synth-out-file", "data synth --data-root {afile}", ["--data-root", "{afile}"]),
    Case("data-synth-old-out-file", "data synth --out {afile}", ["--data-root", "{afile}", "--out is now --data-root"]),
    Case("data-synth-out-nonempty", "data synth --data-root {nonempty}", ["--data-root"]),
    Case("data-synth-without-root", "data synth --n-train 2", ["--data-root", "required"]),
    Case("data-synth-n-train-0", "data synth --data-root {tmp}/new0 --n-train 0", [("--n-train", "n_train")]),
    Case("data-synth-height-neg", "data synth --data-root {tmp}/new1 --height -5", ["height"]),
    Case("data-synth-variant", "data synth --data-root {tmp}/new2 --variant kitti", ["variant", "kitti"]),
    Case("data-check-root-missing", "data check --dataset nyuv2 --data-root {tmp}/nowhere", ["nowhere"]),
    Case("data-check-root-is-file", "data check --dataset nyuv2 --data-root {afile}", ["{afile}"]),
    Case("data-check-without-root", "data check --dataset synthetic", ["--data-root"]),
    Case("data-check-dataset", "data check --dataset kitti --data-root {tmp}", ["dataset", "kitti"]),
    Case("data-check-nan-depth", "data check --dataset nyuv2 --data-root {nan_dir}", ["depth", "0.npy"]),
    Case("data-check-label", "data check --dataset nyuv2 --data-root {label_dir}", ["label", "0.npy"]),
    # --- the command line itself ------------------------------------------------------------
    Case("cli-unknown-command", "frobnicate", ["frobnicate"]),
]


# ---------------------------------------------------------------------------
# the workspace: the bad files the cases point at, made once
# ---------------------------------------------------------------------------

def _synth(root: Path) -> None:
    rc = main(["data", "synth", "--data-root", str(root), "--n-train", "4", "--n-val", "2",
               "--height", "32", "--width", "48"])
    assert rc == 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    w: dict[str, Path] = {"tmp": tmp}
    w["dir"] = tmp / "a-directory"
    w["dir"].mkdir()
    w["binary"] = tmp / "exp.yaml.gz"
    w["binary"].write_bytes(bytes(range(256)) * 4)
    files = {"bad_yaml": "train: [epochs: 3\n", "list_yaml": "- 1\n- 2\n", "preset_int": "preset: 5\n",
             "lr_neg": "train:\n  lr: -1\n", "okd_T": "method:\n  name: okd\n  T: 0.05\n",
             "T_only": "method:\n  T: 0.05\n"}
    for name, text in files.items():
        w[name] = tmp / f"{name}.yaml"
        w[name].write_text(text)
    w["afile"] = tmp / "a-file.txt"
    w["afile"].write_text("not a directory\n")
    w["text_pth"] = tmp / "weights.pth"
    w["text_pth"].write_text("these are not weights\n")
    w["vit_bad"] = tmp / "vit_bad.pth"
    torch.save({"encoder.cls_token": torch.zeros(1, 1, 192), "encoder.pos_embed": torch.zeros(1, 197, 192)},
               w["vit_bad"])
    w["resnet_bad"] = tmp / "resnet_bad.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "backbone.layer1.0.conv1.weight": torch.zeros(1)},
               w["resnet_bad"])
    w["results"] = tmp / "results"
    (w["results"] / "runs").mkdir(parents=True)
    w["corrupt_results"] = tmp / "corrupt-results"
    rec_dir = w["corrupt_results"] / "runs" / "synthetic" / "vit_tiny" / "baseline"
    rec_dir.mkdir(parents=True)
    w["corrupt_record"] = rec_dir / "seed0-0123456789.json"
    w["corrupt_record"].write_text('{"schema": 2, "config": {"seed": 0')  # cut off mid-write
    w["nonempty"] = tmp / "nonempty"
    w["nonempty"].mkdir()
    (w["nonempty"] / "keep.txt").write_text("x")
    if os.geteuid() == 0:
        w["readonly"] = Path("/sys/mtlbench-bad-inputs")  # root writes anywhere but read-only filesystems
    else:
        w["readonly"] = tmp / "readonly"
        w["readonly"].mkdir()
        w["readonly"].chmod(0o500)
    # real-layout data with one bad value each
    clean = tmp / "nyu-clean"
    _synth(clean)
    w["nan_dir"] = tmp / "nyu-nan"
    shutil.copytree(clean, w["nan_dir"])
    f = w["nan_dir"] / "train" / "depth" / "0.npy"
    depth = np.load(f)
    depth.flat[depth.size // 2] = np.nan
    np.save(f, depth)
    w["label_dir"] = tmp / "nyu-label"
    shutil.copytree(clean, w["label_dir"])
    f = w["label_dir"] / "train" / "label" / "0.npy"
    label = np.load(f)
    label.flat[label.size // 2] = 99  # NYUv2 has 13 classes
    np.save(f, label)
    return {k: str(v) for k, v in w.items()}


def _truncated_checkpoint(out: Path) -> None:
    """The smoke run's last.pt, cut off as by a full disk."""
    from mtlbench.config import resolve
    from mtlbench.runs import RunPaths

    paths = RunPaths.for_config(resolve(preset="smoke"), out)
    buf = Path(out / "tmp-full.pt")
    buf.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "model": {"w": torch.zeros(1000)}}, buf)
    paths.last.parent.mkdir(parents=True, exist_ok=True)
    paths.last.write_bytes(buf.read_bytes()[:300])
    buf.unlink()


SETUPS = {"run-resume-truncated": _truncated_checkpoint}


def _matches(text: str, want) -> bool:
    alts = want if isinstance(want, tuple) else (want,)
    return any(a.lower() in text.lower() for a in alts)


def invoke(argv: list[str], capsys, monkeypatch, guard: str | None):
    """Run the CLI in-process: (exit code, stdout, stderr, what the guards saw, escaped exception)."""
    built: list[str] = []
    if guard == "config":
        def no_build(*a, **k):
            built.append("trainer.build")
            raise _Built()
        monkeypatch.setattr(mtlbench.trainer, "build", no_build)
    if guard in ("config", "model"):
        def no_model(self, *a, **k):
            built.append(f"{type(self).__name__}.__init__")
            raise _Built()
        monkeypatch.setattr(mtlbench.api.Method, "__init__", no_model)
    escaped = None
    try:
        rc = main(argv)
    except _Built:
        rc = None
    except SystemExit as exc:  # main should return, but an exit code is an exit code
        rc = exc.code
    except BaseException as exc:  # noqa: BLE001 - what a user would see as a traceback
        import traceback

        rc, escaped = None, "".join(traceback.format_exception(exc))
    out, err = capsys.readouterr()
    return rc, out, err, built, escaped


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ws, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    paths = {**ws, "out": str(out_dir)}
    if case.id in SETUPS:
        SETUPS[case.id](out_dir)
    argv = [a.format(**paths) for a in shlex.split(case.argv)]
    rc, out, err, built, escaped = invoke(argv, capsys, monkeypatch, case.guard)
    text = out + err
    assert escaped is None, f"an exception escaped (a traceback for the user):\n{escaped}"
    assert not built, f"{' and '.join(built)} ran: the error should come before ({case.guard})"
    assert "Traceback" not in text
    assert rc == 2, f"exit code {rc!r}, expected 2; output:\n{text}"
    for want in case.expect:
        want = tuple(w.format(**paths) for w in want) if isinstance(want, tuple) else want.format(**paths)
        assert _matches(text, want), f"the message does not name {want!r}:\n{text}"
    for bad in case.forbid:
        assert bad.lower() not in text.lower(), f"the message says {bad!r}:\n{text}"
    if argv and argv[0] == "run":
        records = list((out_dir / "runs").rglob("*.json")) if (out_dir / "runs").is_dir() else []
        assert not records, f"a failed run left a record: {records}"
    if case.check:
        case.check(ws, out_dir)


def test_the_table_covers_every_subcommand():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {shlex.split(c.argv)[0] for c in CASES}
    assert {"run", "table", "sweep", "plot", "data"} <= commands


# ---------------------------------------------------------------------------
# the real process: stderr, exit code, no traceback
# ---------------------------------------------------------------------------

SUBPROCESS_CASES = [
    ("run --preset smoke --quiet --out {out} --epochs 0", "train.epochs"),
    ("run --preset smoke --quiet --out {out} --config {binary}", "{binary}"),
    ("run --preset smoke --quiet --out {out} --set backbone.pretrained_file={text_pth}", "{text_pth}"),
    ("sweep --table 7 --dry-run --out {results}", "--table"),
]


@pytest.fixture(scope="module")
def subprocess_results(ws, tmp_path_factory):
    """Every case of SUBPROCESS_CASES run as ``python -m mtlbench`` at once (each start imports
    torch, seconds of one core; two run side by side on two cores): ``{index: (proc, paths)}``."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = {}
    for i, (argv, _) in enumerate(SUBPROCESS_CASES):
        paths = {**ws, "out": str(tmp_path_factory.mktemp(f"sub{i}") / "out")}
        cmd = [sys.executable, "-m", "mtlbench", *[a.format(**paths) for a in shlex.split(argv)]]
        started[i] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                      paths)
    done = {}
    for i, (proc, paths) in started.items():
        out, err = proc.communicate(timeout=300)
        done[i] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), paths)
    return done


@pytest.mark.parametrize("index", range(len(SUBPROCESS_CASES)), ids=[f"sub-{i}" for i in range(len(SUBPROCESS_CASES))])
def test_bad_input_in_a_subprocess(index, subprocess_results):
    culprit = SUBPROCESS_CASES[index][1]
    proc, paths = subprocess_results[index]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert culprit.format(**paths) in proc.stderr, proc.stderr
    assert proc.stderr.startswith("mtlbench: error:") or "usage:" in proc.stderr


# ---------------------------------------------------------------------------
# not fatal, but never silent
# ---------------------------------------------------------------------------

def test_corrupted_record_is_named_by_table(ws, capsys):
    """A table built over a directory with a corrupted record says so (it must not vanish)."""
    rc = main(["table", "--table", "1", "--dataset", "synthetic", "--preset", "smoke", "--format", "md",
               "--out", ws["corrupt_results"]])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc in (0, 2)
    assert ws["corrupt_record"] in out + err or Path(ws["corrupt_record"]).name in out + err


def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys):
    """``--resume`` without a checkpoint trains from scratch, and says so (it must not be silent)."""
    rc = main(["run", "--preset", "smoke", "--set", "train.progress=none", "--out", str(tmp_path), "--resume"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc in (0, 2)
    assert "--resume" in err or "scratch" in err.lower() or "nothing to resume" in err.lower(), err


def test_resumed_record_wall_time_covers_its_train_time(tmp_path, capsys):
    """A resumed run's wall_s counts both sessions, so it is never below train_s."""
    from mtlbench.config import resolve
    from mtlbench.trainer import TrainOptions, train

    class Stop(Exception):
        pass

    def stop_after_first(epoch, entry):
        if epoch == 0:
            raise Stop()

    cfg = resolve(preset="smoke", sets=["train.epochs=2"])
    with pytest.raises(Stop):
        train(cfg, TrainOptions(out=tmp_path, quiet=True, on_epoch=stop_after_first))
    rc = main(["run", "--preset", "smoke", "--quiet", "--out", str(tmp_path), "--set", "train.epochs=2",
               "--resume"])
    capsys.readouterr()
    assert rc == 0
    (path,) = (tmp_path / "runs").rglob("*.json")
    timing = json.loads(path.read_text())["timing"]
    assert timing["wall_s"] >= timing["train_s"] > 0
    assert math.isfinite(timing["wall_s"])
