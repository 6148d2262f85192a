"""Experiment trackers (train.loggers): what TensorBoard and offline W&B received, read back."""
from __future__ import annotations

import json

import pytest

from mtlbench.cli import main

from conftest import shrink_argv

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(out, *sets):
    argv = ["run", "--method", "uw", "--preset", "smoke", "--device", "cpu", "--quiet", *shrink_argv("vit_tiny"),
            "--set", "train.epochs=2", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    path = next((out / "runs").rglob("seed0-*.json"))
    return json.loads(path.read_text()), path


def _steps(path):
    return [json.loads(line) for line in path.with_suffix("").with_suffix(".steps.jsonl").read_text().splitlines()] \
        if path.with_suffix(".steps.jsonl").exists() else None


def test_tensorboard_mirrors_steps_epochs_and_final_metrics(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec, path = _run(tmp_path / "res", "train.loggers=[tensorboard]")
    tb = tmp_path / "res" / "trackers" / "synthetic" / "vit_tiny" / "uw" / path.stem / "tensorboard"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    steps = [json.loads(x) for x in path.with_name(path.stem + ".steps.jsonl").read_text().splitlines()]
    # every step-log row, at its step, with the same values
    loss = acc.Scalars("loss/semseg")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    assert [e.value for e in loss] == pytest.approx([r["loss/semseg"] for r in steps], rel=1e-6)
    logged = {k for r in steps for k in r} - {"step", "epoch"}
    assert logged <= tags and len(logged) > 3  # the losses and UW's own logs
    # the last epoch's validation metrics are the record's
    miou = acc.Scalars("val/semseg/miou")
    assert miou[-1].value == pytest.approx(rec["metrics"]["semseg"]["miou"], rel=1e-6)
    assert {"train/loss/depth", "train/lr", "time/time_s"} <= tags
    # the record is what it is without trackers: the trackers are no part of the identity
    rec2, path2 = _run(tmp_path / "plain")
    assert path2.name == path.name and rec2["config_hash"] == rec["config_hash"]
    assert rec2["metrics"] == rec["metrics"]
    assert not (tmp_path / "plain" / "trackers").exists()


def test_wandb_offline_run_holds_the_history_and_summary(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rec, path = _run(tmp_path / "res", "train.loggers=[wandb]")
    root = tmp_path / "res" / "trackers" / "synthetic" / "vit_tiny" / "uw" / path.stem / "wandb"
    files = list(root.rglob("*.wandb"))
    assert len(files) == 1, files
    history, summary, config = _read_wandb(files[0])
    steps = [json.loads(x) for x in path.with_name(path.stem + ".steps.jsonl").read_text().splitlines()]
    logged = [h for h in history if "loss/semseg" in h]
    assert [h["_step"] for h in logged] == [r["step"] for r in steps]
    assert [h["loss/semseg"] for h in logged] == pytest.approx([r["loss/semseg"] for r in steps], rel=1e-6)
    assert summary["final/semseg/miou"] == pytest.approx(rec["metrics"]["semseg"]["miou"], rel=1e-6)
    value = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in config.items()}
    assert value["method"]["name"] == "uw" and value["seed"] == 0


def _wandb_records(path):
    """The records of a W&B run file: its log format is LevelDB's (a 7-byte file header, 32 KiB
    blocks of chunks, each with a 4-byte checksum, a 2-byte length and a 1-byte type: full,
    first, middle, last); each record is a ``wandb_internal_pb2.Record``."""
    import struct

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    return out


def _read_wandb(path):
    """History rows, the summary and the config of an offline W&B run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    history, summary, config = [], {}, {}
    for data in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "run":
            for item in rec.run.config.update:
                key = item.key or "/".join(item.nested_key)
                config[key] = json.loads(item.value_json)
    return history, summary, config


def test_an_unknown_logger_is_refused_at_resolution(tmp_path, capsys):
    rc = main(["run", "--preset", "smoke", "--set", "train.loggers=[mlflow]", "--out", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.loggers" in err and "tensorboard" in err


@pytest.mark.parametrize("start_step", [0, 3])
def test_a_run_trained_again_replaces_its_tensorboard_curves(tmp_path, start_step):
    """A run started again (--force: from step 0) or resumed (from its checkpoint's step) leaves
    each step once in TensorBoard, with the values of the process that wrote it last."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mtlbench.trackers import _TensorBoard

    first = _TensorBoard(tmp_path, {"seed": 0}, 0)
    for step in range(6):
        first.scalars(step, {"loss/depth": 1.0})
    first.close()
    second = _TensorBoard(tmp_path, {"seed": 0}, start_step)
    for step in range(start_step, 6):
        second.scalars(step, {"loss/depth": 2.0})
    second.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("loss/depth")
    assert [e.step for e in events] == list(range(6))
    assert [e.value for e in events] == [1.0] * start_step + [2.0] * (6 - start_step)


def test_a_run_trained_again_is_a_new_wandb_run_and_a_resumed_one_keeps_its_id(tmp_path, monkeypatch):
    """--force trains a run again from scratch: W&B gets a new run id (the same id would append the
    new curves to the old run's, or be refused online), while a resumed run goes on under its id."""
    pytest.importorskip("wandb", reason="pip install wandb")
    from mtlbench.trainer import tracker_run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "res"
    rec, path = _run(out, "train.loggers=[wandb]")
    argv = ["run", "--method", "uw", "--preset", "smoke", "--device", "cpu", "--quiet", *shrink_argv("vit_tiny"),
            "--set", "train.epochs=2", "--out", str(out), "--set", "train.loggers=[wandb]", "--force"]
    assert main(argv) == 0
    root = out / "trackers" / "synthetic" / "vit_tiny" / "uw" / path.stem / "wandb"
    runs = sorted(p.name for p in root.rglob("offline-run-*") if p.is_dir())
    assert len(runs) == 2, runs
    base = f"uw-seed0-{rec['config_hash']}"
    ids = {name.split("-", 3)[3] for name in runs}  # offline-run-<date>_<time>-<id>
    assert len(ids) == 2 and all(i.startswith(base + "-") for i in ids), ids
    # the id a checkpoint keeps is the one its resumption uses; older checkpoints (no id) use the base
    assert tracker_run_id(base, {"tracker_run_id": base + "-abc123"}) == base + "-abc123"
    assert tracker_run_id(base, {}) == base
    fresh = {tracker_run_id(base, None) for _ in range(20)}
    assert len(fresh) == 20 and all(f.startswith(base + "-") and len(f) == len(base) + 7 for f in fresh)
