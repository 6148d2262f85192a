"""MTAN: per-task soft attention over a shared network (Liu, Johns and Davison, CVPR 2019).

The backbone builds the attended encoder (:meth:`mtlbench.api.BackboneFactory.mtan_encoder`):
where the attention modules sit depends on the network's stages, so only a
backbone that has an MTAN variant defines this architecture (the DeepLabV3
family: the same encoder as the ``deeplabv3_mtan`` backbone; see
backbones/deeplab.py).  On any other backbone it is unsupported and refuses to
build.  The trunk is shared by all tasks; each task's attention modules are its
own (``Encoder.shared_parameters`` excludes them), and each head reads its own
attended feature, so there is no single shared representation (the gradient
methods' ``grad_on: features`` is undefined; ``grad_on: params`` works).

``--backbone deeplabv3 --set method.architecture=mtan`` builds the same network
as ``--backbone deeplabv3_mtan`` (hard sharing over an encoder that is MTAN
already), under another run identity; the committed records use the latter.
"""
from __future__ import annotations

from mtlbench.api import Architecture, ArchitectureConfig, MultiTaskNet
from mtlbench.errors import UserError
from mtlbench.registry import ARCHITECTURES


@ARCHITECTURES.register("mtan")
class MTAN(Architecture):
    """MTAN: the backbone's shared network with per-task attention, one head per task."""

    Config = ArchitectureConfig
    summary = "MTAN (Liu et al., CVPR 2019): per-task attention over the shared network (backbones with an MTAN variant)"

    def build(self, backbone, tasks, task_names):
        try:
            enc = backbone.mtan_encoder(list(task_names))
        except NotImplementedError:
            name = getattr(backbone, "registry_name", type(backbone).__name__)
            raise UserError(f"architecture mtan with backbone {name!r} is unsupported: the backbone has "
                            "no MTAN variant (BackboneFactory.mtan_encoder), and where attention modules "
                            "would go in its network is not defined",
                            hint="use a backbone of the DeepLabV3 family, e.g. --backbone deeplabv3") from None
        return MultiTaskNet(enc, {t: backbone.head(tasks[t]) for t in task_names})
