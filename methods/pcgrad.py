"""PCGrad: project each task's gradient off the gradients it conflicts with, then sum.

Yu, Kumar, Gupta, Levine, Hausman and Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020 (arXiv:2001.06782), Algorithm 1.

For each task i, in a random order of the other tasks j::

    g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j    only if g_i^PC · g_j < 0
    update: Σ_i g_i^PC

So two conflicting gradients each lose their component along the other (each
lands in the other's normal plane), and non-conflicting gradients are left
alone.  No hyper-parameters.  TorchJD's ``PCGrad`` (a Gramian-based weighting:
every projected gradient is a combination of the rows of J) draws a fresh
random order per task and per step from torch's global RNG, so a seeded run
is reproducible.  The shared machinery (``grad_on``, logging) is in
``methods/_gradient.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class PCGradConfig(GradientConfig):
    """Options of ``pcgrad`` (only the shared ``grad_on`` / ``jac_chunk_size``)."""


@METHODS.register("pcgrad")
class PCGrad(GradientMethod):
    """PCGrad (Yu et al., NeurIPS 2020): gradient surgery on conflicting task gradients."""

    Config = PCGradConfig
    summary = "PCGrad (Yu et al., NeurIPS 2020): project conflicting task gradients, then sum (TorchJD)"

    def make_aggregator(self):
        from torchjd.aggregation import PCGrad as Aggregator

        return Aggregator()
