"""Run identity, result records, checkpoints, and finding and loading earlier runs.

A run is identified by (dataset, backbone, method, seed, config hash).  Its
record lives at ``<out>/runs/<dataset>/<backbone>/<method>/seed<S>-<hash>.json``
and its checkpoints under ``<out>/checkpoints/`` at the same relative path.
Records and checkpoints are written atomically: to a temporary file in the same
directory, flushed and fsynced, then renamed over the target, so a crash never
leaves a half-written file.  The schema is documented in ``results/README.md``.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .config import ResolvedConfig, resolve
from .errors import UserError

SCHEMA_VERSION = 2


@contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinities become null)."""
    atomic_write_bytes(path, (json.dumps(strict_json(obj), indent=1, sort_keys=False, allow_nan=False,
                                         default=_json_default) + "\n").encode())


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as None, so it is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    with _atomic_target(path) as tmp:
        torch.save(obj, tmp)


def _json_default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass(frozen=True)
class RunPaths:
    """Where a run's record and checkpoints go."""

    out: Path
    rel: Path  # <dataset>/<backbone>/<method>/seed<S>-<hash>

    @classmethod
    def for_config(cls, cfg: ResolvedConfig, out: str | Path) -> "RunPaths":
        rel = (Path(cfg.name("dataset")) / cfg.name("backbone") / cfg.name("method")
               / f"seed{cfg.seed}-{cfg.hash}")
        return cls(Path(out), rel)

    @property
    def record(self) -> Path:
        return self.out / "runs" / self.rel.with_suffix(".json")

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints" / self.rel

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def final(self) -> Path:
        return self.ckpt_dir / "final.pt"

    @property
    def steps(self) -> Path:
        """The per-step log (JSON Lines) beside the record."""
        return self.record.with_name(self.record.stem + ".steps.jsonl")

    @property
    def epochs(self) -> Path:
        """Every epoch's full row (JSON Lines) beside the record."""
        return self.record.with_name(self.record.stem + ".epochs.jsonl")

    @property
    def steps_tmp(self) -> Path:
        """The per-step log while the run trains (moved to :attr:`steps` at the end)."""
        return self.ckpt_dir / "steps.jsonl"

    @property
    def lock(self) -> Path:
        """The run's lock file, beside its checkpoint directory."""
        return self.ckpt_dir.with_name(self.ckpt_dir.name + ".lock")


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


def read_record(path: str | Path) -> dict:
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"run record {str(p)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"run record {str(p)!r} is not valid JSON: {exc}",
                        hint="delete it and run again") from exc
    if not isinstance(rec, dict) or "config" not in rec or "metrics" not in rec:
        raise UserError(f"{str(p)!r} is not an mtlbench run record (no config/metrics)")
    rec["_path"] = str(p)
    return rec


def iter_records(out: str | Path) -> Iterator[dict]:
    """Every readable record under ``<out>/runs`` (broken files are skipped)."""
    root = Path(out) / "runs"
    if not root.is_dir():
        return
    for p in sorted(root.rglob("*.json")):
        try:
            yield read_record(p)
        except UserError:
            continue


def _comparable(data: dict, section: str) -> Any:
    """A config section as it identifies a run: runtime keys dropped, and options
    added later (``hash_default=False``) dropped while at their default."""
    from .config import identity_data

    sec = identity_data(data).get(section)
    return sec


def same_setting(a: dict, b: dict, sections=("dataset", "backbone", "train")) -> bool:
    """Whether two resolved configs share dataset, backbone, training recipe, preset and seed."""
    if a.get("seed") != b.get("seed") or a.get("preset") != b.get("preset"):
        return False
    return all(_comparable(a, s) == _comparable(b, s) for s in sections)


def find_runs(out: str | Path, method: str, like: dict, method_config: dict | None = None) -> list[dict]:
    """Records of ``method`` run in the same setting as config ``like`` (newest first).

    ``method_config``, when given, must match the record's method section too
    (all keys but ``name``).
    """
    found = []
    base = Path(out) / "runs" / like["dataset"]["name"] / like["backbone"]["name"] / method
    if not base.is_dir():
        return []
    for p in base.glob(f"seed{like['seed']}-*.json"):
        try:
            rec = read_record(p)
        except UserError:
            continue
        if not same_setting(rec["config"], like):
            continue
        if method_config is not None:
            mine = {k: v for k, v in rec["config"]["method"].items() if k != "name"}
            if any(mine.get(k) != v for k, v in method_config.items()):
                continue
        found.append(rec)
    return sorted(found, key=lambda r: r.get("created", ""), reverse=True)


def command_for(like: dict, method: str, method_overrides: dict | None = None,
                out: str | Path | None = None) -> str:
    """The exact ``mtlbench run`` command that produces ``method`` in ``like``'s setting."""
    preset = like.get("preset") or "quick"
    args = ["mtlbench", "run", "--method", method, "--backbone", like["backbone"]["name"],
            "--dataset", like["dataset"]["name"], "--preset", preset, "--seed", str(like["seed"])]
    root = like["dataset"].get("root")
    if root:
        args += ["--data-root", str(root)]
    # Only the dataset, backbone and train sections are compared, so the preset's
    # default method stands in (``method`` may be a plugin this install lacks).
    base = resolve(preset=preset, flags=[("backbone.name", like["backbone"]["name"], "--backbone"),
                                         ("dataset.name", like["dataset"]["name"], "--dataset")]).data
    sets = []
    for section in ("dataset", "backbone", "train"):
        want, have = _comparable(like, section), _comparable(base, section)
        for k, v in want.items():
            if have.get(k) != v:
                sets.append(f"{section}.{k}={_yaml_scalar(v)}")
    for k, v in (method_overrides or {}).items():
        sets.append(f"method.{k}={_yaml_scalar(v)}")
    for s in sets:
        args += ["--set", s]
    if out is not None and Path(out) != Path("results"):
        args += ["--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_scalar(x) for x in v) + "]"
    return str(v)


def checkpoint_of(record: dict) -> Path | None:
    """Where a record's final checkpoint is (None: the record names none); it may be missing."""
    ckpt = record.get("checkpoint")
    if not ckpt:
        return None
    ckpt_path = Path(ckpt)
    if not ckpt_path.is_absolute() and not ckpt_path.exists():
        # relative to the results dir that holds the record: <out>/runs/<4 levels>
        path = Path(record["_path"]).parent if "_path" in record else Path(".")
        ckpt_path = path.parents[3] / ckpt if len(path.parents) > 3 else ckpt_path
    return ckpt_path


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
    _, _, _, method = assemble(from_dict(record["config"]))
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

    def find(self, method: str, method_config: dict | None = None) -> dict | None:
        recs = find_runs(self.out, method, self.cfg.data, method_config)
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
        where = f"the {method} run {rec['_path']}"
    if rec.get("method") != method:
        raise UserError(f"{where} is a `{rec.get('method')}` run; {what} needs a `{method}` run",
                        hint=f"point {override_key} at a record under runs/*/*/{method}/")
    if run is not None:
        mine, theirs = run.cfg.name("backbone"), rec["config"]["backbone"].get("name")
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


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
