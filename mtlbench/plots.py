"""The paper's figures and training curves, drawn from run records with matplotlib.

* ``fig3``: Fig. 3 of the paper: the smoothed MTL and STL task losses over the
  iterations of okd runs, one panel per run (the paper's (a) without and (b)
  with online task weighting).  Reads the per-step history keys
  ``mtl/<task>`` and ``stl/<task>`` (and ``lambda/<task>``, drawn in a second
  row when the run logged it).
* ``fig4``: Fig. 4: box plots of the AFD weights ω per layer and task over the
  epochs of okd runs, the final value marked by a red star.  Reads the epoch
  history's ``logs["omega"] = {task: [one value per layer]}``.
* ``curves``: training curves of any runs: the mean training loss per task and
  the main validation metric of each task (mIoU, depth abs error, normal
  mean angle) per epoch.

matplotlib is an optional extra (``pip install -e ".[plot]"``); without it the
functions raise a :class:`~mtlbench.errors.UserError` saying so.  Figures are
written with the non-interactive Agg backend, as PNG or PDF.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UserError

KINDS = ("fig3", "fig4", "curves")
#: the metric drawn per task in ``curves`` (one per task, as in Auto-Lambda's Δ)
PRIMARY = {"semseg": "miou", "depth": "abs_err", "normal": "mean"}
FORMATS = ("png", "pdf")


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib, which is not installed",
                        hint='install the extra: pip install -e ".[plot]"  (or: pip install matplotlib)') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------

def load_runs(paths: Sequence[str | Path] | None, results: str | Path = "results") -> list[dict]:
    """Records from files or directories (searched recursively); all under ``results`` if none."""
    from .runs import iter_records, read_record

    if not paths:
        recs = list(iter_records(results))
        if not recs:
            raise UserError(f"no run records under {Path(results) / 'runs'}",
                            hint="train some first (mtlbench run ...), or name records with --runs")
        return recs
    recs = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = [read_record(q) for q in sorted(p.rglob("*.json"))]
            if not found:
                raise UserError(f"--runs {p}: no run records (*.json) in this directory")
            recs.extend(found)
        else:
            recs.append(read_record(p))
    return recs


def run_label(rec: dict, fields: Sequence[str] = ()) -> str:
    """``method (non-default options) · backbone · seed S`` (plus ``extra`` fields: preset, dataset)."""
    from .tables.build import method_defaults

    opts = {k: v for k, v in (rec.get("config", {}).get("method") or {}).items() if k != "name"}
    defaults = method_defaults(rec.get("method", "")) or {}
    changed = {k: v for k, v in opts.items() if k in defaults and defaults[k] != v}
    extra = ", ".join(f"{k}={v}" for k, v in changed.items())
    label = f"{rec.get('method')}{f' ({extra})' if extra else ''} · {rec.get('backbone')} · seed {rec.get('seed')}"
    if "dataset" in fields:
        label += f" · {_dataset_of(rec)}"
    if "preset" in fields:
        label += f" · {rec.get('preset')}"
    return label


def _dataset_of(rec: dict) -> str:
    variant = (rec.get("config", {}).get("dataset") or {}).get("variant")
    return f"{rec.get('dataset')}" + (f"/{variant}" if variant else "")


def _distinguishing(recs: Sequence[dict]) -> list[str]:
    """The label fields needed to tell runs apart beyond method, options, backbone and seed."""
    fields = []
    if len({_dataset_of(r) for r in recs}) > 1:
        fields.append("dataset")
    if len({r.get("preset") for r in recs}) > 1:
        fields.append("preset")
    return fields


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


def _tasks_of(rec: dict) -> list[str]:
    tasks = list(rec.get("tasks") or {}) or list(rec.get("metrics") or {})
    if not tasks:
        for e in rec.get("history", {}).get("epochs", []):
            tasks = list(e.get("train_loss") or {})
            if tasks:
                break
    return tasks


def _series(steps: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for s in steps:
        if key in s and s[key] is not None:
            xs.append(int(s.get("step", len(xs))))
            ys.append(float(s[key]))
    return xs, ys


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


# ---------------------------------------------------------------------------
# Fig. 3: MTL vs STL task losses (with and without OTW)
# ---------------------------------------------------------------------------

def plot_fig3(records: Iterable[dict], out: str | Path, smoothing: float = 0.9) -> Path:
    """Fig. 3: smoothed MTL (solid) and STL (dashed) losses per task over iterations."""
    plt = _plt()
    recs = [r for r in records if any(k.startswith("mtl/") for s in r.get("history", {}).get("steps", [])
                                      for k in s)]
    if not recs:
        raise UserError("fig3 needs okd runs: none of the given records has per-step 'mtl/<task>' losses",
                        hint="pass okd records with --runs (e.g. with and without --set method.otw=false)")
    # the paper's order: (a) without OTW, then (b) with OTW
    recs.sort(key=lambda r: (bool((r.get("config", {}).get("method") or {}).get("otw", True)),
                             r.get("created", "")))
    has_lambda = any(k.startswith("lambda/") for r in recs for s in r["history"]["steps"] for k in s)
    nrows = 2 if has_lambda else 1
    fig, axes = plt.subplots(nrows, len(recs), figsize=(5.5 * len(recs), 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, rec in enumerate(recs):
        steps = rec["history"]["steps"]
        otw = (rec.get("config", {}).get("method") or {}).get("otw", True)
        ax = axes[0][j]
        for i, task in enumerate(_tasks_of(rec)):
            c = colors[i % len(colors)]
            for kind, style in (("mtl", "-"), ("stl", "--")):
                xs, ys = _series(steps, f"{kind}/{task}")
                if xs:
                    ax.plot(xs, smooth(ys, smoothing), style, color=c, lw=1.4,
                            label=f"{kind.upper()} {task}")
        ax.set_title(f"({chr(97 + j)}) {'with' if otw else 'without'} OTW\n{run_label(rec)}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"task loss (smoothed, {smoothing:g})")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        if has_lambda:
            lax = axes[1][j]
            for i, task in enumerate(_tasks_of(rec)):
                xs, ys = _series(steps, f"lambda/{task}")
                if xs:
                    lax.plot(xs, ys, color=colors[i % len(colors)], lw=1.0, label=f"λ {task}")
            lax.set_xlabel("iteration")
            lax.set_ylabel("task weight λ (Eq. 3)")
            lax.grid(alpha=0.3)
            if lax.lines:
                lax.legend(fontsize=7)
            else:
                lax.text(0.5, 0.5, "no OTW: λ_i = 1", ha="center", va="center", transform=lax.transAxes)
                lax.set_yticks([])
    fig.suptitle("MTL and STL task losses during online distillation (Fig. 3)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


# ---------------------------------------------------------------------------
# Fig. 4: ω per layer and task over epochs
# ---------------------------------------------------------------------------

def omega_history(rec: dict) -> dict[str, list[list[float]]]:
    """``{task: [[ω per layer] per epoch]}`` from a record's epoch logs."""
    out: dict[str, list[list[float]]] = {}
    for e in rec.get("history", {}).get("epochs", []):
        om = (e.get("logs") or {}).get("omega")
        if not om:
            continue
        for task, values in om.items():
            out.setdefault(task, []).append([float(v) for v in values])
    return out


