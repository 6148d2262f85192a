"""A run as methods and the trainer see it: its lock, its context, and finished runs to load.

* :class:`RunLock`: the exclusive lock a run holds while it trains;
* :class:`RunContext`: the run's identity and results directory, handed to
  methods (``TrainContext.run``) to find the records of other runs of the
  same setting (:class:`mtlbench.records.RecordStore`) and to load them;
* :func:`load_trained_method`, :func:`load_task_networks`: a finished run's
  weights, rebuilt from its record.

Records themselves (schema, paths, building, writing, reading, matching) are
:mod:`mtlbench.records`; the names methods import from here
(:class:`~mtlbench.records.RunPaths`, :func:`~mtlbench.records.atomic_write_json`,
...) are that module's.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .config import ResolvedConfig
from .errors import UserError
from .records import (RecordStore, RunPaths, atomic_torch_save, atomic_write_bytes, atomic_write_json,
                      checkpoint_of, command_for, read_record, setting_differences, strict_json)

__all__ = ["RunLock", "RunLocked", "RunContext", "checkpoint_of", "load_trained_method",
           "load_task_networks", "same_setting",
           # records' names, importable from here as before
           "RunPaths", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "command_for",
           "read_record", "strict_json"]


# ---------------------------------------------------------------------------
# the run lock
# ---------------------------------------------------------------------------

class RunLocked(UserError):
    """Another live process holds the run's lock."""


class RunLock:
    """An exclusive lock on one run, held while it trains.

    The lock is an ``flock`` on the file ``path``: the kernel drops it when its
    holder exits, however it exits, so a run killed mid-epoch leaves no stale
    lock and ``--resume`` just works.  The file itself stays (holder's pid, host
    and start time, for the error message of whoever finds it taken).  After
    taking the lock we check that ``path`` still names the file we locked;
    if another process replaced it meanwhile, we try again.  On a shared
    filesystem, Linux maps ``flock`` onto NFS byte-range locks, so workers on
    different hosts exclude each other too (given a working NFS lock service).
    """

    def __init__(self, path: str | Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        import fcntl

        if self.held:
            raise RuntimeError(f"lock {self.path} is already held by this RunLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._locked_error() from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file that was unlinked meanwhile: take the new one
        else:  # pragma: no cover - needs a pathological race
            raise RunLocked(f"could not take the lock {self.path}: other processes kept replacing it",
                            hint="something is starting and stopping this run in a loop; stop it and try again")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "run": self.what,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock: a process that opened the old
        # file meanwhile finds it is no longer at ``path`` and starts over.
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _locked_error(self) -> RunLocked:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            info = {}
        msg = (f"run {self.what} is being trained by another process right now: lock file {self.path} "
               f"(pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
               f"since {info.get('started', '?')})")
        return RunLocked(msg, hint="wait for it to finish (its record then exists and the run is "
                                   "skipped), or stop that process and resume with --resume")


def same_setting(a: dict, b: dict) -> bool:
    """Whether two resolved configs share preset, seed and settings (dataset, backbone and
    training recipe, as :class:`~mtlbench.records.RecordStore` matches them)."""
    return (a.get("seed") == b.get("seed") and a.get("preset") == b.get("preset")
            and not setting_differences(a, b))


def load_trained_method(record: dict, device: str = "cpu"):
    """Rebuild a finished run's method from its record and load its final weights."""
    import torch

    from .config import from_dict
    from .models import assemble

    ckpt_path = checkpoint_of(record)
    if ckpt_path is None:
        raise UserError(f"run record {record.get('_path')} has no checkpoint")
    if not ckpt_path.is_file():
        raise UserError(f"the checkpoint {str(ckpt_path)!r} of run {record.get('_path')} is missing",
                        hint="run it again with --force to recreate it")
    try:
        cfg = from_dict(record["config"])
    except UserError as exc:  # a record of an older mtlbench, or edited: say which record
        raise UserError(f"run record {record.get('_path')}: its config is not one this mtlbench can "
                        f"rebuild: {exc.message}", hint="train that run again with --force") from None
    _, _, _, method = assemble(cfg)
    try:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        method.load_state_dict(state["model"])
    except Exception as exc:
        raise UserError(f"the checkpoint {str(ckpt_path)!r} of run {record.get('_path')} cannot be loaded "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})",
                        hint="run it again with --force to recreate it") from None
    return method.to(device)


