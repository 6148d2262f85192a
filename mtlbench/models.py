"""Building a run's networks from a resolved config.

:func:`assemble` is the one build sequence, shared by training
(:func:`mtlbench.trainer.build`) and by loading a finished run's networks
(:func:`mtlbench.runs.load_trained_method`).  The registries
(:mod:`mtlbench.registry`) only find the plugins by name.
"""
from __future__ import annotations

from typing import Any

from .registry import BACKBONES, DATASETS, METHODS


def assemble(cfg: Any, dataset: Any = None) -> tuple[Any, dict, Any, Any]:
    """The one build sequence of a resolved config: dataset -> tasks -> backbone factory -> method
    (on the CPU).

    ``cfg``: a :class:`~mtlbench.config.ResolvedConfig`; ``dataset``: an already
    built dataset plugin.  Returns ``(dataset, tasks, factory, method)``.
    """
    if dataset is None:
        dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    tasks = dataset.tasks()
    factory = BACKBONES.get(cfg.name("backbone"))(cfg.backbone, tasks)
    factory.check_image_size(cfg.dataset.image_size)
    method = METHODS.get(cfg.name("method"))(cfg.method, tasks, factory)
    return dataset, tasks, factory, method
