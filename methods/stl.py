"""Single-task learning: one independent network (backbone + head) per task, a pair alias.

The paper's "Single Task" row (Jacob et al., WACV 2023, §4.0.2): equal weights
on the ``single_task`` architecture (mtlbench/architectures/single_task.py).
All N networks train in one run on the same batches; since they share nothing,
the sum of their losses gives each network exactly its own task's gradient.
Each task's metrics come from its own network.  The checkpoint of an ``stl``
run is what KD-MTL's teachers and OKD-MTL's pretrained-AFD ablation load
(:func:`mtlbench.runs.load_trained_method`); ``nets[task]`` is task's network.
``--method baseline --set method.architecture=single_task`` resolves to ``stl``.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.api import Method
from mtlbench.registry import METHODS


@dataclass
class STLConfig:
    """Single-task networks have no options."""


@METHODS.register("stl")
class STL(Method):
    """One independent network per task (the paper's 'Single Task' row)."""

    Config = STLConfig
    summary = "single-task networks: one backbone + head per task, trained side by side"
    fixed_architecture = "single_task"
    alias_of = "baseline"
    data_parallel = True  # every network's gradient is averaged by the core

    @property
    def nets(self):
        return self.model.nets
