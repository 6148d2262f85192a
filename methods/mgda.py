"""MGDA: the minimum-norm convex combination of the task gradients (a Pareto-stationary direction).

Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018 (arXiv:1810.04650), Algorithm 2 (the Frank-Wolfe solver) and §3.3
(MGDA-UB).

    α* = argmin_{α ∈ Δ^m} ‖Σ_i α_i g_i‖²,    update: Σ_i α*_i g_i

For two tasks the minimum lies in closed form at
α_1 = clip((g_2 − g_1)·g_2 / ‖g_1 − g_2‖², 0, 1); Frank-Wolfe from the uniform
start reaches it in one exact line search.  TorchJD's ``MGDA`` runs the
Frank-Wolfe solver on the Gramian.

Options:

* ``grad_on: params`` (default) is MGDA on the shared parameters;
  ``grad_on: features`` is **MGDA-UB**, the paper's efficient upper bound:
  α from the gradients with respect to the shared representation Z, then one
  backward of Σ α_i L_i through the encoder (the variant the paper's
  experiments report).
* ``max_iters`` = 250 and ``epsilon`` = 1e-5: the official code's
  ``MinNormSolver`` (MAX_ITER, STOP_CRIT); TorchJD's defaults are 100 and 1e-3.

Not implemented: the official code's optional gradient normalisations
(``l2``, ``loss``, ``loss+``) before the solver; Algorithm 2 has none.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class MGDAConfig(GradientConfig):
    """Options of ``mgda``; ``grad_on: features`` is MGDA-UB."""

    max_iters: int = option(250, ge=1)  # Frank-Wolfe iterations at most (official code's MAX_ITER)
    epsilon: float = option(1e-5, ge=0)  # stop when the line-search step falls below this (official STOP_CRIT)


@METHODS.register("mgda")
class MGDA(GradientMethod):
    """MGDA (Sener and Koltun, NeurIPS 2018); MGDA-UB with ``grad_on: features``."""

    Config = MGDAConfig
    summary = "MGDA (Sener & Koltun, NeurIPS 2018): min-norm convex combination; MGDA-UB with grad_on=features"

    def make_aggregator(self):
        from torchjd.aggregation import MGDA as Aggregator

        return Aggregator(epsilon=self.cfg.epsilon, max_iters=self.cfg.max_iters)
