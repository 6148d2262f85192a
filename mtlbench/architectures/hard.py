"""Hard parameter sharing: one encoder for all tasks, one head per task (the default architecture).

Caruana, "Multitask Learning", Machine Learning 28, 1997; the shared-trunk
network of every multi-task row of the OKD-MTL paper.  The encoder is the
backbone's for all tasks together, so on a backbone whose encoder has
task-specific paths (``deeplabv3_mtan``) it is that encoder, paths and all.
What the tasks share is what the encoder says (``Encoder.shared_parameters``).
"""
from __future__ import annotations

from mtlbench.api import Architecture, ArchitectureConfig, MultiTaskNet
from mtlbench.registry import ARCHITECTURES


@ARCHITECTURES.register("hard", aliases=("shared", "hps"))
class HardSharing(Architecture):
    """One shared encoder, one head per task."""

    Config = ArchitectureConfig
    summary = "hard parameter sharing: one encoder for all tasks, one head per task (the default)"

    def build(self, backbone, tasks, task_names):
        enc = backbone.encoder(list(task_names))
        return MultiTaskNet(enc, {t: backbone.head(tasks[t]) for t in task_names})
