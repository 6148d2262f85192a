"""The run lock: exclusive across processes, gone with its holder, taken by every way of training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mtlbench.cli import main
from mtlbench.runs import RunLock, RunLocked, RunPaths
from mtlbench.cli.run import parse_run_argv

HOLD = textwrap.dedent("""
    import sys, time
    from mtlbench.runs import RunLock
    lock = RunLock(sys.argv[1], "x/seed0-abc").acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def _holder(path):
    """A child process that takes the lock at ``path`` and sleeps; returns it once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_exclusive_and_removed(tmp_path):
    path = tmp_path / "checkpoints" / "x" / "seed0-abc.lock"
    with RunLock(path, "x/seed0-abc") as lock:
        assert lock.held
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(RunLocked, match="being trained by another process"):
            RunLock(path, "x/seed0-abc").acquire()
    assert not path.exists()
    with RunLock(path, "x/seed0-abc"):  # free again
        pass


def test_lock_held_by_another_process_names_it_and_dies_with_it(tmp_path):
    path = tmp_path / "seed0-abc.lock"
    proc = _holder(path)
    try:
        with pytest.raises(RunLocked) as exc:
            RunLock(path, "x/seed0-abc").acquire()
        assert f"pid {proc.pid}" in str(exc.value) and "--resume" in str(exc.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert path.exists()  # the killed holder could not clean up ...
    with RunLock(path, "x/seed0-abc") as lock:  # ... yet its lock died with it
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.held


def test_a_file_replaced_after_opening_is_not_trusted(tmp_path, monkeypatch):
    """If the lock file we locked was unlinked and recreated meanwhile, lock the new one."""
    path = tmp_path / "seed0-abc.lock"
    real_open = os.open
    calls = []

    def racing_open(p, flags, mode=0o777):
        fd = real_open(p, flags, mode)
        if str(p) == str(path) and not calls:  # first attempt: someone swaps the file under us
            calls.append(1)
            os.unlink(path)
            path.write_text("{}")
        return fd

    monkeypatch.setattr(os, "open", racing_open)
    with RunLock(path, "x/seed0-abc") as lock:
        assert calls == [1]
        assert os.fstat(lock._fd).st_ino == os.stat(path).st_ino  # the file now at the path
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_mtlbench_run_stops_when_the_run_is_being_trained_elsewhere(tmp_path, capsys):
    args = ["run", "--method", "baseline", "--backbone", "vit_tiny", "--preset", "smoke",
            "--quiet", "--out", str(tmp_path)]
    _, cfg = parse_run_argv(args)
    paths = RunPaths.for_config(cfg, tmp_path)
    proc = _holder(paths.lock)
    try:
        assert main(args) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    err = capsys.readouterr().err
    assert "being trained by another process" in err and str(paths.lock) in err
    assert "Traceback" not in err
    assert not paths.record.exists()
