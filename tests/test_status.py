"""``mtlbench status``: which runs train now (their lock is held) and which were interrupted."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from mtlbench import status as st
from mtlbench.cli import main

REL = "synthetic/vit_tiny/baseline/seed0-abc1234567"


def _checkpoint(out, rel=REL, epoch=2, total=5, times=(10.0, 20.0, 30.0, 40.0), with_total=True):
    d = out / "checkpoints" / rel
    d.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "model": {"w": torch.zeros(3)}, "config": {"train": {"epochs": 4}},
             "history": {"epochs": [{"epoch": i, "time_s": t} for i, t in enumerate(times)]}}
    if with_total:
        state["total_epochs"] = total
    torch.save(state, d / "last.pt")
    return d


def test_proc_locks_lines_are_parsed_to_device_and_inode(tmp_path):
    f = tmp_path / "locks"
    f.write_text(textwrap.dedent("""\
        1: FLOCK  ADVISORY  WRITE 7743 fd:01:1234567 0 EOF
        1: -> FLOCK  ADVISORY  WRITE 7800 fd:01:1234567 0 EOF
        2: POSIX  ADVISORY  WRITE 512 00:19:42 0 EOF
        3: FLOCK  ADVISORY  WRITE 12 103:0a:99 0 EOF
        garbage line
        """))
    assert st.held_locks(f) == {(0xfd, 0x01, 1234567), (0x103, 0x0a, 99)}
    assert st.held_locks(tmp_path / "missing") is None


def test_an_interrupted_checkpoint_shows_its_epoch_and_a_recorded_run_is_not_listed(tmp_path, capsys):
    out = tmp_path / "res"
    _checkpoint(out)
    _checkpoint(out, rel="synthetic/vit_tiny/uw/seed1-0000000000", epoch=3, with_total=False)
    (out / "runs" / "synthetic" / "vit_tiny" / "dwa").mkdir(parents=True)
    (out / "runs" / "synthetic" / "vit_tiny" / "dwa" / "seed0-1111111111.json").write_text("{}")
    # a finished run whose checkpoint folder still has a last.pt is finished, not interrupted
    _checkpoint(out, rel="synthetic/vit_tiny/dwa/seed0-1111111111")
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 recorded runs, 0 training now, 2 interrupted" in text, text
    assert f"{REL}: epoch 2/5 (checkpoint" in text
    # a checkpoint written before total_epochs was kept: the config's epochs
    assert "synthetic/vit_tiny/uw/seed1-0000000000: epoch 3/4" in text
    assert "dwa/seed0-1111111111" not in text
    assert "left at its recent pace" not in text  # no pace for a run that is not training


def test_a_held_lock_is_training_and_a_stale_lock_file_is_not(tmp_path, capsys):
    out = tmp_path / "res"
    ck = _checkpoint(out)
    lock = ck.with_name(ck.name + ".lock")
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from mtlbench.runs import RunLock
        with RunLock({str(lock)!r}, {REL!r}):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """)])
    try:
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.05)
        assert ready.exists(), "the lock holder did not start"
        assert main(["status", "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "0 recorded runs, 1 training now, 0 interrupted" in text, text
        assert f"pid {holder.pid} on {socket.gethostname()}" in text
        # pace: the last three epochs took 20, 30 and 40 s; 3 epochs are left
        assert "epoch 2/5" in text and "of training left at its recent pace" in text
        # status takes no lock: the holder still has it, and a second taker is still refused
        from mtlbench.runs import RunLock, RunLocked

        with pytest.raises(RunLocked):
            RunLock(lock, REL).acquire()
    finally:
        holder.kill()
        holder.wait()
    # killed: the kernel dropped the flock, the file stayed (stale); the checkpoint is resumable
    assert lock.exists()
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "0 training now, 1 interrupted" in text and "pid" not in text, text


def test_without_the_kernels_list_the_lock_files_pid_decides_on_this_host(tmp_path):
    out = tmp_path / "res"
    ck = _checkpoint(out)
    lock = ck.with_name(ck.name + ".lock")
    nolist = tmp_path / "no-proc-locks"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}))
    (run,), _ = st.scan(out, proc_locks=nolist)
    assert run.state == "training"
    empty = tmp_path / "empty-locks"  # a sandbox whose /proc/locks does not list other processes' locks
    empty.write_text("")
    (run,), _ = st.scan(out, proc_locks=empty)
    assert run.state == "training"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    (run,), _ = st.scan(out, proc_locks=nolist)
    assert run.state == "interrupted"
    # a lock file naming another host: this kernel cannot see that host's locks; said, not guessed
    lock.write_text(json.dumps({"pid": 1, "host": "another-node-17"}))
    (run,), _ = st.scan(out)
    assert run.state == "training" and "another host" in run.line() and "another-node-17" in run.line()


def test_an_unreadable_checkpoint_is_named_and_a_missing_out_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "res"
    d = out / "checkpoints" / REL
    d.mkdir(parents=True)
    (d / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["status", "--out", str(out)]) == 0
    assert "checkpoint unreadable" in capsys.readouterr().out
    assert main(["status", "--out", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "no such directory" in err and "Traceback" not in err


def test_a_foreign_lock_file_cannot_flood_the_report(tmp_path, capsys):
    out = tmp_path / "res"
    ck = _checkpoint(out)
    lock = ck.with_name(ck.name + ".lock")
    lock.write_text(json.dumps({"pid": 1, "host": "h" * 3000, "started": ["not", "text"]}))
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out  # another host (by its file), its name cut to 100 characters
    assert len(text) < 1000 and "h" * 100 in text and "h" * 101 not in text and "another host" in text, text
    lock.write_text(json.dumps({"pid": 1, "host": "h" * 100_000}))  # longer than the 4 KiB read: ignored
    assert main(["status", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert len(text) < 1000 and "1 interrupted" in text, text
    lock.write_bytes(b"\xff\xfe" + b"{" * 10_000_000)  # not JSON, 10 MB: read 4 KiB of it, then ignored
    assert main(["status", "--out", str(out)]) == 0
    assert "1 interrupted" in capsys.readouterr().out
