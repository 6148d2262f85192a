"""Input-blind references: what a network scores without looking at its input.

Each task's :meth:`~mtlbench.tasks.Task.reference_fitter` fits constant prediction
maps on the *training* targets (depth: the per-pixel mean of valid depths and the
median of all; semseg: the per-pixel majority class and the global one; normals: the
per-pixel mean direction and the global one; see :mod:`mtlbench.tasks`).  This module
fits them on a dataset's train split, scores every map on the val split with the
task's own metric (``task.new_metric()``, the code that scores the runs), and caches
the result per dataset.  :func:`learned` then says, per task, how much a run beats
the strongest reference, and flags the tasks it has not learned (degenerate).

Example::

    from mtlbench.reference import reference_metrics, learned_from_metrics

    ref = reference_metrics(tasks, train_set, val_set)       # cached under $MTLBENCH_CACHE/reference
    ref.metrics["depth"]["pixel_mean"]                       # {"abs_err": ..., "rel_err": ...}
    flags = learned_from_metrics(run_metrics, ref, tasks)    # {task: Learned(...)}
    [t for t, f in flags.items() if f.degenerate]

``train_set`` and ``val_set`` are the splits a dataset plugin returns
(``plugin.split("train")``, ``plugin.split("val")``, as ``trainer.build`` opens them).
Training augmentation is switched off for the fit (a split with an ``augment``
attribute is copied with ``augment = False``): the reference is a function of the
training targets, not of random crops.  Every image of both splits must have one
size (the maps are per pixel); a val split of another size is a :class:`UserError`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .errors import UserError
from .tasks import Task

__all__ = ["REFERENCE_VERSION", "DEGENERATE_THRESHOLD", "ReferenceResult", "fit_references",
           "evaluate_references", "dataset_identity", "cache_path", "reference_metrics",
           "reference_for_dataset", "Learned", "learned", "learned_from_metrics"]

#: bump when fitting or evaluating changes, so cached results are recomputed
REFERENCE_VERSION = 1

#: a task whose primary metric does not beat the reference's by more than this (relative:
#: 0.05 = 5%) has not been learned from the input
DEGENERATE_THRESHOLD = 0.05


def _loader(dataset, batch_size: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _unaugmented(dataset):
    if getattr(dataset, "augment", False):
        dataset = copy.copy(dataset)
        dataset.augment = False
    return dataset


def _target(batch: Mapping, task: str, split: str) -> torch.Tensor:
    if task not in batch:
        raise UserError(f"the {split} split yields no {task!r} targets (its keys: {', '.join(map(str, batch))})",
                        hint="the dataset's tasks() and its splits must name the same tasks")
    return batch[task]


def fit_references(tasks: Mapping[str, Task], train_set, *, batch_size: int = 32) -> dict[str, dict[str, torch.Tensor]]:
    """``{task: {variant: map}}``: every task's reference maps fitted on ``train_set``.

    Tasks whose :meth:`~mtlbench.tasks.Task.reference_fitter` is None are left out."""
    fitters = {name: f for name, t in tasks.items() if (f := t.reference_fitter()) is not None}
    if not fitters:
        return {}
    for batch in _loader(_unaugmented(train_set), batch_size):
        for name, fitter in fitters.items():
            fitter.update(_target(batch, name, "train"))
    return {name: f.predictions() for name, f in fitters.items()}


def evaluate_references(tasks: Mapping[str, Task], maps: Mapping[str, Mapping[str, torch.Tensor]], val_set, *,
                        batch_size: int = 32) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {variant: {metric: value}}}``: each map scored on ``val_set`` by ``task.new_metric()``,
    the map standing as the prediction for every image (as ``trainer.evaluate`` scores a run)."""
    metrics = {t: {v: tasks[t].new_metric() for v in variants} for t, variants in maps.items()}
    for batch in _loader(val_set, batch_size):
        for t, variants in maps.items():
            target = _target(batch, t, "val")
            for v, m in variants.items():
                if tuple(target.shape[1:]) != tuple(m.shape):
                    raise UserError(f"the val split's {t!r} targets have shape {tuple(target.shape[1:])}, the "
                                    f"train split's {tuple(m.shape)}: an input-blind reference is a per-pixel "
                                    "map, so both splits need images of one size",
                                    hint="set dataset.image_size so that both splits are resized alike")
                metrics[t][v].update(m.unsqueeze(0).expand(target.shape[0], *m.shape), target)
    return {t: {v: {k: float(x) for k, x in m.compute().items()} for v, m in variants.items()}
            for t, variants in metrics.items()}


# -- identity and cache ------------------------------------------------------------------------

