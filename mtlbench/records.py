"""Result records: their schema, where they live, how they are built and written, and the one store that reads them.

A run is identified by (dataset, backbone, method, seed, config hash).  Its
record lives at ``<out>/runs/<dataset>/<backbone>/<method>/seed<S>-<hash>.json``
(:class:`RunPaths`), its step and epoch logs beside it, and its checkpoints
under ``<out>/checkpoints/`` at the same relative path.  Records, logs and
checkpoints are written atomically: to a temporary file in the same directory,
flushed and fsynced, then renamed over the target, so a crash never leaves a
half-written file.  The schema is documented in ``results/README.md``;
:func:`make_record` is the one place that writes it.

:class:`RecordStore` is the one reader of a results directory: it scans
``<out>/runs`` (a file that is not a readable record is kept in
:attr:`RecordStore.problems` with why, never skipped silently), matches
records to a setting (:meth:`RecordStore.find`, :meth:`RecordStore.explain`)
and writes the ``mtlbench run`` command of a run it lacks
(:func:`command_for`, :func:`run_command`).  Tables, sweeps, claims, plots and
the runs of methods that load other runs (:class:`mtlbench.runs.RunContext`)
all read records through it.

Matching.  A record serves a setting ``like`` (a resolved config, as a dict)
for a method when its method, backbone, dataset, preset and seed are
``like``'s; its ``train``, ``backbone`` and ``dataset`` sections equal
``like``'s on the keys both have (runtime keys and backward-compatible options
at their defaults aside, :func:`mtlbench.config.identity_data`; ``1`` and
``1.0`` are one number); and, when asked, its method options are the given
ones (:func:`options_match`: the given options set, every other at its
default; a record lacking an option that is not backward compatible predates
a change of the method and serves nothing).  A key only one side has, from a
record older or newer than this code, is not compared, except the settings
passed as ``must``: a record must hold those (a key it lacks counts as its
plugin's default).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import PluginError, UserError

#: the record schema version :func:`make_record` writes
SCHEMA_VERSION = 2
#: the most epoch rows a record keeps (all of them in the epochs log beside it)
RECORD_EPOCH_ROWS = 40
#: the config sections compared between a record and a setting (the method's options are
#: compared by :func:`options_match`)
SETTING_SECTIONS = ("train", "backbone", "dataset")


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------

@contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    ``MTLBENCH_FSYNC=0`` skips the fsync (the test suite sets it: the rename stays atomic, so no
    reader ever sees a partial file, but the file is not forced to disk before it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; a record, a checkpoint or a report page is as readable as
        # any file the user makes (the umask's mode), e.g. by a group sharing a results folder
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        yield tmp
        if os.environ.get("MTLBENCH_FSYNC", "1") != "0":
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if exc.filename is None or exc.filename == tmp:  # name the file the user knows
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status) where possible."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic_target(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (NaN and infinities become null)."""
    atomic_write_bytes(path, (json.dumps(strict_json(obj), indent=1, sort_keys=False, allow_nan=False,
                                         default=_json_default) + "\n").encode())


class _WriteErrors:
    """A binary file for :func:`torch.save` that keeps the first :class:`OSError` of a write.

    torch's zip writer turns a failed write (a full disk, a quota) into ``RuntimeError: ...
    unexpected pos ...``, which names neither the file nor the cause; this keeps the real error
    so that :func:`atomic_torch_save` can raise it."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self.fh.write(data)
            except OSError as exc:
                self.error = exc
        raise self.error

    def flush(self) -> None:
        if self.error is None:
            try:
                self.fh.flush()
            except OSError as exc:
                self.error = exc
        if self.error is not None:
            raise self.error


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` to ``path`` atomically; a write that fails raises its own :class:`OSError`
    (with the errno, e.g. ENOSPC) naming ``path``, and leaves the previous file intact."""
    import torch

    with _atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            sink = _WriteErrors(fh)
            try:
                torch.save(obj, sink)
                sink.flush()
            except Exception as exc:
                # Ctrl-C or SIGTERM (Terminated) raised inside a write: torch's zip writer buries it
                # under "unexpected pos"; raise it again, so the run unwinds as on any interruption
                interrupt = _in_chain(exc, KeyboardInterrupt)
                if interrupt is not None:
                    raise interrupt from None
                cause = sink.error or _in_chain(exc, OSError)  # else the OSError torch's error arose from
                if cause is None:
                    raise
                err = OSError(cause.errno, cause.strerror, str(path))
                err.needed_bytes = _tensor_bytes(obj)  # a lower bound on the file's size
                raise err from exc


