"""OKD-MTL's figures (the paper's Fig. 3 and Fig. 4), provided to ``mtlbench plot`` through
``OKD.figures()``.

* ``fig3``: Fig. 3 of the paper: the smoothed MTL and STL task losses over the
  iterations, one panel per run, (a) without and (b) with online task
  weighting.  Reads the per-step keys ``mtl/<task>`` and ``stl/<task>`` (and
  ``lambda/<task>``, drawn in a second row when logged).  By default: the
  newest pair of runs that differ only in ``otw`` (same dataset, backbone,
  recipe and seed); failing that the newest run of each kind *on one dataset*.
* ``fig4``: Fig. 4: box plots of the AFD weights ω per layer and task over the
  epochs, the final value marked by a red star.  Reads the epoch logs'
  ``omega = {task: [one value per layer]}``.  By default: the newest run on
  NYUv2-like data (the paper's Fig. 4 is on NYUv2), preferring the method's
  default settings.

This module registers nothing (the leading underscore keeps the registry, which
imports every other module of ``methods/``, from taking it for a plugin) and
imports matplotlib only when drawing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from mtlbench import plots
from mtlbench.api import FigureSpec
from mtlbench.errors import UserError

#: the dataset family the paper's Fig. 4 was drawn on
FIG4_FAMILY = "nyuv2"


def _otw(rec: dict) -> bool:
    return bool(plots.method_options(rec).get("otw", True))


def _logs_losses(rec: dict) -> bool:
    return plots.logs_step_key(rec, "mtl/")


def _dataset_key(rec: dict) -> tuple:
    return rec.get("dataset"), plots.family_of(rec), plots.dataset_of(rec)


def same_but_otw(a: dict, b: dict) -> bool:
    """Whether two records differ in ``method.otw`` only (same data, backbone, recipe, seed)."""
    from mtlbench.runs import same_setting

    def rest(r):
        return {k: v for k, v in plots.method_options(r).items() if k != "otw"}

    return (a.get("method") == b.get("method") and a.get("backbone") == b.get("backbone")
            and _dataset_key(a) == _dataset_key(b)
            and same_setting(a.get("config") or {}, b.get("config") or {}) and rest(a) == rest(b))


def select_fig3(records: list[dict]) -> list[dict]:
    """Fig. 3's default runs: the newest (without OTW, with OTW) pair differing only in OTW;
    else the newest run of each kind on the same dataset; else the newest run alone."""
    runs = [r for r in plots.newest_first(records) if _logs_losses(r)]

    def newest(pair):
        return max(pair[0].get("created", ""), pair[1].get("created", ""))

    pairs = [(off, on) for off in runs if not _otw(off) for on in runs if _otw(on) and same_but_otw(off, on)]
    if pairs:
        return list(max(pairs, key=newest))
    by_data: dict[tuple, dict[bool, dict]] = {}
    for r in runs:  # newest first: the first of each kind per dataset is the newest
        by_data.setdefault(_dataset_key(r), {}).setdefault(_otw(r), r)
    both = [(kinds[False], kinds[True]) for kinds in by_data.values() if len(kinds) == 2]
    if both:
        return list(max(both, key=newest))
    return runs[:1]


def plot_fig3(records: Iterable[dict], out: str | Path, smoothing: float = 0.9) -> Path:
    """Fig. 3: smoothed MTL (solid) and STL (dashed) losses per task over iterations."""
    plt = plots.pyplot()
    w = plots.check_smoothing(smoothing)
    recs = [(r, plots.safe_step_rows(r)) for r in records]
    recs = [(r, rows) for r, rows in recs if any(k.startswith("mtl/") for s in rows for k in s)]
    if not recs:
        raise UserError("fig3 needs okd runs: none of the given records has per-step 'mtl/<task>' losses",
                        hint="pass okd records with --runs (e.g. with and without --set method.otw=false)")
    # the paper's order: (a) without OTW, then (b) with OTW
    recs.sort(key=lambda rr: (_otw(rr[0]), rr[0].get("created", "")))
    has_lambda = any(k.startswith("lambda/") for _, rows in recs for s in rows for k in s)
    nrows = 2 if has_lambda else 1
    fig, axes = plt.subplots(nrows, len(recs), figsize=(5.5 * len(recs), 3.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fields = plots.distinguishing([r for r, _ in recs])
    for j, (rec, steps) in enumerate(recs):
        ax = axes[0][j]
        for i, task in enumerate(plots.tasks_of(rec)):
            c = colors[i % len(colors)]
            for kind, style in (("mtl", "-"), ("stl", "--")):
                xs, ys = plots.series(steps, f"{kind}/{task}")
                if xs:
                    ax.plot(xs, plots.smooth(ys, w), style, color=c, lw=1.4, label=f"{kind.upper()} {task}")
        ax.set_title(f"({chr(97 + j)}) {'with' if _otw(rec) else 'without'} OTW\n{plots.run_label(rec, fields)}",
                     fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"task loss (smoothed, {w:g})")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        if has_lambda:
            lax = axes[1][j]
            for i, task in enumerate(plots.tasks_of(rec)):
                xs, ys = plots.series(steps, f"lambda/{task}")
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
    return plots.save_figure(fig, out)


def omega_history(rec: dict) -> dict[str, list[list[float]]]:
    """``{task: [[ω per layer] per epoch]}`` from a record's epoch logs."""
    out: dict[str, list[list[float]]] = {}
    for e in plots.epoch_rows(rec):
        om = (e.get("logs") or {}).get("omega")
        if not om:
            continue
        for task, values in om.items():
            out.setdefault(task, []).append([float(v) for v in values])
    return out


