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

from .errors import UserError

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
    os.close(fd)
    try:
        yield tmp
        if os.environ.get("MTLBENCH_FSYNC", "1") != "0":
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


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    with _atomic_target(path) as tmp:
        torch.save(obj, tmp)


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

    def __init__(self, path: Path, resume_size: int | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_size is None:
            self.fh = open(path, "w")
        else:
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
                method_info: dict) -> dict:
    """A finished run's record (schema :data:`SCHEMA_VERSION`), as strict JSON.

    ``epochs``: every epoch's full row; the reported one is chosen by ``train.report``
    among those ``reportable(epoch)`` allows (:func:`report_epoch`).  The rest is what
    the trainer measured, under the names the schema gives it.
    """
    import platform

    import timm
    import torch

    from . import __version__
    from .provenance import source_commit

    chosen = report_epoch(epochs, cfg.train.report, reportable)
    metrics = chosen["metrics"]
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
        "git_commit": source_commit(),
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

def read_record(path: str | Path) -> dict:
    """The record at ``path`` with its ``_path``; a UserError when it is not a readable record."""
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
    """A file under ``<out>/runs`` that is not a readable run record."""

    path: Path
    problem: str

    def describe(self) -> str:
        return f"{self.path}: {self.problem}"


def newest_first(records: Iterable[dict]) -> list[dict]:
    return sorted(records, key=lambda r: r.get("created", ""), reverse=True)


# ---------------------------------------------------------------------------
# method options of records
# ---------------------------------------------------------------------------

_DEFAULTS_CACHE: dict[str, dict | None] = {}
_NEUTRAL_CACHE: dict[str, frozenset] = {}


def method_defaults(method: str) -> dict | None:
    """The default options of a registered method, or None when it is not registered."""
    if method not in _DEFAULTS_CACHE:
        from .registry import METHODS

        try:
            cls = METHODS.get(method).Config
            _DEFAULTS_CACHE[method] = dict(dataclasses.asdict(cls()))
        except (UserError, TypeError, AttributeError):
            _DEFAULTS_CACHE[method] = None
    return _DEFAULTS_CACHE[method]


def neutral_options(method: str) -> frozenset:
    """Options of a registered method declared backward compatible (``hash_default=False``):
    a record lacking one counts as having its default."""
    if method not in _NEUTRAL_CACHE:
        from .config import option_check
        from .registry import METHODS

        names: set[str] = set()
        try:
            for f in dataclasses.fields(METHODS.get(method).Config):
                check = option_check(f)
                if check is not None and not check.hash_default:
                    names.add(f.name)
        except (UserError, TypeError, AttributeError):
            pass
        _NEUTRAL_CACHE[method] = frozenset(names)
    return _NEUTRAL_CACHE[method]


def stale_options(record_options: dict, method: str) -> list[str]:
    """Options of the registered method that the record lacks and that are not backward
    compatible: a record lacking any predates a change of the method (empty: none)."""
    defaults = method_defaults(method)
    if defaults is None:
        return []
    have = set(record_options) - {"name"}
    neutral = neutral_options(method)
    return [k for k in defaults if k not in have and k not in neutral]


def canonical_options(method: str, overrides: dict) -> dict:
    """A method's full options with ``overrides`` set (defaults filled in when it is registered)."""
    return {**(method_defaults(method) or {}), **overrides}


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
    have = {**(method_defaults(method) or {}), **{k: v for k, v in record_options.items() if k != "name"}}
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
        except UserError as exc:
            problems.append(BadRecord(p, exc.message))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(BadRecord(p, f"cannot be read: {exc}"))
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
