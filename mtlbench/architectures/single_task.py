"""Single-task networks: one independent network (encoder + head) per task, trained side by side.

The paper's "Single Task" row (``--method stl``, equal weights on this
architecture).  Nothing is shared, so a weighting's task weights only scale
each network's own loss; every weighting that needs shared parameters (the
gradient methods, GradNorm) or one multi-task network (KD-MTL, OKD-MTL) is
undefined here and refuses to build.  ``train.grad_clip`` bounds each
network's gradient on its own (``TaskModel.independent_parts``).
"""
from __future__ import annotations

from mtlbench.api import Architecture, ArchitectureConfig, MultiTaskNet, TaskNetworks
from mtlbench.registry import ARCHITECTURES


@ARCHITECTURES.register("single_task", aliases=("stl_nets", "independent"))
class SingleTask(Architecture):
    """One independent network per task."""

    Config = ArchitectureConfig
    summary = "single-task networks: one encoder + head per task, sharing nothing"

    def build(self, backbone, tasks, task_names):
        nets = {}
        for t in task_names:
            enc = backbone.encoder([t])
            nets[t] = MultiTaskNet(enc, {t: backbone.head(tasks[t])})
        return TaskNetworks(nets)
