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


def _strict(text: str):
    """Parse strict JSON: a bare NaN or Infinity token fails."""
    def bad(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=bad)


def _record(out: Path) -> dict:
    recs = list((out / "runs").rglob("*.json"))
    assert len(recs) == 1, recs
    rec = _strict(recs[0].read_text())
    rec["_path"] = str(recs[0])
    return rec


def _cfg_of(rec: dict):
    """The resolved config a record was trained with."""
    from mtlbench.config import from_dict

    return from_dict(rec["config"])


def _rows(rec: dict, key: str) -> list[dict]:
    """The JSON Lines log a schema-2 record points at (``steps_file`` / ``epochs_file``)."""
    path = Path(rec["_path"]).parent / rec["history"][key]
    return [_strict(line) for line in path.read_text().splitlines()]


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
    assert rec["schema"] == 2 and "steps" not in rec["history"]
    assert len(rec["history"]["epochs"]) == 2
    steps = _rows(rec, "steps_file")  # smoke: 2 steps per epoch, every step logged
    assert [r["step"] for r in steps] == [0, 1, 2, 3] and all("loss/semseg" in r for r in steps)
    epochs = _rows(rec, "epochs_file")
    assert [e["epoch"] for e in epochs] == [0, 1] and epochs[-1]["metrics"][""] == rec["metrics"]
    assert rec["schedule"] == {"epochs": 2, "leading_epochs": 0, "steps_per_epoch": 2}
    assert rec["tasks"]["semseg"]["primary"] == "miou" and rec["tasks"]["depth"]["precision"]["abs_err"] == 4
    assert rec["params"]["deployable"] == rec["params"]["training_system"] > 1_000_000
    assert rec["timing"]["train_images_per_s"] > 0
    # the cost split: waiting for batches (inside train_s) and evaluation (outside it), per epoch and in all
    t = rec["timing"]
    assert 0 <= t["data_s"] < t["train_s"] and t["eval_s"] > 0 and t["wall_s"] >= t["train_s"] + t["eval_s"]
    assert all(0 <= e["data_s"] <= e["time_s"] and e["eval_s"] > 0 for e in epochs)
    assert t["data_s"] == pytest.approx(sum(e["data_s"] for e in epochs), abs=0.02)
    assert {"torch", "timm", "mtlbench"} <= set(rec["versions"])
    # where it ran, as far as reduction order goes (tables check paired runs on these)
    assert rec["device"]["amp"] in ("fp32", "bf16") and rec["device"]["threads"] >= 1
    assert rec["device"]["processor"] and rec["device"]["processor"] != "x86_64" or \
        not Path("/proc/cpuinfo").exists()
    assert "cpu_capability" in rec["device"]
    # per task, the run against the input-blind reference of its dataset (issue 22)
    from mtlbench.reference import learned_from_metrics, reference_for_dataset
    from mtlbench.trainer import build

    ds = build(_cfg_of(rec), with_data=False).dataset
    want = learned_from_metrics(rec["metrics"], reference_for_dataset(ds), ds.tasks())
    assert set(rec["learned"]) == {"semseg", "depth", "normal"}
    for task, lr in want.items():
        got = rec["learned"][task]
        assert got["metric"] == rec["tasks"][task]["primary"] and got["value"] == rec["metrics"][task][got["metric"]]
        assert got["improvement"] == pytest.approx(lr.improvement) and got["degenerate"] == lr.degenerate
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


#: the run both scripts interrupt: three epochs on the shrunk ViT (the whole smoke split each epoch)
INTERRUPTED_SETS = ["train.epochs=3", "train.max_steps_per_epoch=null"]

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from mtlbench.config import resolve
    from mtlbench.trainer import TrainOptions, train
    cfg = resolve(preset="smoke", sets=sys.argv[2:])
    def on_step(epoch, i):
        if epoch == 1 and i == 0:  # in the middle of the second epoch
            os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, TrainOptions(out=Path(sys.argv[1]), quiet=True, on_step=on_step))
