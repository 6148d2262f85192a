"""Figures drawn from run records with matplotlib: the core's generic ones and every method's.

The core draws figures that fit any run:

* ``curves``: per task, the mean training loss per epoch and the task's
  primary validation metric (``record["tasks"][task]["primary"]``; the first
  metric for records written before tasks named one);
* ``steps``: per-step logged values whose keys match patterns
  (``keys=["weight/*", "cos/*"]``) over the iterations, one panel per pattern.

A method adds its own through :meth:`mtlbench.api.Method.figures` (OKD-MTL:
the paper's Fig. 3 and Fig. 4, in ``methods/_okd_figures.py``).
:func:`available_figures` lists them all; :func:`make_plot` draws one by name.

Records: schema-1 records hold their per-step log inline (``history.steps``);
schema-2 records keep it in a JSON Lines file beside the record
(``history.steps_file``) and the full epoch rows likewise
(``history.epochs_file``).  :func:`step_rows` and :func:`epoch_rows` read
either, so figure code never looks at the schema.

matplotlib is an optional extra (``pip install -e ".[plot]"``); without it
drawing raises a :class:`~mtlbench.errors.UserError` saying so.  Figures are
written with the non-interactive Agg backend, as PNG or PDF.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .errors import PluginError, UserError
from .records import method_defaults, newest_first  # noqa: F401  (newest_first: figure code's)

FORMATS = ("png", "pdf")
#: the per-step keys every row has (not values to draw)
STEP_INDEX_KEYS = ("step", "epoch")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, for figures (methods' too); a UserError without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib, which is not installed",
                        hint='install the extra: pip install -e ".[plot]"  (or: pip install matplotlib)') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


_plt = pyplot  # the old private name, kept working for one release


def warn(text: str) -> None:
    """A warning line on stderr."""
    print(f"mtlbench: warning: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------

def _read_dir(directory: Path, on_unreadable: Callable[[str], None]) -> list[dict]:
    from .records import read_dir

    recs, problems = read_dir(directory)
    for bad in problems:
        on_unreadable(f"skipped {'a run record of a newer mtlbench' if bad.newer else 'an unreadable run record'}: "
                      f"{bad.problem}")
    return recs


def load_runs(paths: Sequence[str | Path] | None, results: str | Path = "results",
              on_unreadable: Callable[[str], None] = warn) -> list[dict]:
    """Records from files or directories (searched recursively); all under ``<results>/runs`` if none.

    A named file that cannot be read is an error; an unreadable record found
    while searching a directory is reported through ``on_unreadable`` (a
    warning on stderr by default) with its path, and left out.
    """
    from .records import read_record

    if not paths:
        root = Path(results) / "runs"
        recs = _read_dir(root, on_unreadable) if root.is_dir() else []
        if not recs:
            raise UserError(f"no run records under {root}",
                            hint="train some first (mtlbench run ...), or name records with --runs")
        return recs
    recs = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = _read_dir(p, on_unreadable)
            if not found:
                raise UserError(f"--runs {p}: no readable run records (*.json) in this directory")
            recs.extend(found)
        else:
            recs.append(read_record(p))
    return recs


#: recently read JSON Lines files, by (path, mtime, size)
_JSONL_CACHE: "OrderedDict[tuple[str, int, int], list[dict]]" = OrderedDict()
_JSONL_CACHE_SIZE = 8


def _beside(rec: dict, name: str, what: str) -> Path:
    if "_path" not in rec:
        raise UserError(f"run record {rec.get('id', '?')} keeps its {what} in {name} beside it, but the "
                        "record's location is unknown",
                        hint="load records with mtlbench.records.read_record (it notes their path)")
    return Path(rec["_path"]).parent / name


def read_jsonl(path: Path, what: str = "log") -> list[dict]:
    """The rows of a JSON Lines file (cached while the file is unchanged)."""
    try:
        st = path.stat()
    except OSError:
        raise UserError(f"the {what} {path} does not exist",
                        hint="it is written beside its run record; copy it along with the record") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _JSONL_CACHE:
        rows = []
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise UserError(f"the {what} {path} is not valid JSON Lines: line {n}: {exc}") from None
                if not isinstance(row, dict):
                    raise UserError(f"the {what} {path}: line {n} is not a JSON object")
                rows.append(row)
        _JSONL_CACHE[key] = rows
        while len(_JSONL_CACHE) > _JSONL_CACHE_SIZE:
            _JSONL_CACHE.popitem(last=False)
    _JSONL_CACHE.move_to_end(key)
    return _JSONL_CACHE[key]


def step_rows(rec: dict) -> list[dict]:
    """The record's per-step log, one dict per logged step (``step``, ``epoch``, logged keys).

    Schema 1: ``history["steps"]`` inline; schema 2: the JSON Lines file named
    by ``history["steps_file"]``, relative to the record's folder.
    """
    hist = rec.get("history") or {}
    if "steps" in hist:
        return hist["steps"] or []
    name = hist.get("steps_file")
    return read_jsonl(_beside(rec, name, "step log"), "step log") if name else []


def epoch_rows(rec: dict) -> list[dict]:
    """The record's per-epoch rows, complete (method ``logs``, every model's metrics) where kept.

    Schema 2 records keep a compact subset inline and every full row in the
    JSON Lines file ``history["epochs_file"]``; if that file is missing the
    compact rows are returned, with a warning.
    """
    hist = rec.get("history") or {}
    name = hist.get("epochs_file")
    if name:
        try:
            return read_jsonl(_beside(rec, name, "epoch log"), "epoch log")
        except UserError as exc:
            warn(f"{exc.message.splitlines()[0]}; using the epochs kept in the record")
    return hist.get("epochs") or []


def safe_step_rows(rec: dict) -> list[dict]:
    """:func:`step_rows`, with a warning and no rows for a record whose step log cannot be read."""
    try:
        return step_rows(rec)
    except UserError as exc:
        warn(f"{rec.get('_path', rec.get('id', '?'))}: {exc.message.splitlines()[0]}")
        return []


def logs_step_key(rec: dict, prefix: str) -> bool:
    """Whether any logged step of ``rec`` has a key starting with ``prefix``."""
    return any(k.startswith(prefix) for s in safe_step_rows(rec) for k in s)


def method_options(rec: dict) -> dict:
    """The record's method options (``config.method`` without ``name``)."""
    return {k: v for k, v in ((rec.get("config") or {}).get("method") or {}).items() if k != "name"}


