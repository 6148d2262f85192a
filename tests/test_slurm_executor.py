"""The SLURM executor (``mtlbench sweep --executor slurm``): its options, the sbatch script submitit
writes for them, job states, the requeue path, and (with submitit's local executor, selected by
``MTLBENCH_SUBMITIT_CLUSTER=local``) whole sweeps, a failed job and a preempted job end to end.

Needs submitit (in the ``dev`` and ``slurm`` extras); without it these tests skip, except those
checking that its absence is a clear error."""
from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from mtlbench import slurm as sl
from mtlbench import sweep as sw
from mtlbench.cli import main as cli_main
from mtlbench.errors import UserError
from mtlbench.tables import choose_setting, load_spec

FIXTURES = Path(__file__).parent / "fixtures"
ONE = FIXTURES / "sweep" / "one.yaml"
STL_KD = FIXTURES / "sweep" / "stl_kd.yaml"


@pytest.fixture
def submitit():
    return pytest.importorskip("submitit", reason="submitit is not installed (pip install -e \".[slurm]\")")


def _plan(spec_ref, out, seeds=(0,)):
    spec = load_spec(spec_ref)
    return sw.plan_sweep(spec, choose_setting(spec, preset="smoke", out=out), list(seeds))


def _fake_tools(bin_dir: Path, record: Path, sacct_states: str = "") -> None:
    """``srun``, ``sbatch`` (saves the script it is given, answers a job id) and ``sacct`` (prints
    ``sacct_states``) on PATH: submitit submits to them as to a real cluster."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" {record}\necho "Submitted batch job 4242"\n',
        "sacct": f"#!/bin/sh\nprintf 'JobID|State|NodeList\\n{sacct_states}'\n",
        "scontrol": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("4:00:00", 240), ("0:00:30", 1),
                                           ("1-0", 1440), ("1-2:30", 1590), ("2-00:00:01", 2881)])
def test_time_limits_in_sbatch_forms(text, minutes):
    assert sl.parse_time(text) == minutes


@pytest.mark.parametrize("text", ["abc", "", "1h", "1:75:00", "0", "-5", "1:2:3:4"])
def test_bad_time_limits_are_user_errors(text):
    with pytest.raises(UserError, match="--slurm-time"):
        sl.parse_time(text)


def test_bad_flags_exit_2_with_a_message(capsys, tmp_path, monkeypatch):
    base = ["sweep", "--table", str(ONE), "--preset", "smoke", "--out", str(tmp_path), "--executor", "slurm"]
    cases = [
        (["--slurm-time", "abc"], "--slurm-time 'abc' is not a time limit"),
        (["--slurm-gpus", "-1"], "--slurm-gpus -1 must be at least 0"),
        (["--slurm-cpus", "0"], "--slurm-cpus 0 must be at least 1"),
        (["--slurm-array-parallelism", "0"], "at least 1"),
        (["--slurm-extra", "account"], "is not KEY=VALUE"),
        (["--slurm-partition", "a b"], "is not a partition name"),
        (["--jobs", "2"], "--jobs is for the local executor"),
    ]
    for extra, msg in cases:
        assert cli_main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (extra, err)
    # --slurm-* without --executor slurm
    assert cli_main(["sweep", "--table", str(ONE), "--slurm-time", "10", "--dry-run"]) == 2
    assert "--executor slurm" in capsys.readouterr().err
    assert cli_main(base + ["--slurm-gpus", "x"]) == 2  # argparse: not an int
    # the testing override takes only the clusters it knows
    monkeypatch.setenv(sl.CLUSTER_ENV, "pbs")
    assert cli_main(base) == 2
    assert "MTLBENCH_SUBMITIT_CLUSTER='pbs'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_executor_slurm_without_submitit_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    assert cli_main(["sweep", "--table", str(ONE), "--preset", "smoke", "--out", str(tmp_path),
                     "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "--executor slurm needs submitit, which is not installed" in err and ".[slurm]" in err
    assert "Traceback" not in err
    with pytest.raises(UserError, match="needs submitit"):
        sw.run_sweep(_plan(ONE, tmp_path), executor="slurm", echo=lambda s: None)


def test_no_srun_is_a_user_error(submitit, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no SLURM here"):
        sl.make_executor(tmp_path / "%j", sl.SlurmOptions(), "slurm")


def test_sbatch_script_holds_the_job_parameters(submitit, monkeypatch, tmp_path):
    """(a) Two runs submitted for real to a fake sbatch: one array of two, with the partition, time,
    GPUs, CPUs, array parallelism, extra options and submitit's requeue signal."""
    script = tmp_path / "sbatch.sh"
    _fake_tools(tmp_path / "bin", script, "4242_0|PENDING|\\n4242_1|RUNNING|node7\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    plan = _plan(ONE, tmp_path, seeds=(0, 1))
    opts = sl.SlurmOptions(partition="gpu", time_min=sl.parse_time("1:30:00"), gpus=2, cpus=6,
                           array_parallelism=1, requeues=5, extra={"account": "proj"})
    ex = sl.make_executor(tmp_path / "slurm" / "%j", opts, "slurm")
    payloads = {j.key: sw._job_payload(j, "cpu") for j in plan.todo}
    handles = sw.submit_wave(ex, plan.todo, payloads, tmp_path)
    assert [h.job_id for h in handles] == ["4242_0", "4242_1"]
    text = script.read_text()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --array=0-1%1", "#SBATCH --account=proj",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=mtlbench",
                 "#SBATCH --signal=USR2@"]:
        assert line in text, (line, text)
    assert "-m submitit.core._submit" in text
    assert ex._executor.max_num_timeout == 5
    # what each array task runs: its run's config, out, the first attempt
    fn = [submitit.core.utils.DelayedSubmission.load(h.paths.submitted_pickle).function for h in handles]
    assert [f.cfg_data["seed"] for f in fn] == [0, 1] and {f.attempt for f in fn} == {1}
    assert all(isinstance(f, sl.SlurmRun) and f.out == str(tmp_path) for f in fn)
    # states as sacct reports them
    assert [sl.phase(h) for h in handles] == ["queued", "running"]


