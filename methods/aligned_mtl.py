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

The update's scale (``preference``): TorchJD's default preference vector is 1/m per task,
so its update is the *mean* of the aligned gradients; the official code and LibMTL use
ones, the *sum*, m times larger in the same direction.  ``preference: sum`` matches them.
The default stays ``mean`` (what the committed records used): under AdamW, which every
preset uses, a constant factor on every gradient changes the update only through Adam's
ε (1e-8), so the two train alike; with plain SGD or a gradient clip they would not.
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
    # the preference vector: mean (1/m each: TorchJD's default) | sum (ones: the official code, LibMTL)
    preference: str = option("mean", choices=("mean", "sum"), hash_default=False)


@METHODS.register("aligned_mtl")
class AlignedMTL(GradientMethod):
    """Aligned-MTL (Senushkin et al., CVPR 2023): gradients aligned to a condition number of 1."""

    Config = AlignedMTLConfig
    summary = "Aligned-MTL (Senushkin et al., CVPR 2023): eigen-aligned task gradients (TorchJD)"

    def make_aggregator(self):
        from torchjd.aggregation import AlignedMTL as Aggregator

        import torch

        pref = torch.ones(len(self.task_names)) if self.cfg.preference == "sum" else None
        return Aggregator(pref_vector=pref, scale_mode=self.cfg.scale_mode)
