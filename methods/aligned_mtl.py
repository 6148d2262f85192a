"""Aligned-MTL: align the principal components of the task gradients (condition number 1).

Senushkin, Patakin, Kuznetsov and Konushin, "Independent Component Alignment
for Multi-Task Learning", CVPR 2023, Algorithm 1.

With the Gramian G = J Jᵀ = V Λ Vᵀ (rank r), the balance transformation
B = √σ · V Λ^{-1/2} Vᵀ turns J into Ĵ = B J, whose rows are orthogonal with
equal norm √σ (a stable system, condition number 1); the update is Ĵᵀ w for
the task preferences w (equal by default).  ``scale_mode`` picks σ: ``min``
(the smallest non-zero eigenvalue, the paper's Algorithm 1, default),
``median`` or ``rmse`` (the mean eigenvalue, which TorchJD says the original
code used).  TorchJD's ``AlignedMTL``.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod

SCALE_MODES = ("min", "median", "rmse")


@dataclass
class AlignedMTLConfig(GradientConfig):
    """Options of ``aligned_mtl``."""

    # eigenvalue setting the aligned gradients' scale: min (the paper) | median | rmse
    scale_mode: str = option("min", choices=SCALE_MODES)


@METHODS.register("aligned_mtl")
class AlignedMTL(GradientMethod):
    """Aligned-MTL (Senushkin et al., CVPR 2023): gradients aligned to a condition number of 1."""

    Config = AlignedMTLConfig
    summary = "Aligned-MTL (Senushkin et al., CVPR 2023): eigen-aligned task gradients (TorchJD)"

    def make_aggregator(self):
        from torchjd.aggregation import AlignedMTL as Aggregator

        return Aggregator(scale_mode=self.cfg.scale_mode)
