"""A full disk (issue 27): a checkpoint or record write that the file system refuses ends in one
exit-2 line naming the file and the space it needs, leaves every earlier file intact and no
temporary file, and ``--resume`` after space is freed ends exactly as the uninterrupted run, its
whole step log included.

Two ways in: a write patched to fail with ENOSPC (every machine), and a real tmpfs with few inodes
(where this process may mount one: root with CAP_SYS_ADMIN; skipped elsewhere, saying why)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from mtlbench import records
from mtlbench.cli import main

SETS = ["train.epochs=3", "train.max_steps_per_epoch=null"]


def _args(out: Path, *extra: str) -> list[str]:
    from conftest import shrink_sets

    return ["run", "--preset", "smoke", "--quiet", "--out", str(out),
            *[a for s in [*SETS, *shrink_sets("vit_tiny")] for a in ("--set", s)], *extra]


def _record(out: Path) -> tuple[dict, bytes]:
    recs = [p for p in (out / "runs").rglob("*.json")]
    assert len(recs) == 1, recs
    rec = json.loads(recs[0].read_text())
    return rec, (recs[0].parent / rec["history"]["steps_file"]).read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh")
    assert main(_args(out)) == 0
    return _record(out)


def _same_as_uninterrupted(out: Path, uninterrupted) -> None:
    rec, steps = _record(out)
    want_rec, want_steps = uninterrupted
    assert rec["metrics"] == want_rec["metrics"]
    assert rec["config_hash"] == want_rec["config_hash"]
    assert steps == want_steps and b"\0" not in steps  # the whole step log, each step once
    assert not list(out.rglob("*.tmp"))


def _one_error_line(err: str, names: str) -> None:
    assert "Traceback" not in err
    assert "No space left on device" in err and names in err, err
    assert "--resume" in err


def test_a_checkpoint_write_on_a_full_disk(tmp_path, monkeypatch, capsys, uninterrupted):
    """The second checkpoint fails part-way through: exit 2 naming last.pt and the size it needs,
    the first checkpoint still loads, no record, no temporary file; resume completes the run."""
    import torch

    saves = {"n": 0}
    init, write = records._WriteErrors.__init__, records._WriteErrors.write

    def counting_init(self, fh):
        saves["n"] += 1
        self.calls = 0
        init(self, fh)

    def failing_write(self, data):
        self.calls += 1
        if saves["n"] == 2 and self.calls == 3:  # mid-file, in the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(records._WriteErrors, "__init__", counting_init)
    monkeypatch.setattr(records._WriteErrors, "write", failing_write)
    out = tmp_path / "res"
    assert main(_args(out)) == 2
    err = capsys.readouterr().err
    _one_error_line(err, "last.pt")
    assert "MiB" in err and "needs at least" in err
    assert not list(out.rglob("*.tmp")), "no temporary file left"
    assert not list(out.rglob("*.lock")), "the lock is released"
    assert not (out / "runs").exists() or not list((out / "runs").rglob("*.json")), "no record"
    last = next((out / "checkpoints").rglob("last.pt"))
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 1  # written after epoch 1, intact

    monkeypatch.undo()
    assert main(_args(out, "--resume")) == 0
    _same_as_uninterrupted(out, uninterrupted)


@pytest.mark.parametrize("which", ["record", "epochs log"])
def test_a_record_write_on_a_full_disk(tmp_path, monkeypatch, capsys, uninterrupted, which):
    """The run trained to the end, then the record (or its epochs log) cannot be written: exit 2
    naming that file (not its temporary name), no record, and resume finishes it with the step log
    the run had moved beside the record, never a log padded with NUL bytes."""
    real = records.atomic_write_bytes

    def full(path, data):
        hit = path.name.endswith(".epochs.jsonl") if which == "epochs log" else \
            (path.suffix == ".json" and "runs" in path.parts)
        if not hit:
            return real(path, data)
        with records._atomic_target(path) as tmp:  # as the disk does: the temporary file fails
            raise OSError(errno.ENOSPC, "No space left on device", tmp)

    monkeypatch.setattr(records, "atomic_write_bytes", full)
    out = tmp_path / "res"
    assert main(_args(out)) == 2
    err = capsys.readouterr().err
    name = ".epochs.jsonl" if which == "epochs log" else ".json:"
    _one_error_line(err, name)
    assert ".tmp" not in err, "the message names the file the user knows"
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(_args(out, "--resume")) == 0
    _same_as_uninterrupted(out, uninterrupted)


def test_a_resume_whose_step_log_is_gone_is_refused_not_padded(tmp_path, capsys):
    """A checkpoint says its step log held N bytes; a log that is missing is an error naming it."""
    log = tmp_path / "steps.jsonl"
    with pytest.raises(records.UserError, match="step log") as exc:
        records.StepLog(log, resume_size=120, finished=tmp_path / "none.steps.jsonl")
    assert str(log) in str(exc.value)
    assert not log.exists() or log.stat().st_size == 0


def test_torch_save_failure_is_raised_as_the_oserror_it_was(tmp_path, monkeypatch):
    """Without the wrapper torch reports "unexpected pos"; with it, the errno and the path."""
    import torch

    def failing(self, data):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(records._WriteErrors, "write", failing)
    target = tmp_path / "w.pt"
    target.write_bytes(b"previous")
    with pytest.raises(OSError) as exc:
        records.atomic_torch_save(target, {"w": torch.zeros(1000)})
    assert exc.value.errno == errno.EDQUOT and exc.value.filename == str(target)
    assert exc.value.needed_bytes == 4000
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_inside_torch_save_is_raised_as_the_interrupt_it_was(tmp_path, monkeypatch, signal_name):
    """Ctrl-C or SIGTERM inside a write: torch buries it under "unexpected pos"; it comes out as
    itself (so the CLI exits 130 / 143, not with a traceback), the previous file intact."""
    import torch

    from mtlbench.cli import Terminated

    interrupt = {"SIGINT": KeyboardInterrupt, "SIGTERM": Terminated}[signal_name]
    write = records._WriteErrors.write

    def interrupted(self, data):
        if self.fh.tell() >= 1024:
            raise interrupt()
        return write(self, data)

    monkeypatch.setattr(records._WriteErrors, "write", interrupted)
    target = tmp_path / "w.pt"
    target.write_bytes(b"previous")
    with pytest.raises(interrupt) as raised:
        records.atomic_torch_save(target, {"w": torch.zeros(10_000)})
    assert type(raised.value) is interrupt
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]


def _mount_tmpfs(where: Path, inodes: int) -> str | None:
    """Mount a tmpfs with ``inodes`` inodes at ``where``; the reason it cannot, or None."""
    if not shutil.which("mount") or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=200m,nr_inodes={inodes}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()[:200]}"


@pytest.mark.parametrize("inodes", [10, 15, 16])  # the checkpoint, the epochs log, the record
def test_a_real_tmpfs_out_of_inodes(tmp_path, capsys, uninterrupted, inodes):
    where = Path("/tmp") / f"mtlbench-tmpfs-{uuid.uuid4().hex[:8]}"
    why = _mount_tmpfs(where, inodes)
    if why:
        pytest.skip(f"no small file system to fill: {why}")
    try:
        out = where / "o"
        rc = main(_args(out))
        err = capsys.readouterr().err
        if rc == 0:  # the layout needs fewer files than this: the run fits, nothing to test here
            pytest.fail(f"the run fit in {inodes} inodes; the test's inode counts need updating")
        assert rc == 2
        _one_error_line(err, str(out))
        assert not list(out.rglob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,nr_inodes=10000", str(where)], check=True)
        assert main(_args(out, "--resume")) == 0
        _same_as_uninterrupted(out, uninterrupted)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomically_written_files_get_the_umasks_mode(tmp_path, umask, mode):
    """Records, logs and checkpoints are written through a temporary file, which mkstemp makes
    0600; the file ends with the mode any file the user writes gets (a shared results folder)."""
    import stat

    import torch

    old = os.umask(umask)
    try:
        records.atomic_write_json(tmp_path / "r.json", {"a": 1})
        records.atomic_torch_save(tmp_path / "c.pt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for name in ("r.json", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