@dataclass
class RunContext:
    """The run's identity and results directory, handed to methods (``TrainContext.run``)."""

    cfg: ResolvedConfig
    out: Path

    def find(self, method: str, options: dict | None = None) -> dict | None:
        """The newest record of ``method`` in this run's setting (with method ``options``, when
        given: :func:`mtlbench.records.options_match`), or None."""
        like = self.cfg.data
        recs = RecordStore.scan_method(self.out, method, like).find(method, like, options=options)
        return recs[0] if recs else None

    def require(self, method: str, what: str, override_key: str | None = None) -> dict:
        """The record of ``method`` in this setting, or a UserError with the command to make it."""
        rec = self.find(method)
        if rec is None:
            hint = f"run first:\n    {command_for(self.cfg.data, method, out=self.out)}"
            if override_key:
                hint += f"\n  or name a finished run with --set {override_key}=PATH/TO/RECORD.json"
            raise UserError(f"{what} needs a finished `{method}` run with the same dataset, backbone, "
                            f"preset, training recipe and seed, and none was found under "
                            f"{self.out / 'runs'}", hint=hint)
        return rec

    def load_trained(self, method: str, what: str, record_path: str | None = None,
                     override_key: str | None = None, device: str = "cpu"):
        rec = read_record(record_path) if record_path else self.require(method, what, override_key)
        return load_trained_method(rec, device)


def load_task_networks(run: RunContext | None, tasks: list[str], what: str, *,
                       method: str, record_path: str | None = None,
                       override_key: str = "method.teacher_run") -> tuple[dict, str]:
    """The per-task networks of a finished run of ``method`` (e.g. single-task networks):
    ``({task: MultiTaskNet}, record id)``.

    The one teacher loader of KD-MTL and OKD-MTL's pretrained teachers: the run is
    ``record_path`` when given (``override_key`` names it in messages), else the
    ``method`` run of the same setting found under the run's results directory;
    a run of another method, another backbone or without one of ``tasks`` is a
    UserError saying which and how to fix it.
    """
    if record_path:
        rec = read_record(record_path)
        where = f"{override_key}={record_path}"
    elif run is None:
        raise UserError(f"{what} needs a finished `{method}` run, and no results directory is known",
                        hint=f"name one with --set {override_key}=PATH/TO/RECORD.json")
    else:
        rec = run.require(method, what, override_key=override_key)
        where = f"the {method} run {rec.get('_path')}"
    if rec.get("method") != method:
        raise UserError(f"{where} is a `{rec.get('method')}` run; {what} needs a `{method}` run",
                        hint=f"point {override_key} at a record under runs/*/*/{method}/")
    # the record's shape is checked by read_record; what a teacher needs beyond it is checked here,
    # before anything is rebuilt from it (a record without its setting would rebuild on defaults)
    cfg = rec.get("config") or {}
    absent = [f"config.{s}.name" for s in ("method", "backbone", "dataset")
              if not isinstance(cfg.get(s), dict) or not isinstance(cfg[s].get("name"), str)]
    if absent:
        raise UserError(f"{where} records no {', '.join(absent)}, so the network it trained cannot be "
                        f"rebuilt; {what} needs the record of a finished `{method}` run",
                        hint=f"train the {method} run again with this mtlbench, or point {override_key} "
                             f"at another record under runs/*/*/{method}/")
    if run is not None:
        mine, theirs = run.cfg.name("backbone"), cfg["backbone"]["name"]
        if theirs != mine:
            raise UserError(f"{where} was trained with backbone {theirs!r}, this run uses {mine!r}; "
                            "teacher and student features must match",
                            hint=f"train the {method} run with the same --backbone")
    nets = getattr(load_trained_method(rec, "cpu"), "nets", None)
    missing = [t for t in tasks if nets is None or t not in nets]
    if missing:
        raise UserError(f"{where} has no single-task network for {', '.join(missing)}",
                        hint=f"train the {method} run on the same dataset (the same tasks)")
    return {t: nets[t] for t in tasks}, rec.get("id") or rec["_path"]


