"""Cross-Stitch with equal task weights: the OKD-MTL paper's "Cross Stitch [1]" row, a pair alias.

``--method cross_stitch`` is the equal-weight baseline on the ``cross_stitch``
architecture (mtlbench/architectures/cross_stitch.py: the network, its options
``groups``, ``stitch_lr_mult``, ``alpha_self``, ``alpha_other``, and the
paper and choices behind them).  The method's config is the architecture's
(the same keys, hence the same run identity, as before the two axes), and
``--method baseline --set method.architecture=cross_stitch`` resolves to it.
Any other weighting runs on Cross-Stitch with ``--set method.architecture=cross_stitch``.

The deployable model is the whole stitched system; the stitch matrices are
logged after every epoch (``stitch/<k>``) and summarised in ``method_info``.
"""
from __future__ import annotations

from typing import Any

from mtlbench.api import Method
from mtlbench.architectures.cross_stitch import (CrossStitchConfig, CrossStitchNetwork,  # noqa: F401
                                                 initial_stitch, resolve_groups)
from mtlbench.registry import METHODS


@METHODS.register("cross_stitch")
class CrossStitch(Method):
    """Cross-Stitch networks (Misra et al., CVPR 2016) with equal task weights."""

    Config = CrossStitchConfig
    summary = "Cross-Stitch: one network per task, learnable T x T mixing after each layer group (EW)"
    fixed_architecture = "cross_stitch"
    alias_of = "baseline"
    data_parallel = True  # the networks and the stitch matrices: gradients the core averages

    @property
    def stitch_layers(self) -> list[int]:
        """The (0-based) layer after which each stitch point sits."""
        return self.model.stitch_layers

    def on_epoch_end(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        return self.model.epoch_logs()

    def summary_info(self) -> dict[str, Any]:
        return self.model.info()