def test_parameter_mapping_defaults():
    p = sl.executor_parameters(sl.SlurmOptions())
    assert p == {"name": "mtlbench", "timeout_min": 240, "gpus_per_node": 1, "tasks_per_node": 1, "nodes": 1}
    assert "slurm_partition" not in p and "cpus_per_task" not in p


def test_failed_job_messages():
    class FakePaths:
        stderr = Path("/x/123_0_log.err")

    class FakeJob:
        paths = FakePaths()

    exc = RuntimeError("Job (task=0) failed during processing with trace:\n----------------------\n"
                       "Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: boom\n"
                       "----------------------\nYou can check full logs with 'job.stderr(0)'")
    assert sl.error_line(exc, FakeJob()) == "RuntimeError: boom (log: /x/123_0_log.err)"
    assert sl.error_line(RuntimeError("has not produced any output (state: INTERRUPTED)\nmore")) == \
        "has not produced any output (state: INTERRUPTED)"


# ---------------------------------------------------------------------------
# (c) the requeue path, in this process
# ---------------------------------------------------------------------------

def test_checkpoint_resubmits_the_same_run_resuming(submitit, monkeypatch, tmp_path):
    plan = _plan(ONE, tmp_path)
    job = plan.todo[0]
    run = sl.SlurmRun(sw._job_payload(job, "cpu"), str(tmp_path), job.describe())
    delayed = run.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    nxt = delayed.function
    assert isinstance(nxt, sl.SlurmRun) and nxt is not run
    assert (nxt.cfg_data, nxt.out, nxt.label, nxt.attempt) == (run.cfg_data, run.out, run.label, 2)
    assert delayed.args == () and delayed.kwargs == {}
    assert nxt.checkpoint().function.attempt == 3 and run.attempt == 1
    # the resubmitted job trains the same run (same identity) with resume
    from mtlbench import trainer

    seen = []
    monkeypatch.setattr(trainer, "train", lambda cfg, opts: seen.append((cfg.hash, opts.resume, opts.out)) or
                        {"_path": "rec.json"})
    assert delayed.result() == {"status": "done", "record": "rec.json", "attempt": 2}
    assert seen == [(job.config.hash, True, tmp_path)]


def test_preemption_signal_unwinds_the_run_then_hands_over_to_submitit(submitit, monkeypatch, tmp_path):
    """The signal becomes a KeyboardInterrupt inside training (the trainer keeps its checkpoint and
    releases its lock as on Ctrl-C); only then does submitit's handler run (checkpoint(), requeue)."""
    plan = _plan(ONE, tmp_path)
    run = sl.SlurmRun(sw._job_payload(plan.todo[0], "cpu"), str(tmp_path), "r")
    events = []

    def fake_execute(cfg, out, quiet=False):
        try:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(5)
            events.append("not interrupted")
        finally:
            events.append("unwound")
        return {}

    class Requeued(SystemExit):
        pass

    def submitit_handler(signum, frame):
        events.append(("handler", signum, run.checkpoint().function.attempt))
        raise Requeued(144)

    monkeypatch.setattr(sw, "execute", fake_execute)
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(Requeued):
            run()
        assert events == ["unwound", ("handler", signal.SIGUSR2, 2)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)


# ---------------------------------------------------------------------------
# end to end with submitit's local executor
# ---------------------------------------------------------------------------