""")

# SIGTERM (what `timeout`, a cluster scheduler and a SLURM preemption send) through the CLI
TERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import mtlbench.trainer as T
    from mtlbench.cli import main
    step = T.Training.step
    def stepping(self, epoch, i, batch):
        if epoch == 1 and i == 0:  # in the middle of the second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, epoch, i, batch)
    T.Training.step = stepping
    sets = [a for s in sys.argv[2:] for a in ("--set", s)]
    sys.exit(main(["run", "--preset", "smoke", "--quiet", "--out", sys.argv[1], *sets]))
""")


# SIGTERM in the middle of writing a checkpoint: the second epoch's last.pt, after its first
# 4 KiB have gone to the temporary file (the handler raises where the process is, inside torch.save)
TERM_IN_SAVE_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import mtlbench.records as R
    from mtlbench.cli import main
    write, seen, sent = R._WriteErrors.write, [], []
    def writing(self, data):
        name = os.path.basename(getattr(self.fh, "name", ""))
        if name.startswith(".last.pt.") and name not in seen:
            seen.append(name)
        if len(seen) == 2 and not sent and self.fh.tell() >= 4096:
            sent.append(self.fh.tell())
            print("sigterm-at", self.fh.tell(), file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
        return write(self, data)
    R._WriteErrors.write = writing
    sets = [a for s in sys.argv[2:] for a in ("--set", s)]
    sys.exit(main(["run", "--preset", "smoke", "--quiet", "--out", sys.argv[1], *sets]))
""")


def test_sigterm_during_a_checkpoint_write_resumes_to_the_uninterrupted_run(tmp_path, capsys, monkeypatch):
    """Killed while last.pt is half-written: exit 143 with no traceback, no temporary file, the
    previous checkpoint intact; --resume ends with the uninterrupted run's metrics and step log."""
    from conftest import shrink_sets

    import torch

    sets = [*INTERRUPTED_SETS, *shrink_sets("vit_tiny")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = tmp_path / "killed"
    script = tmp_path / "term_in_save.py"
    script.write_text(TERM_IN_SAVE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(killed), *sets], env=env,
                          capture_output=True, text=True, timeout=300)
    assert "sigterm-at" in proc.stderr, "the signal was sent inside the second checkpoint's write"
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "terminated" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(killed.rglob("*.tmp")), "no temporary file left behind"
    assert not list(killed.rglob("*.lock")), "the run's lock is released"
    (last,) = list((killed / "checkpoints").rglob("last.pt"))
    state = torch.load(last, map_location="cpu", weights_only=False)  # whole: it loads
    assert state["epoch"] == 1  # epochs done: the first one's checkpoint
    assert state["tracker_run_id"].startswith("baseline-seed0-")  # what a resumption's trackers go on under
    assert state["total_epochs"] >= 2  # what `mtlbench status` shows as "epoch 1/N"
    from mtlbench import provenance

    first = provenance.source_commit()  # the commit of the code the killed process trained with
    assert state["source_commits"] == [first]
    assert not (killed / "runs").exists() or not list((killed / "runs").rglob("*.json"))

    args = ["run", "--preset", "smoke", "--quiet", *[a for s in sets for a in ("--set", s)]]
    capsys.readouterr()
    monkeypatch.setattr(provenance, "source_commit", lambda *a, **k: "resumed-under-other-code")
    assert main([*args, "--out", str(killed), "--resume"]) == 0
    monkeypatch.undo()
    # said even with --quiet: a sweep's log (appended to by every attempt) shows which attempt resumed
    err = capsys.readouterr().err
    assert "resuming" in err and "after epoch 1" in err and str(last) in err, err
    fresh = tmp_path / "fresh"
    assert main([*args, "--out", str(fresh)]) == 0
    a, b = _record(killed), _record(fresh)
    assert a["metrics"] == b["metrics"]
    assert _rows(a, "steps_file") == _rows(b, "steps_file")
    assert not list(killed.rglob("*.tmp"))
    # provenance: the code that began the run, and every attempt's when they differ
    assert a["git_commit"] == first
    assert a["git_commit_attempts"] == [first, "resumed-under-other-code"]
    assert b["git_commit"] == first and "git_commit_attempts" not in b


def test_the_record_names_the_commit_the_run_started_with(tmp_path, monkeypatch):
    """A long run outlives commits to its checkout: its record names the code it trained with (the
    commit when it started), not the one checked out when the record is written."""
    from mtlbench import provenance
    from mtlbench.trainer import Training

    now = {"commit": "commit-at-start"}
    monkeypatch.setattr(provenance, "source_commit", lambda *a, **k: now["commit"])
    real = Training.checkpoint

    def checkpoint(self, epoch):  # after the first epoch the checkout moves on
        real(self, epoch)
        now["commit"] = "commit-checked-out-later"

    monkeypatch.setattr(Training, "checkpoint", checkpoint)
    out = tmp_path / "res"
    assert main([*RUN, "--out", str(out), "--set", "train.epochs=2"]) == 0
    (path,) = [p for p in (out / "runs").rglob("*.json")]
    rec = json.loads(path.read_text())
    assert now["commit"] == "commit-checked-out-later"  # the checkout did move during the run
    assert rec["git_commit"] == "commit-at-start" and "git_commit_attempts" not in rec


@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_interrupted_mid_epoch_then_resume_matches_uninterrupted(tmp_path, how):
    from conftest import shrink_sets

    import torch

    sets = [*INTERRUPTED_SETS, *shrink_sets("vit_tiny")]
    # the interrupted process trains on as many threads as this one resumes on (reduction order)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = tmp_path / "killed"
    script = tmp_path / "interrupt.py"
    script.write_text(KILL_SCRIPT if how == "sigkill" else TERM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(killed), *sets], env=env,
                          capture_output=True, text=True, timeout=300)
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    else:  # handled as SIGINT is: exit 128 + 15, a message, no traceback, nothing left half-written
        assert proc.returncode == 143, proc.stderr[-2000:]
        assert "terminated" in proc.stderr and "Traceback" not in proc.stderr
        assert not list(killed.rglob("*.tmp")), "no temporary file left behind"
        assert not list(killed.rglob("*.lock")), "the run's lock is released"
    assert list((killed / "checkpoints").rglob("last.pt")), "epoch-1 checkpoint survives the interruption"
    assert not (killed / "runs").exists() or not list((killed / "runs").rglob("*.json"))

    args = ["run", "--preset", "smoke", "--quiet", *[a for s in sets for a in ("--set", s)]]
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
    # the step log of the resumed run holds each step once, exactly as the uninterrupted run's
    assert _rows(a, "steps_file") == _rows(b, "steps_file")
    # wall time counts the interrupted process's time too
    assert a["timing"]["wall_s"] >= a["timing"]["train_s"]


