"""The relative improvement Δ of the OKD-MTL paper (Eq. 4, after Lin et al.).

For results ``M`` and a reference row ``B``, over the ``N_t`` tasks and the
``N_n`` metrics of task ``n``::

    Δ = 100 / N_t * sum_n  1/N_n * sum_m  s_{n,m} * (M_{n,m} - B_{n,m}) / B_{n,m}

with ``s = +1`` for a metric where higher is better and ``s = -1`` where lower
is better.  Every term is therefore positive when the result improves on the
reference: **positive Δ is better**, and the reference row has Δ = 0.  Metrics
are averaged within a task first, then tasks are averaged, so a task with
five metrics weighs as much as a task with two.  Δ is in percent.

The reference row: the paper (Tables 1-5) measures every method against the
equal-weight MTL baseline ("Baseline (MTL)"), which is the default use here;
Δ against the single-task (STL) row is obtained by passing the STL results as
``reference`` (the usual "Δ vs STL" of LibMTL and the MTAN README).

The direction of every metric is data, passed explicitly: ``{task: {metric:
higher_is_better}}``, from the tasks of a dataset
(:func:`mtlbench.tasks.metric_directions`) or from a run record's ``tasks``
entry (:func:`directions_of`).

Example::

    from mtlbench.delta import delta, per_task_delta

    directions = {"semseg": {"miou": True, "pacc": True},
                  "depth": {"abs_err": False, "rel_err": False}}
    baseline = {"semseg": {"miou": 50.47, "pacc": 73.20},
                "depth": {"abs_err": 0.4431, "rel_err": 0.1904}}
    ours = {"semseg": {"miou": 51.99, "pacc": 73.75},
            "depth": {"abs_err": 0.4112, "rel_err": 0.1701}}
    delta(ours, baseline, directions)           # a float, in percent
    per_task_delta(ours, baseline, directions)  # {"semseg": ..., "depth": ...}

The Δ a finished run prints (:func:`reference_delta`) is against the run of
the same setting of the registered method that declares itself the reference
(:func:`delta_reference`: ``Method.is_delta_reference``), found in the results
directory by :class:`mtlbench.records.RecordStore`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

__all__ = ["delta", "per_task_delta", "directions_of", "delta_reference", "reference_delta"]

Results = Mapping[str, Mapping[str, float]]
Directions = Mapping[str, Mapping[str, bool]]


def _value(x) -> float | None:
    """A metric value as a float, or None when it is missing (None or NaN)."""
    if x is None:
        return None
    v = float(x)
    return None if math.isnan(v) else v


def per_task_delta(
    results: Results, reference: Results, directions: Directions | None = None
) -> dict[str, float]:
    """Δ of each task (percent, positive = better than ``reference``).

    Args:
        results: ``{task: {metric: value}}`` of the method being assessed.
        reference: the same for the reference row (the MTL baseline in the
            paper; pass the STL row for Δ against single-task learning).
        directions: ``{task: {metric: higher_is_better}}`` (required: e.g.
            :func:`mtlbench.tasks.metric_directions` of the dataset's tasks,
            or :func:`directions_of` a run record).

    A metric counts when both ``results`` and ``reference`` have a value for
    it (a missing key, ``None`` or NaN skips it); a task with no such metric
    is skipped.  The returned dict holds the tasks that counted, in the order
    of ``reference``.

    Raises:
        ValueError: ``directions`` is missing, a metric present in both has no
            known direction, or its reference value is 0 (the relative change
            is undefined).
    """
    if directions is None:
        raise ValueError(
            "delta: the metric directions are required: pass directions={task: {metric: "
            "higher_is_better}} (mtlbench.tasks.metric_directions(dataset.tasks()), or "
            "mtlbench.delta.directions_of(record))")
    out: dict[str, float] = {}
    for task, ref_metrics in reference.items():
        res_metrics = results.get(task)
        if not res_metrics or not ref_metrics:
            continue
        terms = []
        for metric, ref_raw in ref_metrics.items():
            b = _value(ref_raw)
            m = _value(res_metrics.get(metric))
            if b is None or m is None:
                continue
            task_dirs = directions.get(task)
            if task_dirs is None or metric not in task_dirs:
                known = sorted(task_dirs) if task_dirs is not None else sorted(directions)
                raise ValueError(
                    f"delta: no direction known for metric {task!r}/{metric!r} "
                    f"(known {'metrics of ' + repr(task) if task_dirs is not None else 'tasks'}: "
                    f"{known}); pass directions={{task: {{metric: higher_is_better}}}}"
                )
            if b == 0:
                raise ValueError(
                    f"delta: reference value of {task!r}/{metric!r} is 0, so the relative "
                    f"change (M - B) / B is undefined"
                )
            sign = 1.0 if task_dirs[metric] else -1.0
            terms.append(sign * (m - b) / b)
        if terms:
            out[task] = sum(terms) / len(terms) * 100.0
    return out


def directions_of(*records: Mapping) -> dict[str, dict[str, bool]]:
    """The metric directions that run records keep under ``record["tasks"]``, merged."""
    out: dict[str, dict[str, bool]] = {}
    for rec in records:
        for task, info in (rec.get("tasks") or {}).items():
            for metric, d in ((info or {}).get("metrics") or {}).items():
                out.setdefault(task, {})[metric] = d == "higher"
    return out


def delta(results: Results, reference: Results, directions: Directions | None = None) -> float:
    """The paper's Δ (Eq. 4) of ``results`` against ``reference``, in percent.

    ``Δ = 100/N_t Σ_n 1/N_n Σ_m (-1)^{p_nm} (M_nm - B_nm) / B_nm``, with the
    sign chosen so that an improvement is positive (``p_nm = 0`` where higher
    is better, 1 where lower is better).  Positive Δ = better than the
    reference; Δ of the reference against itself is 0.  In the paper the
    reference is the MTL baseline row; pass the STL row for Δ against
    single-task learning.  ``directions`` is required (``{task: {metric:
    higher_is_better}}``); see :func:`per_task_delta` for the arguments and
    for how missing metrics are handled.

    Raises:
        ValueError: no task has a metric present in both ``results`` and
            ``reference`` (or see :func:`per_task_delta`).
    """
    per_task = per_task_delta(results, reference, directions)
    if not per_task:
        raise ValueError(
            "delta: results and reference have no metric in common "
            f"(results tasks: {sorted(results)}, reference tasks: {sorted(reference)}); "
            "expected {task: {metric: value}} dicts with matching task and metric keys"
        )
    return sum(per_task.values()) / len(per_task)


# ---------------------------------------------------------------------------
# the reference run of a finished run
# ---------------------------------------------------------------------------

def delta_reference() -> str | None:
    """The registered method Δ is measured against at the end of a run (``Method.is_delta_reference``)."""
    from .registry import METHODS

    refs = [e.name for e in METHODS.entries() if getattr(e.obj, "is_delta_reference", False)]
    return refs[0] if refs else None


def reference_delta(record: Mapping, out: str | Path, reference: str | None = None) -> tuple[float | None, str]:
    """Δ of a record against the reference method's run of the same setting under results
    directory ``out``.

    Returns ``(delta, the reference record's path)``, or ``(None, why not)``.
    """
    from .records import RecordStore

    reference = reference or delta_reference()
    if reference is None:
        return None, "no registered method is marked as the Δ reference"
    if record["method"] == reference:
        return None, f"this is the {reference} run"
    like = record["config"]
    refs = RecordStore.scan_method(out, reference, like).find(reference, like)
    if not refs:
        return None, f"no {reference} record of this setting yet"
    try:
        return delta(record["metrics"], refs[0]["metrics"], directions_of(record)), refs[0]["_path"]
    except ValueError as exc:  # e.g. a reference metric of 0 after a very short run
        return None, str(exc)