def _split_fingerprint(ds) -> str | None:
    """What identifies a split's content: its own ``fingerprint()`` (a hook for third-party
    datasets), else for an MTAN-format split (``MTANDataset``: real data, or the synthetic data's
    generated directory) the :func:`~mtlbench.data.base.fingerprint` of its files (paths, sizes,
    modification times, inodes) with the image size it is resized to; else None (unknown)."""
    hook = getattr(ds, "fingerprint", None)
    if callable(hook):
        return str(hook())
    from .data.mtan import MTANDataset

    if isinstance(ds, MTANDataset):
        from .data.base import fingerprint
        from .data.mtan import data_files

        prefix = os.path.join(os.fspath(ds.root), ds.split, "")
        files = [f for f in data_files(ds.root, ds.spec) if f.startswith(prefix)]
        return fingerprint(files, {"split": ds.split, "spec": ds.spec.key, "image_size": ds.image_size})
    return None


def dataset_identity(tasks: Mapping[str, Task], train_set, val_set) -> str | None:
    """A digest of both splits' content (:func:`_split_fingerprint`), the tasks (class, settings,
    fitter and its version) and :data:`REFERENCE_VERSION`; None when a split's content cannot
    be identified (then nothing is cached)."""
    splits = {"train": _split_fingerprint(train_set), "val": _split_fingerprint(val_set)}
    if None in splits.values():
        return None
    described = {}
    for name, t in sorted(tasks.items()):
        f = t.reference_fitter()
        described[name] = {"class": f"{type(t).__module__}.{type(t).__qualname__}", "repr": repr(t),
                           "describe": t.describe(),
                           "fitter": None if f is None else [f"{type(f).__module__}.{type(f).__qualname__}",
                                                             getattr(f, "version", None)]}
    blob = json.dumps({"splits": splits, "tasks": described, "version": REFERENCE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(identity: str) -> Path:
    """Where the references of a dataset identity are cached: ``$MTLBENCH_CACHE/reference/``."""
    from .data.base import cache_dir

    return cache_dir() / "reference" / f"{identity[:32]}.json"


@dataclass(frozen=True)
class ReferenceResult:
    """The references' val metrics, ``{task: {variant: {metric: value}}}``, and where they come from.

    ``identity``: :func:`dataset_identity` (None: not cached); ``images``: training and val
    images seen; ``cached``: read from the cache rather than computed."""

    metrics: dict[str, dict[str, dict[str, float]]]
    identity: str | None = None
    images: dict[str, int] = field(default_factory=dict)
    cached: bool = False

    def best(self, task: str, info) -> tuple[str, dict[str, float]]:
        """The variant of ``task`` best on the metric ``info`` (a :class:`~mtlbench.tasks.MetricInfo`,
        e.g. ``tasks[task].primary_metric``) and its metrics: the strongest input-blind reference.
        Ties go to the first variant; NaN values never win."""
        variants = self.metrics[task]
        sign = 1.0 if info.higher_is_better else -1.0
        scored = [(v, m) for v, m in variants.items() if not math.isnan(m.get(info.key, math.nan))]
        if not scored:
            name = next(iter(variants))
            return name, variants[name]
        return max(scored, key=lambda vm: sign * vm[1][info.key])

    def to_json(self) -> dict:
        return {"identity": self.identity, "version": REFERENCE_VERSION, "images": self.images,
                "metrics": self.metrics}

    @classmethod
    def from_json(cls, data: dict, cached: bool = True) -> "ReferenceResult":
        def num(x):
            return math.nan if x is None else float(x)

        metrics = {t: {v: {k: num(x) for k, x in m.items()} for v, m in variants.items()}
                   for t, variants in data["metrics"].items()}
        return cls(metrics, data.get("identity"), dict(data.get("images", {})), cached)


def reference_metrics(tasks: Mapping[str, Task], train_set, val_set, *, cache: bool = True,
                      identity: str | None = None, batch_size: int = 32,
                      log: Callable[[str], None] | None = None) -> ReferenceResult:
    """Fit every task's references on ``train_set``, score them on ``val_set``; cached.

    ``identity``: what identifies the dataset (default :func:`dataset_identity`); with one and
    ``cache``, the result is read from / written to :func:`cache_path` (atomically; a read-only
    cache only costs recomputing).  ``log`` receives a line when the references are computed."""
    if identity is None:
        identity = dataset_identity(tasks, train_set, val_set)
    path = cache_path(identity) if (cache and identity) else None
    if path is not None:
        try:
            saved = json.loads(path.read_text())
            if saved.get("identity") == identity and saved.get("version") == REFERENCE_VERSION:
                return ReferenceResult.from_json(saved)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass
    if log is not None:
        log(f"fitting input-blind references on {len(train_set)} training images, scoring them on "
            f"{len(val_set)} val images" + ("" if path is None else f" (cached in {path})"))
    maps = fit_references(tasks, train_set, batch_size=batch_size)
    metrics = evaluate_references(tasks, maps, val_set, batch_size=batch_size)
    result = ReferenceResult(metrics, identity, {"train": len(train_set), "val": len(val_set)}, False)
    if path is not None:
        from .runs import atomic_write_json

        try:
            atomic_write_json(path, result.to_json())
        except OSError:
            pass
    return result


def reference_for_dataset(dataset, **kwargs: Any) -> ReferenceResult:
    """:func:`reference_metrics` of a dataset plugin instance: its tasks, train and val splits."""
    return reference_metrics(dataset.tasks(), dataset.split("train"), dataset.split("val"), **kwargs)


# -- has a run learned the task? -------------------------------------------------------------------

@dataclass(frozen=True)
class Learned:
    """A run's value of a task's metric against the input-blind reference's.

    ``improvement``: the run's relative improvement over the reference, positive when the run
    is better; ``degenerate``: ``improvement <= threshold`` (the run is not clearly better than
    a prediction that ignores the input), None when a value is NaN."""

    run: float
    reference: float
    higher_is_better: bool
    improvement: float
    threshold: float
    degenerate: bool | None


def learned(run: Mapping[str, float], reference: Mapping[str, float], higher_is_better: Mapping[str, bool],
            threshold: float = DEGENERATE_THRESHOLD) -> dict[str, Learned]:
    """Per task, how much better a run is than the input-blind reference, and whether that is
    too little to say it learned the task.

    ``run``, ``reference``: ``{task: value}`` of one metric per task (the primary metric; for
    several seeds, their mean or one seed's); ``higher_is_better``: ``{task: direction}``.
    Tasks in both ``run`` and ``reference`` are compared.  With ``r`` the run's value and ``q``
    the reference's::

        improvement = (q - r) / |q|     lower is better (errors): the fraction of the
                                        reference's error the run removes, i.e. of the gap
                                        to a perfect 0 that it closes
        improvement = (r - q) / |q|     higher is better (mIoU): the relative gain

    which is the paper's per-metric Δ term of the run against the reference (``100 *
    improvement`` Δ points).  A task is *degenerate* when ``improvement <= threshold``
    (default 0.05: the run does not beat the reference by more than 5% of its value; 0 flags
    only runs no better than the reference).  With ``q == 0`` the improvement is ``+inf`` / ``-inf`` / 0 as the
    run is better / worse / equal; a NaN value gives NaN and ``degenerate = None``.
    """
    if not (threshold >= 0 and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    out = {}
    for task in run:
        if task not in reference:
            continue
        if task not in higher_is_better:
            raise ValueError(f"learned: no direction given for task {task!r}")
        r, q, hib = float(run[task]), float(reference[task]), bool(higher_is_better[task])
        if math.isnan(r) or math.isnan(q):
            out[task] = Learned(r, q, hib, math.nan, threshold, None)
            continue
        gain = (r - q) if hib else (q - r)
        if q == 0:
            imp = 0.0 if gain == 0 else math.copysign(math.inf, gain)
        else:
            imp = gain / abs(q)
        out[task] = Learned(r, q, hib, imp, threshold, bool(imp <= threshold))
    return out


def learned_from_metrics(run_metrics: Mapping[str, Mapping[str, float]], result: ReferenceResult,
                         tasks: Mapping[str, Task], threshold: float = DEGENERATE_THRESHOLD) -> dict[str, Learned]:
    """:func:`learned` on each task's primary metric: the run's ``{task: {metric: value}}`` (a
    record's final metrics) against the strongest reference variant (:meth:`ReferenceResult.best`)."""
    run, ref, hib = {}, {}, {}
    for name, task in tasks.items():
        if name not in run_metrics or name not in result.metrics:
            continue
        info = task.primary_metric
        run[name] = run_metrics[name][info.key]
        ref[name] = result.best(name, info)[1][info.key]
        hib[name] = info.higher_is_better
    return learned(run, ref, hib, threshold)


def learned_block(dataset, metrics: Mapping[str, Mapping[str, float]],
                  threshold: float = DEGENERATE_THRESHOLD) -> dict | None:
    """What a run record says about each task against the input-blind reference (its ``learned``
    entry): ``{task: {metric, value, reference, reference_variant, improvement, degenerate,
    threshold}}`` for the task's primary metric; None when the references cannot be computed
    (the record is still written: tables then compute the comparison themselves)."""
    try:
        result = reference_for_dataset(dataset)
        tasks = dict(dataset.tasks())
        out = {}
        for task, lr in learned_from_metrics(metrics, result, tasks, threshold).items():
            info = tasks[task].primary_metric
            out[task] = {"metric": info.key, "value": lr.run, "reference": lr.reference,
                         "reference_variant": result.best(task, info)[0], "improvement": lr.improvement,
                         "degenerate": lr.degenerate, "threshold": threshold}
        return out
    except Exception:  # noqa: BLE001 - a reference that cannot be computed must not lose the run
        return None