def test_failed_job_is_reported_with_its_error_and_its_dependants_skipped(submitit, monkeypatch, tmp_path):
    """(d) stl's job fails (its config names a method that does not exist): reported failed with the
    error and its log; kd_mtl, which loads it, is never submitted."""
    monkeypatch.setenv(sl.CLUSTER_ENV, "local")
    plan = _plan(STL_KD, tmp_path)
    assert [j.method for j in plan.todo] == ["stl", "kd_mtl"]
    payloads = {j.key: sw._job_payload(j, "cpu") for j in plan.todo}
    payloads[plan.todo[0].key]["method"]["name"] = "no_such_method"
    lines = []
    res = sw.run_slurm(plan.todo, payloads, tmp_path, lines.append, options=sl.SlurmOptions(gpus=0))
    stl, kd = res.outcomes
    assert (stl.job.method, stl.status, kd.job.method, kd.status) == ("stl", "failed", "kd_mtl", "skipped")
    assert "unknown method 'no_such_method'" in stl.detail and "(log: " in stl.detail and stl.ref
    assert Path(stl.detail.split("(log: ")[1].rstrip(")")).is_file()
    assert "1 failed, 1 skipped" in res.summary() and res.failed == [stl, kd]
    assert any("FAILED (job" in ln for ln in lines), lines
    assert sum("submitted" in ln for ln in lines) == 1  # the second wave had nothing left to submit
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_local_cluster_sweep_of_two_runs(submitit, monkeypatch, tmp_path, capsys):
    """(b) Two smoke runs as one batch of local jobs: both trained, records written, the summary
    says done for each with its job; a second sweep skips them."""
    monkeypatch.setenv(sl.CLUSTER_ENV, "local")
    args = ["sweep", "--table", str(ONE), "--preset", "smoke", "--seeds", "0,1", "--out", str(tmp_path),
            "--device", "cpu", "--executor", "slurm", "--slurm-gpus", "0", "--slurm-time", "20"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "submitted 2 runs to local" in out and "sweep: 2 trained" in out, out
    done = [ln for ln in out.splitlines() if ln.startswith("  done: baseline")]
    assert len(done) == 2 and all("(job " in ln for ln in done), out
    recs = sorted((tmp_path / "runs").rglob("*.json"))
    assert [json.loads(r.read_text())["seed"] for r in recs] == [0, 1]
    plan = _plan(ONE, tmp_path, seeds=(0, 1))
    assert sorted(j.record_path(tmp_path) for j in plan.jobs) == recs and not plan.todo
    assert list((tmp_path / "logs" / "slurm").iterdir())  # submitit's folders
    assert not list(tmp_path.rglob("*.lock"))
    assert cli_main(args) == 0
    assert "2 recorded (skipped), 0 to run" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.slow
def test_preempted_local_job_requeues_and_resumes_to_the_same_metrics(submitit, monkeypatch, tmp_path):
    """(c) end to end: the job gets submitit's preemption signal after its first checkpoint; it
    requeues (the local executor restarts it with what checkpoint() returned), resumes from the
    checkpoint and records the metrics of an uninterrupted run of the same config."""
    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/<pid>/task/<pid>/children (Linux) to find the job's process")
    from mtlbench.config import from_dict

    monkeypatch.setenv(sl.CLUSTER_ENV, "local")
    plan = _plan(ONE, tmp_path / "a")
    job = plan.todo[0]
    data = sw._job_payload(job, "cpu")
    data["train"]["epochs"] = 6
    cfg = from_dict(data)
    ex = sl.make_executor(tmp_path / "slurm" / "%j", sl.SlurmOptions(gpus=0, time_min=20), "local")
    handle = sw.submit_wave(ex, [job], {job.key: data}, tmp_path / "a")[0]
    from mtlbench.records import RunPaths

    last = RunPaths.for_config(cfg, tmp_path / "a").last
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and not handle.done():
        time.sleep(0.05)
    assert last.exists(), handle.stderr()
    tasks = _children(handle._process.pid)
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)
    result = handle.result()
    assert result["status"] == "done" and result["attempt"] == 2, handle.stdout()
    log = handle.stdout() + (handle.stderr() or "")
    assert "stopped by signal" in log and "attempt 2 of" in log and "resuming from its checkpoint" in log, log
    rec = json.loads(Path(result["record"]).read_text())
    # the same run, uninterrupted, in this process
    ref = sw.execute(cfg, tmp_path / "b", quiet=True)
    ref_rec = json.loads(Path(ref["record"]).read_text())
    assert rec["config_hash"] == ref_rec["config_hash"] == cfg.hash
    # to float rounding: the reference trains in the test's process, the job in its own (thread
    # counts may differ); the differences seen were below 1e-6 relative
    flat = {f"{t}/{k}": v for t, ms in rec["metrics"].items() for k, v in ms.items()}
    ref_flat = {f"{t}/{k}": v for t, ms in ref_rec["metrics"].items() for k, v in ms.items()}
    assert flat == pytest.approx(ref_flat, rel=1e-5, abs=1e-6)