def uses_method_defaults(rec: dict) -> bool:
    """Whether a run used its method's default settings (the method as proposed)."""
    defaults = method_defaults(rec.get("method", ""), method_options(rec).get("architecture"))
    if defaults is None:  # an uninstalled plugin: no way to tell
        return False
    used = method_options(rec)
    return all(used.get(k, v) == v for k, v in defaults.items())


def dataset_of(rec: dict) -> str:
    """``dataset`` or ``dataset/variant``: what a run was trained on, for labels and grouping."""
    variant = ((rec.get("config") or {}).get("dataset") or {}).get("variant")
    return f"{rec.get('dataset')}" + (f"/{variant}" if variant else "")


def family_of(rec: dict) -> str:
    """The real dataset a run's data follows (``dataset_family``; older records: variant or name)."""
    return (rec.get("dataset_family") or ((rec.get("config") or {}).get("dataset") or {}).get("variant")
            or rec.get("dataset") or "")


def run_label(rec: dict, fields: Sequence[str] = ()) -> str:
    """``method (non-default options) · backbone · seed S`` (plus ``fields``: "dataset", "preset")."""
    defaults = method_defaults(rec.get("method", ""), method_options(rec).get("architecture")) or {}
    changed = {k: v for k, v in method_options(rec).items() if k in defaults and defaults[k] != v}
    extra = ", ".join(f"{k}={v}" for k, v in changed.items())
    label = f"{rec.get('method')}{f' ({extra})' if extra else ''} · {rec.get('backbone')} · seed {rec.get('seed')}"
    if "dataset" in fields:
        label += f" · {dataset_of(rec)}"
    if "preset" in fields:
        label += f" · {rec.get('preset')}"
    return label


