"""End to end: the CLI on the smoke preset, the record schema, SIGKILL and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mtlbench.cli import main

RUN = ["run", "--method", "baseline", "--backbone", "vit_tiny", "--preset", "smoke", "--quiet"]


def _record(out: Path) -> dict:
    recs = list((out / "runs").rglob("*.json"))
    assert len(recs) == 1, recs
    return json.loads(recs[0].read_text())


def test_cli_run_writes_a_complete_record(tmp_path, capsys):
    out = tmp_path / "res"
    assert main([*RUN, "--out", str(out), "--set", "train.epochs=2"]) == 0
    rec = _record(out)
    # identity and path
    p = next((out / "runs").rglob("*.json"))
    assert p.relative_to(out / "runs").parts[:3] == ("synthetic", "vit_tiny", "baseline")
    assert p.name == f"seed0-{rec['config_hash']}.json"
    for key in ("schema", "method", "backbone", "dataset", "dataset_family", "preset", "seed",
                "config", "config_hash", "metrics", "history", "params", "timing", "memory",
                "device", "versions", "git_commit", "report", "checkpoint", "tasks"):
        assert key in rec, key
    assert rec["preset"] == "smoke" and rec["dataset_family"] == "nyuv2"
    assert set(rec["metrics"]) == {"semseg", "depth", "normal"}
    assert set(rec["metrics"]["normal"]) == {"mean", "median", "within_11.25", "within_22.5", "within_30"}
    assert rec["report"] == {"rule": "last", "epoch": 1}
    assert len(rec["history"]["epochs"]) == 2 and rec["history"]["steps"]
    assert rec["params"]["deployable"] == rec["params"]["training_system"] > 1_000_000
    assert rec["timing"]["train_images_per_s"] > 0
    assert {"torch", "timm", "mtlbench"} <= set(rec["versions"])
    assert (out / rec["checkpoint"]).is_file()
    assert not list((out / "checkpoints").rglob("last.pt")), "last.pt is removed at the end"
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"

    # the same identity again is skipped with a message, --force runs it
    capsys.readouterr()
    assert main([*RUN, "--out", str(out), "--set", "train.epochs=2"]) == 0
    assert "skipped" in capsys.readouterr().out
    created = rec["created"]
    assert main([*RUN, "--out", str(out), "--set", "train.epochs=2", "--force"]) == 0
    assert _record(out)["metrics"] == rec["metrics"], "same seed on CPU gives the same metrics"
    assert _record(out)["created"] >= created


def test_stl_reports_each_task_from_its_own_network(tmp_path):
    out = tmp_path / "res"
    assert main(["run", "--method", "stl", "--backbone", "vit_tiny", "--preset", "smoke",
                 "--quiet", "--out", str(out)]) == 0
    rec = _record(out)
    assert set(rec["metrics"]) == {"semseg", "depth", "normal"}
    # three independent networks: three encoders' worth of parameters
    assert rec["params"]["deployable"] > 2.5 * 5_500_000


@pytest.mark.parametrize("argv,needle", [
    (["run", "--method", "basline"], "did you mean 'baseline'"),
    (["run", "--backbone", "vit_tiny", "--set", "train.epochs=x"], "train.epochs"),
    (["run", "--preset", "nope"], "unknown preset"),
    (["run", "--config", "/no/such.yaml"], "does not exist"),
    (["run", "--dataset", "nyuv2", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["run", "--set", "dataset.image_size=[30,40]"], "divisible by 16"),
    (["run", "--device", "cuda:0"] if not __import__("torch").cuda.is_available()
     else ["run", "--device", "nonsense"], "device"),
])
def test_cli_user_errors_exit_2_without_traceback(argv, needle, tmp_path, capsys):
    rc = main([*argv, "--preset", "smoke", "--out", str(tmp_path)] if "--preset" not in argv
              else [*argv, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err
    assert "Traceback" not in err


def test_bad_flag_exits_2(capsys):
    assert main(["run", "--epochs", "many"]) == 2


def test_print_config_dumps_yaml(capsys):
    assert main(["run", "--preset", "smoke", "--print-config", "--set", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "seed: 5" in out and "config hash:" in out


def test_debug_shows_traceback(tmp_path):
    from mtlbench.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "run", "--method", "basline", "--out", str(tmp_path)])


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mtlbench.config import resolve
    from mtlbench.trainer import TrainOptions, train
    cfg = resolve(preset="smoke", sets=["train.epochs=3", "train.max_steps_per_epoch=null"])
    def on_step(epoch, i):
        if epoch == 1 and i == 0:  # in the middle of the second epoch
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, TrainOptions(out=Path(sys.argv[1]), quiet=True, on_step=on_step))
""")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(killed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list((killed / "checkpoints").rglob("last.pt")), "epoch-1 checkpoint survives the kill"
    assert not (killed / "runs").exists() or not list((killed / "runs").rglob("*.json"))

    args = ["run", "--preset", "smoke", "--quiet", "--set", "train.epochs=3",
            "--set", "train.max_steps_per_epoch=null"]
    # without --resume the interrupted run is not silently overwritten
    assert main([*args, "--out", str(killed)]) == 2
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    a, b = _record(killed), _record(fresh)
    assert a["config_hash"] == b["config_hash"]
    assert a["metrics"] == b["metrics"]
    assert [e["train_loss"] for e in a["history"]["epochs"]] == \
        [e["train_loss"] for e in b["history"]["epochs"]]