def _in_chain(exc: BaseException, kind: type) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes and contexts, or None."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensor storages in ``obj`` (nested dicts, lists and tuples), each storage
    counted once as :func:`torch.save` writes it."""
    import torch

    seen: dict[int, int] = {}

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            st = o.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return sum(seen.values())


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as None, so it is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


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


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(strict_json(r), separators=(",", ":")) + "\n" for r in rows)


# ---------------------------------------------------------------------------
# where a run's files go
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RunPaths:
    """Where a run's record, logs and checkpoints go."""

    out: Path
    rel: Path  # <dataset>/<backbone>/<method>/seed<S>-<hash>

    @classmethod
    def for_config(cls, cfg, out: str | Path) -> "RunPaths":
        """The paths of the run of resolved config ``cfg`` under results directory ``out``."""
        rel = (Path(cfg.name("dataset")) / cfg.name("backbone") / cfg.name("method")
               / f"seed{cfg.seed}-{cfg.hash}")
        return cls(Path(out), rel)

    @classmethod
    def of_record(cls, out: str | Path, record_path: str | Path) -> "RunPaths":
        """The paths of the run whose record is at ``record_path`` under results directory ``out``."""
        runs_dir = (Path(out) / "runs").resolve()
        return cls(Path(out), Path(record_path).resolve().relative_to(runs_dir).with_suffix(""))

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
# building and writing a record
# ---------------------------------------------------------------------------