def distinguishing(recs: Sequence[dict]) -> list[str]:
    """The label fields needed to tell runs apart beyond method, options, backbone and seed."""
    fields = []
    if len({dataset_of(r) for r in recs}) > 1:
        fields.append("dataset")
    if len({r.get("preset") for r in recs}) > 1:
        fields.append("preset")
    return fields


def check_smoothing(weight: float) -> float:
    """``weight`` as a float in [0, 1), or a UserError."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        w = float("nan")
    if not 0 <= w < 1:
        raise UserError(f"smoothing {weight!r} must be a number in [0, 1)",
                        hint="e.g. --smooth 0.9 (0: no smoothing)")
    return w


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's smoothing); NaN gaps are kept."""
    out, avg, n = [], 0.0, 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(float("nan"))
            continue
        avg = weight * avg + (1 - weight) * v
        n += 1
        out.append(avg / (1 - weight ** n))  # early values are not pulled towards 0
    return out


def tasks_of(rec: dict) -> list[str]:
    """The record's task names, in order."""
    tasks = list(rec.get("tasks") or {}) or list(rec.get("metrics") or {})
    if not tasks:
        for e in (rec.get("history") or {}).get("epochs", []):
            tasks = list(e.get("train_loss") or {})
            if tasks:
                break
    return tasks


_PRIMARY_CACHE: dict[str, dict[str, str] | None] = {}


def _registered_primaries(rec: dict) -> dict[str, str] | None:
    """``{task: primary metric}`` of the record's dataset as registered now (None if it cannot be built)."""
    key = json.dumps((rec.get("config") or {}).get("dataset"), sort_keys=True, default=str)
    if key not in _PRIMARY_CACHE:
        try:
            from .config import from_dict
            from .registry import DATASETS

            cfg = from_dict(rec["config"])
            tasks = DATASETS.get(cfg.name("dataset"))(cfg.dataset).tasks()
            _PRIMARY_CACHE[key] = {t: task.primary_metric.key for t, task in tasks.items()}
        except PluginError:  # a broken plugin is named
            raise
        except Exception:  # an old config, an uninstalled plugin: no way to tell
            _PRIMARY_CACHE[key] = None
    return _PRIMARY_CACHE[key]


def primary_metric(rec: dict, task: str) -> str | None:
    """The metric that stands for ``task`` in ``rec``.

    The record's ``tasks[task]["primary"]``; for records written before tasks
    named one, the primary metric of the record's dataset as registered now
    (when the record's config still builds it and the metric is in the record),
    else the record's first metric of the task.
    """
    info = (rec.get("tasks") or {}).get(task) or {}
    if info.get("primary"):
        return info["primary"]
    known = list(info.get("metrics") or {}) or list((rec.get("metrics") or {}).get(task) or {})
    registered = (_registered_primaries(rec) or {}).get(task)
    if registered in known:
        return registered
    return known[0] if known else None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def series(steps: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one logged key (rows without it, or with a non-number, are skipped)."""
    xs, ys = [], []
    for s in steps:
        v = s.get(key)
        if _number(v):
            xs.append(int(s.get("step", len(xs))))
            ys.append(float(v))
    return xs, ys


def save_figure(fig, out: str | Path) -> Path:
    """Write ``fig`` to ``out`` (format from the suffix) and close it; a UserError naming the path
    when it cannot be written (its folder is a file, or not writable)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150, bbox_inches="tight")
    except OSError as exc:
        raise UserError(f"cannot write the figure {out}: {exc.strerror or exc}",
                        hint="pass --save a directory you can write to (it is created if missing)") from None
    finally:
        plt.close(fig)
    return out


# ---------------------------------------------------------------------------
# core figures
# ---------------------------------------------------------------------------

