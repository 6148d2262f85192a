"""UPGrad: project every task gradient onto the dual cone of all of them, then average.

Quinton and Rey, "Jacobian Descent for Multi-Objective Optimization",
arXiv:2406.16232, 2024 (the TorchJD paper), §3 (UPGrad).

Each row g_i of J is projected onto the dual cone {x : g_j · x ≥ 0 ∀j} of
the rows, and the projections are averaged::

    update = (1/m) Σ_i π_J(g_i)

so the update has a non-negative inner product with every task gradient (no
task's loss increases to first order), it is linear under scaling of the
losses, and it equals the mean gradient when no two gradients conflict.  The
projections are computed in the dual, from the Gramian, by a small quadratic
program per task (TorchJD's default ``QuadprogProjector``).  No
hyper-parameters (the preference vector is left at the mean).

Needs the optional packages ``quadprog`` and ``qpsolvers`` (TorchJD's
``quadprog_projector`` extra; ``pip install -e ".[solvers]"``); building the
method says so when they are missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class UPGradConfig(GradientConfig):
    """Options of ``upgrad`` (only the shared ``grad_on`` / ``jac_chunk_size``)."""


@METHODS.register("upgrad")
class UPGrad(GradientMethod):
    """UPGrad (Quinton and Rey, 2024): average of the gradients projected onto their dual cone."""

    Config = UPGradConfig
    summary = "UPGrad (Quinton & Rey, 2024): mean of task gradients projected onto their dual cone (TorchJD)"
    requires_packages = ("quadprog", "qpsolvers")

    def make_aggregator(self):
        from torchjd.aggregation import UPGrad as Aggregator

        return Aggregator()
