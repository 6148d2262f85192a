"""DualProj: project the mean task gradient onto the dual cone of the task gradients.

Introduced as a baseline aggregator in Quinton and Rey, "Jacobian Descent for
Multi-Objective Optimization", arXiv:2406.16232, 2024; the projection is
Equation 11 of Lopez-Paz and Ranzato, "Gradient Episodic Memory for
Continual Learning", NeurIPS 2017 (GEM's projection of a gradient so that it
increases no other loss).

    update = π_J((1/m) Σ_i g_i),  π_J: projection onto {x : g_j · x ≥ 0 ∀j}

One quadratic program in the dual, from the Gramian (TorchJD's
``QuadprogProjector``).  Unlike UPGrad it projects the average once, so it is
not invariant to rescaling one task's loss.  No hyper-parameters.

Needs the optional packages ``quadprog`` and ``qpsolvers``
(``pip install -e ".[solvers]"``); building the method says so when they are
missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class DualProjConfig(GradientConfig):
    """Options of ``dualproj`` (only the shared ``grad_on`` / ``jac_chunk_size``)."""


@METHODS.register("dualproj")
class DualProj(GradientMethod):
    """DualProj (Quinton and Rey, 2024; GEM's projection): the mean gradient projected onto the dual cone."""

    Config = DualProjConfig
    summary = "DualProj (Quinton & Rey, 2024; GEM Eq. 11): mean gradient projected onto the dual cone (TorchJD)"
    requires_packages = ("quadprog", "qpsolvers")

    def make_aggregator(self):
        from torchjd.aggregation import DualProj as Aggregator

        return Aggregator()