def test_diverging_run_stops_keeps_the_finite_checkpoint_and_writes_no_record(tmp_path, capsys):
    """A huge learning rate: the run stops with exit 2 at the first non-finite loss or gradient,
    names where, keeps the last (finite) checkpoint, writes no record; --resume loads it."""
    import torch

    out = tmp_path / "res"
    args = [*RUN, "--out", str(out), "--set", "train.epochs=4", "--set", "train.lr=1e12",
            "--set", "train.scheduler=constant"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "diverged" in err and "epoch" in err and "Traceback" not in err
    assert "train.lr" in err  # what to try
    assert not list((out / "runs").rglob("*.json")), "a diverged run is never recorded"
    lasts = list((out / "checkpoints").rglob("last.pt"))
    if lasts:  # an epoch finished before the divergence: its checkpoint is finite and resumable
        state = torch.load(lasts[0], weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        assert main([*args, "--resume"]) == 2  # resumes, and diverges again at the same place
        err = capsys.readouterr().err
        assert "resuming" in err and "after epoch" in err and "diverged" in err, err


def test_resume_without_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["run", "--method", "baseline", "--preset", "smoke", "--out", str(out), "--resume"]) == 0
    assert "starting from scratch" in capsys.readouterr().err


def test_truncated_checkpoint_on_resume_is_a_clear_error(tmp_path, capsys):
    from mtlbench.config import resolve
    from mtlbench.runs import RunPaths

    out = tmp_path / "res"
    cfg = resolve(preset="smoke", flags=[("method.name", "baseline", "--method")])
    last = RunPaths.for_config(cfg, out).last
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    assert main([*RUN, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupted" in err and "--force" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["file", "readonly"])
def test_out_that_is_a_file_or_read_only_is_a_clear_error(kind, tmp_path, capsys):
    out = tmp_path / "res"
    if kind == "file":
        out.write_text("x")
    else:
        out.mkdir()
        out.chmod(0o500)
        if os.access(out, os.W_OK):  # root ignores permissions: nothing to test here
            out.chmod(0o700)
            out = tmp_path / "res" / "f"
            out.write_text("x")
    assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err


def test_recipe_options_best_train_loss_constant_schedule_adam(tmp_path):
    """report: best_train_loss picks the lowest mean training loss (never a val metric);
    scheduler: constant keeps the lr; optimizer: adam is Adam."""
    out = tmp_path / "res"
    assert main([*RUN, "--out", str(out), "--set", "train.epochs=3", "--set", "train.report=best_train_loss",
                 "--set", "train.scheduler=constant", "--set", "train.optimizer=adam",
                 "--set", "train.lr=0.0003", "--set", "train.eval_every=1"]) == 0
    rec = _record(out)
    epochs = _rows(rec, "epochs_file")
    best = min(epochs, key=lambda e: sum(e["train_loss"].values()))
    assert rec["report"] == {"rule": "best_train_loss", "epoch": best["epoch"]}
    assert rec["metrics"] == best["metrics"][""]
    assert all(e["lr"] == pytest.approx(3e-4) for e in epochs)


def test_delta_against_the_reference_run_and_loading_a_trained_method(tmp_path):
    import torch

    from mtlbench.delta import delta
    from mtlbench.runs import load_trained_method
    from mtlbench.delta import delta_reference, reference_delta

    assert delta_reference() == "baseline"
    out = tmp_path / "res"
    assert main([*RUN, "--out", str(out)]) == 0
    base = _record(out)
    assert reference_delta(base, out) == (None, "this is the baseline run")
    # one smoke epoch leaves some metrics at 0 (Δ undefined): give the reference non-zero ones
    for ms in base["metrics"].values():
        for k, v in ms.items():
            ms[k] = v or 1.0
    Path(base["_path"]).write_text(json.dumps({k: v for k, v in base.items() if k != "_path"}))
    assert main(["run", "--method", "uw", "--backbone", "vit_tiny", "--preset", "smoke", "--quiet",
                 "--out", str(out)]) == 0
    uw = _strict(next((out / "runs").rglob("uw/*.json")).read_text())
    d, ref = reference_delta(uw, out)
    dirs = {t: {k: v == "higher" for k, v in i["metrics"].items()} for t, i in uw["tasks"].items()}
    assert ref.endswith(Path(base["_path"]).name)
    assert d == pytest.approx(delta(uw["metrics"], base["metrics"], dirs))
    # a finished run's method reloads with its final weights
    uw["_path"] = str(next((out / "runs").rglob("uw/*.json")))
    m = load_trained_method(uw)
    final = torch.load(out / uw["checkpoint"], weights_only=False)["model"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, final[k]), k
    assert uw["timing"]["inference_ms_per_image"] > 0  # latency of the deployable model was measured


def test_records_stay_small_however_long_the_run(tmp_path):
    """Per-step rows live in the step log; the record keeps at most RECORD_EPOCH_ROWS epoch rows."""
    from mtlbench.records import RECORD_EPOCH_ROWS, compact_epochs

    epochs = [{"epoch": i, "train_loss": {"a": 1.0 / (i + 1), "b": 2.0}, "lr": 1e-4, "time_s": 1.0,
               "logs": {"omega": {"a": [0.1] * 12}}, "metrics": {"": {"a": {"m": float(i)}}, "stl": {}}}
              for i in range(300)]
    rows = compact_epochs(epochs, {123, 299})
    assert len(rows) <= RECORD_EPOCH_ROWS
    assert {123, 299, 0} <= {r["epoch"] for r in rows}
    assert all("logs" not in r for r in rows)
    assert len(json.dumps(rows)) < 20_000