def plot_fig4(records: Iterable[dict], out: str | Path) -> Path:
    """Fig. 4: box plots of ω per layer (over epochs) for each task; the final value starred."""
    plt = _plt()
    recs = [(r, omega_history(r)) for r in records]
    recs = [(r, om) for r, om in recs if om]
    if not recs:
        raise UserError("fig4 needs okd runs with learnable AFD weights: none of the given records logs "
                        "'omega' in its epoch history",
                        hint="pass okd records with afd: ours (or softmax, select_skip) via --runs")
    ntasks = max(len(om) for _, om in recs)
    fig, axes = plt.subplots(len(recs), ntasks, figsize=(4.2 * ntasks, 3.4 * len(recs)), squeeze=False)
    for i, (rec, om) in enumerate(recs):
        for j, (task, per_epoch) in enumerate(om.items()):
            ax = axes[i][j]
            nl = max(len(v) for v in per_epoch)
            by_layer = [[v[k] for v in per_epoch if k < len(v)] for k in range(nl)]
            positions = list(range(1, nl + 1))
            ax.boxplot(by_layer, positions=positions, widths=0.6)
            ax.plot(positions, [per_epoch[-1][k] if k < len(per_epoch[-1]) else float("nan")
                                for k in range(nl)], "r*", ms=9, label="final")
            ax.set_title(f"{task}" + (f"\n{run_label(rec)}" if j == 0 else ""), fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("ω", rotation=0, labelpad=8)  # rotated, ω reads as a 3
            ax.grid(alpha=0.3, axis="y")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
        for j in range(len(om), ntasks):
            axes[i][j].axis("off")
    fig.suptitle(f"AFD weights ω per layer over {max(len(v) for _, om in recs for v in om.values())} "
                 f"epochs, final value starred (Fig. 4)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


# ---------------------------------------------------------------------------
# training curves
# ---------------------------------------------------------------------------

def plot_curves(records: Iterable[dict], out: str | Path) -> Path:
    """Per task: the mean training loss per epoch (top) and the main validation metric (bottom)."""
    plt = _plt()
    recs = [r for r in records if r.get("history", {}).get("epochs")]
    if not recs:
        raise UserError("the given records have no epoch history to plot")
    tasks: list[str] = []
    for r in recs:
        tasks += [t for t in _tasks_of(r) if t not in tasks]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.4), squeeze=False)
    fields = _distinguishing(recs)
    for rec in recs:
        epochs = rec["history"]["epochs"]
        label = run_label(rec, fields)
        for j, task in enumerate(tasks):
            xs = [e["epoch"] + 1 for e in epochs if task in (e.get("train_loss") or {})]
            ys = [e["train_loss"][task] for e in epochs if task in (e.get("train_loss") or {})]
            if xs:
                axes[0][j].plot(xs, ys, marker="o", ms=3, label=label)
            metrics = (rec.get("tasks", {}).get(task, {}) or {}).get("metrics") or {}
            known = list(metrics) or list((rec.get("metrics") or {}).get(task, {}))
            key = PRIMARY.get(task) if PRIMARY.get(task) in known else (known[0] if known else None)
            if key is None:
                continue
            pts = [(e["epoch"] + 1, e["metrics"][""][task][key]) for e in epochs
                   if e.get("metrics") and task in (e["metrics"].get("") or {})
                   and key in e["metrics"][""][task]]
            if pts:
                axes[1][j].plot(*zip(*pts), marker="o", ms=3, label=label)
                arrow = {"higher": "↑", "lower": "↓"}.get(metrics.get(key, ""), "")
                axes[1][j].set_ylabel(f"val {key} {arrow}")
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
    return _save(fig, out)