class StepLog:
    """Per-step logs streamed to a JSON Lines file in the checkpoint folder.

    Flushed and fsynced with every checkpoint, whose state records the file's
    size (:meth:`sync`); a resumed run truncates the file to that size, so the
    log holds exactly the steps of the checkpointed epochs.  Moved beside the
    record at the end (:func:`write_record`).
    """

    def __init__(self, path: Path, resume_size: int | None = None, finished: Path | None = None):
        """``finished``: where the log goes at the end (:attr:`RunPaths.steps`). A run whose finish
        failed after the log was moved there (a full disk at the record write) resumes with it
        moved back; a log shorter than its checkpoint says is refused, never padded."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_size is None:
            self.fh = open(path, "w")
        else:
            have = path.stat().st_size if path.exists() else -1
            if have < resume_size and finished is not None and finished.exists() \
                    and finished.stat().st_size >= resume_size:
                os.replace(finished, path)
                have = path.stat().st_size
            if have < resume_size:
                raise UserError(
                    f"the step log {path} holds {max(have, 0)} bytes but the checkpoint beside it "
                    f"was written after {resume_size}: the log was lost or truncated",
                    hint="restore the file, or run again without --resume (--force) to train from scratch")
            self.fh = open(path, "a+")
            self.fh.truncate(resume_size)
            self.fh.seek(resume_size)

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(strict_json(row), separators=(",", ":")) + "\n")

    def sync(self) -> int:
        self.fh.flush()
        if os.environ.get("MTLBENCH_FSYNC", "1") != "0":  # see _atomic_target
            os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def compact_epochs(epochs: list[dict], keep: set[int]) -> list[dict]:
    """The epoch rows a record keeps: all when few, else evenly spaced ones plus ``keep``.

    Each row keeps the epoch, mean training losses, learning rate, time and the
    deployable model's metrics; method logs and other models' metrics live in
    the epochs log only (``history.epochs_file``).
    """
    n = len(epochs)
    if n <= RECORD_EPOCH_ROWS:
        chosen = set(range(n))
    else:
        step = (n - 1) / (RECORD_EPOCH_ROWS - 1 - len(keep))
        chosen = {round(i * step) for i in range(RECORD_EPOCH_ROWS - len(keep))}
    chosen |= {i for i, e in enumerate(epochs) if e["epoch"] in keep}
    out = []
    for i in sorted(chosen):
        e = epochs[i]
        row = {"epoch": e["epoch"], "train_loss": {t: round(v, 6) for t, v in e["train_loss"].items()},
               "lr": e["lr"], "time_s": e["time_s"]}
        if e.get("leading"):
            row["leading"] = True
        if e.get("metrics"):
            row["metrics"] = {"": e["metrics"].get("", {})}
        out.append(row)
    return out


def report_epoch(epochs: list[dict], rule: str, reportable=lambda epoch: True) -> dict:
    """The epoch row a record reports (``train.report``): among the evaluated epochs of the run's
    own schedule that the method allows (``Method.reportable``; the last evaluated one if it
    allows none), the last or the one of lowest training loss.  Never chosen on val metrics."""
    evaluated = [e for e in epochs if e["metrics"] and not e.get("leading")]
    allowed = [e for e in evaluated if reportable(e["epoch"])]
    evaluated = allowed or evaluated[-1:]
    if rule == "last":
        return evaluated[-1]
    if rule == "best_train_loss":
        return min(evaluated, key=lambda e: sum(e["train_loss"].values()))
    raise UserError(f"train.report must be last or best_train_loss, got {rule!r}")


def make_record(cfg, paths: RunPaths, *, epochs: list[dict], reportable, dataset_family: str,
                tasks: dict, schedule: dict, params: dict, timing: dict, memory: dict, device: dict,
                method_info: dict, source_commits: list | None = None) -> dict:
    """A finished run's record (schema :data:`SCHEMA_VERSION`), as strict JSON.

    ``epochs``: every epoch's full row; the reported one is chosen by ``train.report``
    among those ``reportable(epoch)`` allows (:func:`report_epoch`).  The rest is what
    the trainer measured, under the names the schema gives it.

    ``source_commits``: the mtlbench commit at the start of each process that trained the run
    (:func:`~mtlbench.provenance.source_commit`; None for an attempt whose checkpoint predates
    keeping it).  ``git_commit`` is the first known one, the code that began the run; a run
    resumed under other code also gets ``git_commit_attempts``.  Without it (other callers) the
    commit now.
    """
    import platform

    import timm
    import torch

    from . import __version__
    from .provenance import source_commit

    chosen = report_epoch(epochs, cfg.train.report, reportable)
    metrics = chosen["metrics"]
    commits = list(source_commits) if source_commits else [source_commit()]
    known = [c for c in commits if c is not None]
    extra = {"git_commit_attempts": commits} if len(set(commits)) > 1 else {}
    return strict_json({
        "schema": SCHEMA_VERSION,
        "id": paths.rel.as_posix(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.name("method"), "backbone": cfg.name("backbone"),
        "dataset": cfg.name("dataset"), "dataset_family": dataset_family or cfg.name("dataset"),
        "preset": cfg.preset, "seed": cfg.seed,
        "config_hash": cfg.hash, "config": cfg.data,
        "tasks": {t: task.describe() for t, task in tasks.items()},
        "metrics": metrics.get("", {}),
        "extra_metrics": {k: v for k, v in metrics.items() if k},
        "report": {"rule": cfg.train.report, "epoch": chosen["epoch"]},
        "schedule": schedule,
        "history": {"epochs": compact_epochs(epochs, {chosen["epoch"], epochs[-1]["epoch"]}),
                    "epochs_file": paths.epochs.name, "steps_file": paths.steps.name},
        "params": params,
        "timing": timing,
        "memory": memory,
        "device": device,
        "versions": {"mtlbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "git_commit": known[0] if known else None,
        **extra,
        "checkpoint": paths.final.relative_to(paths.out).as_posix(),
        "method_info": method_info,
    })


def write_record(paths: RunPaths, record: dict, epochs: list[dict], final_state: dict) -> dict:
    """Write a finished run's files: its final weights (``final_state``), the step log moved
    beside the record, every epoch's full row beside it, then the record (last, so a record
    never lacks its files); the resume checkpoint goes.  Returns the record with its ``_path``."""
    atomic_torch_save(paths.final, final_state)
    paths.steps.parent.mkdir(parents=True, exist_ok=True)
    if paths.steps_tmp.exists():
        os.replace(paths.steps_tmp, paths.steps)
    else:
        paths.steps.write_text("")
    atomic_write_bytes(paths.epochs, _jsonl(epochs).encode())
    atomic_write_json(paths.record, record)
    paths.last.unlink(missing_ok=True)
    return {**record, "_path": str(paths.record)}


# ---------------------------------------------------------------------------
# reading records
# ---------------------------------------------------------------------------

class RecordProblem(UserError):
    """A file that is not a run record this mtlbench can use: ``problem`` says what is wrong
    (without the path); ``newer``: it is a record of a newer schema than :data:`SCHEMA_VERSION`."""

    def __init__(self, path: str | Path, problem: str, *, newer: bool = False, hint: str | None = None):
        super().__init__(f"run record {str(path)!r} {problem}", hint=hint)
        self.path = Path(path)
        self.problem = problem
        self.newer = newer


#: top-level keys of a record and the types they must have when present (``config`` and
#: ``metrics`` must be present); None stands for JSON null
_RECORD_KEYS: dict[str, tuple] = {
    **{k: (str,) for k in ("id", "created", "method", "backbone", "dataset", "dataset_family",
                           "config_hash", "checkpoint")},
    "preset": (str, None), "git_commit": (str, None), "git_commit_attempts": (list,),
    **{k: (dict,) for k in ("tasks", "extra_metrics", "report", "schedule", "history", "params", "timing",
                            "memory", "device", "versions", "method_info")},
}
_CONFIG_SECTIONS = ("method", "backbone", "dataset", "train")


def _type_word(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metric_table(value: Any, where: str, depth: int) -> str | None:
    """What is wrong with ``{task: {metric: number or null}}`` (``depth`` 2), or with one more
    level of groups above it (``depth`` 3); None when nothing is."""
    if not isinstance(value, dict):
        return f"{where} is {_type_word(value)}, not an object"
    for k, v in value.items():
        if depth > 1:
            why = _metric_table(v, f"{where}.{k}", depth - 1)
            if why:
                return why
        elif v is not None and not _is_number(v):
            return f"{where}.{k} is {_type_word(v)}, not a number"
    return None


def record_problem(rec: Any) -> tuple[str, bool] | None:
    """What is wrong with the shape of a parsed record file, and whether it is only that it is of
    a newer schema; None for a well-formed record.

    Well formed: an object with ``config`` (an object whose ``method``, ``backbone``, ``dataset``
    and ``train`` are objects where present, ``seed`` an integer and ``preset`` a string or null)
    and ``metrics`` (``{task: {metric: number or null}}``); the other keys of the schema
    (``results/README.md``) of their documented types where present (``extra_metrics``
    ``{group: {task: {metric: number or null}}}``, ``tasks`` ``{task: object}``, the compact epoch
    rows of ``history.epochs`` objects with an integer ``epoch``); ``schema`` an integer from 1
    to :data:`SCHEMA_VERSION`.  Keys it does not know are allowed.
    """
    if not isinstance(rec, dict):
        return f"is not an mtlbench run record (the file holds {_type_word(rec)}, not an object)", False
    missing = [k for k in ("config", "metrics") if k not in rec]
    if missing:
        return f"is not an mtlbench run record (no {'/'.join(missing)})", False
    schema = rec.get("schema")
    if "schema" in rec:
        if not _is_int(schema) or schema < 1:
            return f"is not an mtlbench run record (schema is {_type_word(schema)} {schema!r:.40}, "\
                   f"not a version number)", False
        if schema > SCHEMA_VERSION:
            return (f"has record schema {schema}, newer than this mtlbench reads (up to "
                    f"{SCHEMA_VERSION}): it was written by a newer version of mtlbench; upgrade "
                    f"mtlbench to use it", True)
    cfg = rec["config"]
    if not isinstance(cfg, dict):
        return f"is malformed: config is {_type_word(cfg)}, not an object", False
    for section in _CONFIG_SECTIONS:
        sec = cfg.get(section)
        if section in cfg and not isinstance(sec, dict):
            return f"is malformed: config.{section} is {_type_word(sec)}, not an object", False
        if isinstance(sec, dict) and "name" in sec and not isinstance(sec["name"], str):
            return f"is malformed: config.{section}.name is {_type_word(sec['name'])}, not a string", False
    if "seed" in cfg and not _is_int(cfg["seed"]):
        return f"is malformed: config.seed is {_type_word(cfg['seed'])}, not an integer", False
    if "preset" in cfg and not isinstance(cfg["preset"], (str, type(None))):
        return f"is malformed: config.preset is {_type_word(cfg['preset'])}, not a string", False
    why = _metric_table(rec["metrics"], "metrics", 2)
    if why:
        return f"is malformed: {why}", False
    if "seed" in rec and not _is_int(rec["seed"]):
        return f"is malformed: seed is {_type_word(rec['seed'])}, not an integer", False
    for key, types in _RECORD_KEYS.items():
        if key in rec:
            v = rec[key]
            if not any(v is None if t is None else isinstance(v, t) for t in types):
                want = " or ".join("null" if t is None else _type_word(t()) for t in types)
                return f"is malformed: {key} is {_type_word(v)}, not {want}", False
    if "extra_metrics" in rec:
        why = _metric_table(rec["extra_metrics"], "extra_metrics", 3)
        if why:
            return f"is malformed: {why}", False
    for task, info in (rec.get("tasks") or {}).items():
        if not isinstance(info, dict):
            return f"is malformed: tasks.{task} is {_type_word(info)}, not an object", False
        if "metrics" in info and not isinstance(info["metrics"], dict):
            return f"is malformed: tasks.{task}.metrics is {_type_word(info['metrics'])}, not an object", False
    hist = rec.get("history") or {}
    for key in ("epochs", "steps"):
        rows = hist.get(key)
        if key in hist and not isinstance(rows, list):
            return f"is malformed: history.{key} is {_type_word(rows)}, not a list", False
        for i, row in enumerate(rows or []):
            if not isinstance(row, dict):
                return f"is malformed: history.{key}[{i}] is {_type_word(row)}, not an object", False
            if key == "epochs" and not _is_int(row.get("epoch")):
                return f"is malformed: history.epochs[{i}].epoch is {_type_word(row.get('epoch'))}, " \
                       f"not an integer", False
    for key in ("epochs_file", "steps_file"):
        if key in hist and not isinstance(hist[key], str):
            return f"is malformed: history.{key} is {_type_word(hist[key])}, not a string", False
    return None


def check_record(rec: Any, path: str | Path) -> dict:
    """``rec`` (a parsed record file at ``path``) when it is a well-formed record
    (:func:`record_problem`); a :class:`RecordProblem` otherwise."""
    found = record_problem(rec)
    if found is not None:
        problem, newer = found
        raise RecordProblem(path, problem, newer=newer,
                            hint="upgrade mtlbench (install a newer release, or pull the latest source)"
                            if newer else "move it out of the results directory, or delete it and run again")
    return rec


def read_record(path: str | Path) -> dict:
    """The record at ``path`` with its ``_path``; a :class:`RecordProblem` (a UserError) when it
    is not a record this mtlbench can use: missing, not a regular file, not UTF-8, not JSON, not
    of the record's shape, or of a newer schema (:func:`record_problem`).  The one reader of
    record files: everything that uses a record reads it here."""
    p = Path(path)
    try:
        if not p.exists():
            raise RecordProblem(p, "does not exist", hint="check the path") from None
        if not p.is_file():
            what = "a directory" if p.is_dir() else "not a regular file"
            raise RecordProblem(p, f"is {what}, not a record file",
                                hint="move it out of the results directory")
        raw = p.read_bytes()
    except OSError as exc:
        raise RecordProblem(p, f"cannot be read: {exc.strerror or exc}", hint="check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordProblem(p, f"is not a text file (not UTF-8 at byte {exc.start})",
                            hint="delete it and run again") from None
    try:
        rec = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        why = exc if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise RecordProblem(p, f"is not valid JSON: {why}", hint="delete it and run again") from None
    check_record(rec, p)
    rec["_path"] = str(p)
    return rec


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


@dataclass(frozen=True)
class BadRecord:
    """A file under ``<out>/runs`` that is not a readable run record; ``newer``: a record of a
    newer schema (written by a newer mtlbench), skipped rather than broken."""

    path: Path
    problem: str
    newer: bool = False

    def describe(self) -> str:
        return f"{self.path}: {self.problem}"


def newest_first(records: Iterable[dict]) -> list[dict]:
    return sorted(records, key=lambda r: r.get("created", ""), reverse=True)


# ---------------------------------------------------------------------------
# method options of records
# ---------------------------------------------------------------------------

_DEFAULTS_CACHE: dict[tuple, dict | None] = {}
_NEUTRAL_CACHE: dict[str, frozenset] = {}


def _method_config(method: str, architecture: Any = None) -> type:
    """The config class of a registered method on ``architecture`` (None: the default one)."""
    from .config import plugin_config_class

    return plugin_config_class("method", method, {} if architecture is None else {"architecture": architecture})


def method_defaults(method: str, architecture: Any = None) -> dict | None:
    """The default options of a registered method on ``architecture`` (None: the default,
    hard sharing; the architecture's options join the method's), or None when the method or
    the architecture is not registered."""
    key = (method, architecture if isinstance(architecture, str) or architecture is None else repr(architecture))
    if key not in _DEFAULTS_CACHE:
        try:
            cls = _method_config(method, architecture)
            _DEFAULTS_CACHE[key] = dict(dataclasses.asdict(cls()))
        except PluginError:  # a broken plugin is named, never taken for one that is not registered
            raise
        except (UserError, TypeError, AttributeError):
            _DEFAULTS_CACHE[key] = None
    return _DEFAULTS_CACHE[key]


def neutral_options(method: str) -> frozenset:
    """Options of a registered method declared backward compatible (``hash_default=False``):
    a record lacking one counts as having its default."""
    if method not in _NEUTRAL_CACHE:
        from .config import option_check

        names: set[str] = set()
        try:
            for f in dataclasses.fields(_method_config(method)):
                check = option_check(f)
                if check is not None and not check.hash_default:
                    names.add(f.name)
        except PluginError:
            raise
        except (UserError, TypeError, AttributeError):
            pass
        _NEUTRAL_CACHE[method] = frozenset(names)
    return _NEUTRAL_CACHE[method]


def stale_options(record_options: dict, method: str) -> list[str]:
    """Options of the registered method that the record lacks and that are not backward
    compatible: a record lacking any predates a change of the method (empty: none)."""
    defaults = method_defaults(method, record_options.get("architecture"))
    if defaults is None:
        return []
    have = set(record_options) - {"name"}
    neutral = neutral_options(method)
    return [k for k in defaults if k not in have and k not in neutral]


def canonical_options(method: str, overrides: dict) -> dict:
    """A method's full options with ``overrides`` set (defaults filled in when it is registered;
    those of the architecture that ``overrides`` names, if any, too)."""
    return {**(method_defaults(method, overrides.get("architecture")) or {}), **overrides}


def same_value(a: Any, b: Any) -> bool:
    """Equality that takes ``1`` and ``1.0`` (YAML ints and floats) as the same number."""
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def options_match(record_options: dict, method: str, overrides: dict) -> bool:
    """Whether a record's method options are ``overrides`` with every other option at its default.

    A record lacking an option that is not backward compatible (:func:`stale_options`)
    matches nothing.  For a method not registered here only ``overrides`` are checked."""
    if stale_options(record_options, method):
        return False
    have = {**(method_defaults(method, record_options.get("architecture")) or {}),
            **{k: v for k, v in record_options.items() if k != "name"}}
    want = canonical_options(method, overrides)
    return all(k in have and same_value(have[k], v) for k, v in want.items())


# ---------------------------------------------------------------------------
# matching a record to a setting
# ---------------------------------------------------------------------------

def _plain(v: Any) -> Any:
    """A value as a JSON record holds it (tuples as lists)."""
    return json.loads(json.dumps(v, default=str))


def setting_differences(record_config: dict, like: dict) -> list[str]:
    """``section.key=value`` for every setting in which a record's config differs from ``like``,
    on the keys both have (runtime keys and backward-compatible options at their defaults
    aside: :func:`mtlbench.config.identity_data`), and on the backward-compatible options
    (``hash_default=False``) one side sets away from their default (e.g. a record of an A/A
    pair with ``train.nuisance_seed`` against a plain setting, or a shrunk test backbone)."""
    from .config import default_only_options, identity_data

    a, b = identity_data(record_config), identity_data(like)
    out = []
    for section in SETTING_SECTIONS:
        ra, rb = a.get(section), b.get(section)
        if not isinstance(ra, dict) or not isinstance(rb, dict):
            continue
        optional = default_only_options(section, rb) if ra.get("name") == rb.get("name") else frozenset()
        keys = (ra.keys() & rb.keys()) | ((ra.keys() ^ rb.keys()) & optional)
        for k in sorted(keys):
            if (k in ra) != (k in rb):  # a backward-compatible option, set on one side only
                va, vb = (_plain(ra[k]), "its default") if k in ra else ("its default", _plain(rb[k]))
                out.append(f"{section}.{k}={va!r} (the preset: {vb!r})")
                continue
            va, vb = _plain(ra[k]), _plain(rb[k])
            if not same_value(va, vb):
                out.append(f"{section}.{k}={va!r} (the preset: {vb!r})")
    return out


def _plugin_defaults(section: str, name: str | None) -> dict:
    """The default options of the plugin ``name`` of ``section`` (empty when unknown)."""
    from .registry import BACKBONES, DATASETS, METHODS

    reg = {"dataset": DATASETS, "backbone": BACKBONES, "method": METHODS}.get(section)
    try:
        cfg = reg.get(name).Config if reg is not None and name else None
        return dataclasses.asdict(cfg()) if cfg is not None else {}
    except PluginError:
        raise
    except (UserError, TypeError, AttributeError):
        return {}


@dataclass(frozen=True)
class Mismatch:
    """Why a record does not serve a setting: ``what`` is ``identity`` (method, backbone,
    dataset, preset or seed), ``must`` (a required setting), ``options`` (method options;
    ``details`` names the options it predates, if any) or ``settings`` (``details``: the
    settings that differ, ``section.key=value (the preset: value)``)."""

    what: str
    details: tuple[str, ...] = ()


def identity_of(like: dict, method: str | None = None) -> tuple:
    """``(method, backbone, dataset, preset)`` of a config dict, the key records are grouped by."""
    return (method or like["method"]["name"], like["backbone"]["name"], like["dataset"]["name"],
            like.get("preset"))


class RecordStore:
    """The records under a results directory, read once, validated on read, grouped by identity.

    ``problems``: the files under ``runs/`` that are not readable records (path and why).
    """

    def __init__(self, records: Iterable[dict] = (), problems: Iterable[BadRecord] = (),
                 out: str | Path | None = None):
        self.out = Path(out) if out is not None else None
        self.records = list(records)
        self.problems = list(problems)
        self._by_key: dict[tuple, list[dict]] = {}
        for rec in self.records:
            key = (rec.get("method"), rec.get("backbone"), rec.get("dataset"), rec.get("preset"))
            self._by_key.setdefault(key, []).append(rec)

    @classmethod
    def scan(cls, out: str | Path, under: str | Path | None = None) -> "RecordStore":
        """Every record under ``<out>/runs`` (or only under ``<out>/runs/<under>``)."""
        root = Path(out) / "runs"
        return cls(*read_dir(root / under if under else root), out=out)

    @classmethod
    def scan_method(cls, out: str | Path, method: str, like: dict) -> "RecordStore":
        """The records of ``method`` on ``like``'s dataset and backbone: one folder of ``<out>/runs``
        (enough for :meth:`find` of that method in that setting)."""
        return cls.scan(out, under=Path(like["dataset"]["name"]) / like["backbone"]["name"] / method)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def candidates(self, method: str, backbone: str, dataset: str, preset: str | None) -> list[dict]:
        """The records of this method, backbone, dataset and preset (any seed, any settings)."""
        return list(self._by_key.get((method, backbone, dataset, preset), []))

    def explain(self, rec: dict, like: dict | None, *, method: str | None = None,
                options: dict | None = None, must: dict[str, dict] | None = None) -> Mismatch | None:
        """Why ``rec`` does not serve setting ``like`` for ``method`` (None: it does).

        ``like``: a resolved config dict (None: only ``method``, ``options`` and ``must`` are
        checked, e.g. for a plugin whose config cannot be resolved here); ``options``: the
        method options the record must have (:func:`options_match`; None: any);
        ``must``: ``{section: {key: value}}`` settings the record must hold.
        """
        cfg = rec.get("config") or {}
        if like is not None:
            mine = (rec.get("method"), rec.get("backbone"), rec.get("dataset"), rec.get("preset"))
            if mine != identity_of(like, method) or rec.get("seed", cfg.get("seed")) != like.get("seed"):
                return Mismatch("identity")
        elif method is not None and rec.get("method") != method:
            return Mismatch("identity")
        for section, want in (must or {}).items():
            sec = cfg.get(section) or {}
            have = {**(_plugin_defaults(section, sec.get("name")) if want else {}), **sec}
            if any(k not in have or not same_value(have[k], v) for k, v in want.items()):
                return Mismatch("must")
        if options is not None:
            name = method or rec.get("method")
            mopts = cfg.get("method") or {}
            if not options_match(mopts, name, options):
                return Mismatch("options", tuple(stale_options(mopts, name)))
        if like is not None:
            diffs = setting_differences(cfg, like)
            if diffs:
                return Mismatch("settings", tuple(diffs))
        return None

    def find(self, method: str, like: dict, options: dict | None = None,
             must: dict[str, dict] | None = None) -> list[dict]:
        """The records of ``method`` that serve setting ``like`` (:meth:`explain`), newest first."""
        recs = self.candidates(*identity_of(like, method))
        return newest_first(r for r in recs if self.explain(r, like, method=method, options=options,
                                                             must=must) is None)


def read_dir(directory: str | Path) -> tuple[list[dict], list[BadRecord]]:
    """The records under ``directory`` (searched recursively) and the files there that are
    not readable records."""
    root = Path(directory)
    records, problems = [], []
    if not root.is_dir():
        return records, problems
    for p in sorted(root.rglob("*.json")):
        try:
            records.append(read_record(p))
        except RecordProblem as exc:
            problems.append(BadRecord(p, exc.message, newer=exc.newer))
    return records, problems


# ---------------------------------------------------------------------------
# the command that makes a run
# ---------------------------------------------------------------------------

def yaml_scalar(v: Any) -> str:
    """A value as ``--set key=VALUE`` writes it (YAML scalars; lists in flow style)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(yaml_scalar(x) for x in v) + "]"
    return str(v)