def select_fig4(records: list[dict]) -> list[dict]:
    """Fig. 4's default run: the newest that logs ω, on NYUv2-like data when there is one,
    with the method's default settings when there is one."""
    logged = [r for r in plots.newest_first(records) if omega_history(r)]
    logged = [r for r in logged if plots.family_of(r) == FIG4_FAMILY] or logged
    return ([r for r in logged if plots.uses_method_defaults(r)] or logged)[:1]


def plot_fig4(records: Iterable[dict], out: str | Path) -> Path:
    """Fig. 4: box plots of ω per layer (over epochs) for each task; the final value starred."""
    plt = plots.pyplot()
    recs = [(r, omega_history(r)) for r in records]
    recs = [(r, om) for r, om in recs if om]
    if not recs:
        raise UserError("fig4 needs okd runs with learnable AFD weights: none of the given records logs "
                        "'omega' in its epoch history",
                        hint="pass okd records with afd: ours (or softmax, select_skip) via --runs")
    ntasks = max(len(om) for _, om in recs)
    fig, axes = plt.subplots(len(recs), ntasks, figsize=(4.2 * ntasks, 3.4 * len(recs)), squeeze=False)
    fields = plots.distinguishing([r for r, _ in recs])
    for i, (rec, om) in enumerate(recs):
        for j, (task, per_epoch) in enumerate(om.items()):
            ax = axes[i][j]
            nl = max(len(v) for v in per_epoch)
            by_layer = [[v[k] for v in per_epoch if k < len(v)] for k in range(nl)]
            positions = list(range(1, nl + 1))
            ax.boxplot(by_layer, positions=positions, widths=0.6)
            ax.plot(positions, [per_epoch[-1][k] if k < len(per_epoch[-1]) else float("nan")
                                for k in range(nl)], "r*", ms=9, label="final")
            ax.set_title(f"{task}" + (f"\n{plots.run_label(rec, fields)}" if j == 0 else ""), fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("ω", rotation=0, labelpad=8)  # rotated, ω reads as a 3
            ax.grid(alpha=0.3, axis="y")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
        for j in range(len(om), ntasks):
            axes[i][j].axis("off")
    epochs = max(len(v) for _, om in recs for v in om.values())
    fig.suptitle(f"AFD weights ω per layer over {epochs} epochs, final value starred (Fig. 4)", fontsize=11)
    fig.tight_layout()
    return plots.save_figure(fig, out)


FIGURES: dict[str, FigureSpec] = {
    "fig3": FigureSpec(
        "fig3", "the paper's Fig. 3: smoothed MTL and STL task losses of okd runs without and with OTW",
        draw=plot_fig3, select=select_fig3,
        options={"smoothing": "exponential smoothing weight in [0, 1) (default 0.9)"}),
    "fig4": FigureSpec(
        "fig4", "the paper's Fig. 4: box plots of the AFD weights ω per layer and task over the epochs",
        draw=plot_fig4, select=select_fig4),
}