def make_plot(kind: str, records: list[dict], out_dir: str | Path, fmt: str = "png", **kw) -> Path:
    """Draw figure ``kind`` from ``records`` into ``<out_dir>/<kind>.<fmt>``."""
    if kind not in KINDS:
        raise UserError(f"--kind {kind!r} is not a plot", hint=f"use one of: {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not a figure format", hint=f"use one of: {', '.join(FORMATS)}")
    out = Path(out_dir) / f"{kind}.{fmt}"
    if kind == "fig3":
        return plot_fig3(records, out, **kw)
    if kind == "fig4":
        return plot_fig4(records, out)
    return plot_curves(records, out)


def _otw(rec: dict) -> bool:
    return bool((rec["config"].get("method") or {}).get("otw", True))


def _same_but_otw(a: dict, b: dict) -> bool:
    """Whether two okd records differ in ``method.otw`` only (same data, backbone, recipe, seed)."""
    from .runs import same_setting

    def rest(r):
        return {k: v for k, v in (r["config"].get("method") or {}).items() if k != "otw"}

    return (a.get("seed") == b.get("seed") and a.get("dataset") == b.get("dataset")
            and same_setting(a, b) and rest(a) == rest(b))


def _default_method_config(rec: dict) -> bool:
    """Whether a run used its method's default settings (the method as proposed)."""
    import dataclasses

    from .registry import METHODS

    try:
        cfg_cls = METHODS.get(rec.get("method", "")).Config
        defaults = dataclasses.asdict(cfg_cls()) if cfg_cls is not None else {}
    except Exception:  # an uninstalled plugin: no way to tell
        return False
    used = {k: v for k, v in (rec["config"].get("method") or {}).items() if k != "name"}
    return all(used.get(k, v) == v for k, v in defaults.items())


def default_selection(kind: str, records: list[dict]) -> list[dict]:
    """Records to draw when none are named: fig3 the newest pair of okd runs that differ
    only in OTW (without, with; else the newest of each), fig4 the newest run that logs ω,
    preferring runs with their method's default settings, curves every run."""
    newest = sorted(records, key=lambda r: r.get("created", ""), reverse=True)
    if kind == "fig3":
        okd = [r for r in newest if r.get("method") == "okd"
               and any(k.startswith("mtl/") for s in r["history"]["steps"] for k in s)]
        pairs = [(off, on) for off in okd if not _otw(off) for on in okd if _otw(on) and _same_but_otw(off, on)]
        if pairs:
            return list(max(pairs, key=lambda p: max(p[0].get("created", ""), p[1].get("created", ""))))
        picked: dict[bool, dict] = {}
        for r in okd:
            picked.setdefault(_otw(r), r)
        return [picked[k] for k in (False, True) if k in picked]
    if kind == "fig4":
        logged = [r for r in newest if omega_history(r)]
        return ([r for r in logged if _default_method_config(r)] or logged)[:1]
    return records
