"""CAGrad: the update that maximises the worst task's improvement within a ball around the mean gradient.

Liu, Liu, Jin, Stone and Liu, "Conflict-Averse Gradient Descent for
Multi-task Learning", NeurIPS 2021 (arXiv:2110.14048), Algorithm 1.

With g_0 the average gradient and c ∈ [0, 1)::

    max_d min_i g_i · d   subject to ‖d − g_0‖ ≤ c ‖g_0‖
    dual: w* = argmin_{w ∈ Δ^m} g_w · g_0 + √φ ‖g_w‖,  √φ = c ‖g_0‖
    update: d = g_0 + (√φ / ‖g_w*‖) g_w*

c = 0 is plain gradient descent on the mean; larger c moves towards MGDA.
``c`` = 0.4 is the paper's value for NYUv2 and Cityscapes.  TorchJD's
``CAGrad`` solves the dual with cvxpy's CLARABEL solver (the official code
uses scipy's SLSQP) on the normalised Gramian.

Departure: the official code divides d by (1 + c²) (``rescale=1``); a
constant factor does not change an Adam/AdamW step, so it is left out (it
would only matter with ``train.grad_clip``).

Needs the optional packages ``cvxpy`` and ``clarabel``
(``pip install -e ".[solvers]"``); building the method says so when they are
missing.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class CAGradConfig(GradientConfig):
    """Options of ``cagrad``."""

    c: float = option(0.4, ge=0)  # radius of the ball around the mean gradient, relative to its norm (paper: 0.4 on NYUv2/Cityscapes)


@METHODS.register("cagrad")
class CAGrad(GradientMethod):
    """CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent."""

    Config = CAGradConfig
    summary = "CAGrad (Liu et al., NeurIPS 2021): best worst-task direction near the mean gradient (TorchJD, cvxpy)"
    requires_packages = ("cvxpy", "clarabel")

    def make_aggregator(self):
        from torchjd.aggregation import CAGrad as Aggregator

        return Aggregator(c=self.cfg.c)