def run_command(method: str, backbone: str, dataset: str, preset: str, seed: int, *,
                data_root: str | Path | None = None, sets: Iterable[str] = (),
                method_overrides: dict | None = None, out: str | Path | None = None) -> str:
    """An ``mtlbench run`` command line: the identity flags, then ``--set`` for each of
    ``sets`` (``section.key=value``) and ``method_overrides``, then ``--out`` unless it is
    the default ``results``."""
    args = ["mtlbench", "run", "--method", method, "--backbone", backbone,
            "--dataset", dataset, "--preset", preset, "--seed", str(seed)]
    if data_root:
        args += ["--data-root", str(data_root)]
    sets = list(sets) + [f"method.{k}={yaml_scalar(v)}" for k, v in (method_overrides or {}).items()]
    for s in sets:
        args += ["--set", s]
    if out is not None and Path(out) != Path("results"):
        args += ["--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


def command_for(like: dict, method: str, method_overrides: dict | None = None,
                out: str | Path | None = None) -> str:
    """The exact ``mtlbench run`` command that produces ``method`` in ``like``'s setting
    (``like``: a resolved config dict; its settings that are not the preset's become ``--set``)."""
    from .config import DEFAULTS, identity_data, resolve

    preset = like.get("preset") or DEFAULTS["preset"]
    # Only the dataset, backbone and train sections are compared, so the preset's
    # default method stands in (``method`` may be a plugin this install lacks).
    base = resolve(preset=preset, flags=[("backbone.name", like["backbone"]["name"], "--backbone"),
                                         ("dataset.name", like["dataset"]["name"], "--dataset")]).data
    want_all, have_all = identity_data(like), identity_data(base)
    sets = []
    for section in ("dataset", "backbone", "train"):
        want, have = want_all.get(section), have_all.get(section)
        for k, v in want.items():
            if have.get(k) != v:
                sets.append(f"{section}.{k}={yaml_scalar(v)}")
    return run_command(method, like["backbone"]["name"], like["dataset"]["name"], preset, like["seed"],
                       data_root=like["dataset"].get("root"), sets=sets, method_overrides=method_overrides,
                       out=out)