def plot_curves(records: Iterable[dict], out: str | Path) -> Path:
    """Per task: the mean training loss per epoch (top) and the primary validation metric (bottom)."""
    plt = pyplot()
    recs = [(r, epoch_rows(r)) for r in records]
    recs = [(r, rows) for r, rows in recs if rows]
    if not recs:
        raise UserError("the given records have no epoch history to plot")
    tasks: list[str] = []
    for r, _ in recs:
        tasks += [t for t in tasks_of(r) if t not in tasks]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.4), squeeze=False)
    fields = distinguishing([r for r, _ in recs])
    for rec, epochs in recs:
        label = run_label(rec, fields)
        for j, task in enumerate(tasks):
            pts = [(e["epoch"] + 1, e["train_loss"][task]) for e in epochs
                   if _number((e.get("train_loss") or {}).get(task))]
            if pts:
                axes[0][j].plot(*zip(*pts), marker="o", ms=3, label=label)
            key = primary_metric(rec, task)
            if key is None:
                continue
            pts = [(e["epoch"] + 1, e["metrics"][""][task][key]) for e in epochs
                   if e.get("metrics") and _number(((e["metrics"].get("") or {}).get(task) or {}).get(key))]
            if pts:
                info = (rec.get("tasks") or {}).get(task) or {}
                axes[1][j].plot(*zip(*pts), marker="o", ms=3, label=label)
                arrow = {"higher": "↑", "lower": "↓"}.get((info.get("metrics") or {}).get(key, ""), "")
                axes[1][j].set_ylabel(f"val {(info.get('labels') or {}).get(key, key)} {arrow}".rstrip())
    from matplotlib.ticker import MaxNLocator

    for j, task in enumerate(tasks):
        axes[0][j].set_title(task)
        axes[0][j].set_ylabel("train loss")
        for i in range(2):
            axes[i][j].set_xlabel("epoch")
            axes[i][j].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[i][j].grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Training curves", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out)


def step_keys(records: Iterable[dict], pattern: str) -> list[str]:
    """The logged step keys of ``records`` matching the shell-style ``pattern``, sorted."""
    keys: set[str] = set()
    for rec in records:
        for row in safe_step_rows(rec):
            keys.update(k for k, v in row.items() if k not in STEP_INDEX_KEYS and _number(v))
    return sorted(k for k in keys if fnmatch.fnmatchcase(k, pattern))


