"""IMTL-G: the combination of task gradients whose projections onto every task's unit gradient are equal.

Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021, §3.2 (IMTL-G, the gradient half of IMTL).

Find weights α (Σ α_i = 1) such that the update g = Σ α_i g_i has the same
projection on each unit gradient u_i = g_i / ‖g_i‖: g·u_1 = g·u_i for all i.
In closed form (TorchJD's generalisation, which also copes with linearly
dependent gradients through a pseudo-inverse): α ∝ G⁺ d, d_i = ‖g_i‖,
normalised to sum to 1.  No hyper-parameters.

``grad_on`` defaults to ``features``: the paper's Algorithm 1 takes the
task gradients with respect to the shared feature z (as MGDA-UB does), then
back-propagates Σ α_i L_i through the shared network.  ``grad_on: params``
applies the same rule to the shared parameters' gradients (the §3.2 analysis).

IMTL-L, the learned loss scales of the same paper, is ``imtl_l``; the full
IMTL (IMTL-G over IMTL-L's scaled losses) is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GRAD_ON, GradientConfig, GradientMethod


@dataclass
class IMTLGConfig(GradientConfig):
    """Options of ``imtl_g`` (only the shared ones; ``grad_on`` defaults to the paper's ``features``)."""

    grad_on: str = option("features", choices=GRAD_ON)  # features: on the shared feature z (the paper's Algorithm 1) | params


@METHODS.register("imtl_g")
class IMTLG(GradientMethod):
    """IMTL-G (Liu et al., ICLR 2021): equal projections on every task's gradient direction."""

    Config = IMTLGConfig
    summary = "IMTL-G (Liu et al., ICLR 2021): impartial gradient weights, equal projections (TorchJD)"

    def make_aggregator(self):
        from torchjd.aggregation import IMTLG as Aggregator

        return Aggregator()
