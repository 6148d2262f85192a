"""Single-task learning: one independent network (backbone + head) per task.

The paper's "Single Task" row (Jacob et al., WACV 2023, §4.0.2).  All N
networks train in one run on the same batches; since they share nothing, the
sum of their losses gives each network exactly its own task's gradient.  Each
task's metrics come from its own network.  The checkpoint of an ``stl`` run is
what KD-MTL's teachers and OKD-MTL's pretrained-AFD ablation load
(:func:`mtlbench.runs.load_trained_method`); ``nets[task]`` is task's network.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.api import Method, StepOutput, TaskNetworks
from mtlbench.registry import METHODS


@dataclass
class STLConfig:
    """Single-task networks have no options."""


@METHODS.register("stl")
class STL(Method):
    """One independent network per task (the paper's 'Single Task' row)."""

    Config = STLConfig
    summary = "single-task networks: one backbone + head per task, trained side by side"
    data_parallel = True  # every network's gradient is averaged by the core

    def build(self):
        self.model = TaskNetworks({t: self.make_network([t]) for t in self.task_names})

    @property
    def nets(self):
        return self.model.nets

    def clip_groups(self):
        # independent networks: train.grad_clip bounds each one's gradient on its own
        return [[p for p in net.parameters() if p.requires_grad] for net in self.nets.values()]

    def training_step(self, batch):
        x = batch["image"]
        losses = {}
        for t, net in self.nets.items():
            losses.update(self.task_losses(net(x), batch))
        return StepOutput(losses=losses, loss=sum(losses.values()))