def plot_steps(records: Iterable[dict], out: str | Path, keys: Sequence[str] | str = ("loss/*",),
               smoothing: float = 0.0) -> Path:
    """Per-step logged values whose keys match ``keys`` (shell patterns), one panel per pattern."""
    plt = pyplot()
    patterns = [keys] if isinstance(keys, str) else list(keys)
    if not patterns:
        raise UserError("the steps figure needs at least one key pattern", hint="e.g. --keys 'loss/*'")
    w = check_smoothing(smoothing)
    recs = [(r, safe_step_rows(r)) for r in records]
    recs = [(r, rows) for r, rows in recs if rows]
    if not recs:
        raise UserError("the given records have no per-step log",
                        hint="per-step values are logged every train.log_every steps")
    matched = {p: step_keys([r for r, _ in recs], p) for p in patterns}
    if not any(matched.values()):
        every = step_keys([r for r, _ in recs], "*")
        shown = ", ".join(every[:20]) + (", ..." if len(every) > 20 else "")
        raise UserError(f"no logged step value matches {' '.join(repr(p) for p in patterns)}",
                        hint=f"logged keys: {shown or '(none)'}")
    ncols = min(len(patterns), 3)
    nrows = math.ceil(len(patterns) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.6 * nrows), squeeze=False)
    fields = distinguishing([r for r, _ in recs])
    many = len(recs) > 1
    for i, pattern in enumerate(patterns):
        ax = axes[i // ncols][i % ncols]
        for rec, rows in recs:
            for key in matched[pattern]:
                xs, ys = series(rows, key)
                if xs:
                    ax.plot(xs, smooth(ys, w) if w else ys, lw=1.2,
                            label=f"{key} · {run_label(rec, fields)}" if many else key)
        ax.set_title(pattern, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("value" + (f" (smoothed, {w:g})" if w else ""))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no logged key matches", ha="center", va="center", transform=ax.transAxes)
    for i in range(len(patterns), nrows * ncols):
        axes[i // ncols][i % ncols].axis("off")
    title = "Per-step values" + ("" if many else f": {run_label(recs[0][0])}")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out)


def core_figures() -> dict:
    """The core's figures, as :class:`~mtlbench.api.FigureSpec` by name."""
    from .api import FigureSpec

    return {
        "curves": FigureSpec(
            "curves", "training loss and primary validation metric per task and epoch, of any runs",
            draw=plot_curves),
        "steps": FigureSpec(
            "steps", "per-step logged values (keys matching --keys patterns) over the iterations, of any runs",
            draw=plot_steps,
            options={"keys": "shell patterns of logged step keys, one panel each (default 'loss/*'), "
                             "e.g. --keys 'weight/*' 'cos/*'",
                     "smoothing": "exponential smoothing weight in [0, 1) (default 0: raw values)"}),
    }


# ---------------------------------------------------------------------------
# every figure: the core's and the methods'
# ---------------------------------------------------------------------------

@dataclass
class FigureEntry:
    """One drawable figure: its spec and who provides it (``""``: the core, else a method name)."""

    spec: Any  # mtlbench.api.FigureSpec
    provider: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qualified(self) -> str:
        """``provider:name`` for a method's figure, ``name`` for the core's."""
        return f"{self.provider}:{self.name}" if self.provider else self.name


def available_figures() -> list[FigureEntry]:
    """The core's figures, then every registered method's (``Method.figures()``), in name order."""
    from .registry import METHODS

    out = [FigureEntry(spec) for spec in core_figures().values()]
    for entry in METHODS.entries():
        hook = getattr(entry.obj, "figures", None)
        if not callable(hook):
            continue
        try:
            specs = hook() or {}
        except Exception as exc:  # a broken plugin must not take the other figures down
            warn(f"method {entry.name!r}: its figures() failed ({exc}); its figures are left out")
            continue
        out += [FigureEntry(spec, entry.name) for spec in specs.values()]
    return out


def find_figure(kind: str, figures: list[FigureEntry] | None = None) -> FigureEntry:
    """The figure ``kind`` names (``name``, or ``method:name`` when two share a name)."""
    figures = available_figures() if figures is None else figures
    hits = [f for f in figures if kind in (f.name, f.qualified)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise UserError(f"--kind {kind!r} is ambiguous: {', '.join(f.qualified for f in hits)} all draw a "
                        f"figure of that name", hint=f"name one of them: --kind {hits[-1].qualified}")
    names = sorted({n for f in figures for n in (f.name, f.qualified)})
    close = difflib.get_close_matches(kind, names, n=3, cutoff=0.5)
    msg = f"--kind {kind!r} is not a figure"
    if close:
        msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
    raise UserError(msg + f"\n  figures: {', '.join(f.qualified for f in figures)}",
                    hint="`mtlbench plot --list` shows them with what each draws")


def default_selection(kind: str | FigureEntry, records: list[dict]) -> list[dict]:
    """The records figure ``kind`` draws when none are named (its ``select``; else all of them)."""
    entry = kind if isinstance(kind, FigureEntry) else find_figure(kind)
    return entry.spec.select(records) if entry.spec.select else records


def make_plot(kind: str | FigureEntry, records: list[dict], out_dir: str | Path, fmt: str = "png",
              **options) -> Path:
    """Draw figure ``kind`` from ``records`` into ``<out_dir>/<name>.<fmt>``.

    ``options`` must be options the figure declares (``FigureSpec.options``).
    """
    entry = kind if isinstance(kind, FigureEntry) else find_figure(kind)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not a figure format", hint=f"use one of: {', '.join(FORMATS)}")
    unknown = [k for k in options if k not in entry.spec.options]
    if unknown:
        takes = ", ".join(entry.spec.options) or "none"
        raise UserError(f"figure {entry.qualified!r} takes no option {', '.join(repr(k) for k in unknown)} "
                        f"(it would do nothing)", hint=f"its options: {takes}")
    return entry.spec.draw(records, Path(out_dir) / f"{entry.name}.{fmt}", **options)
