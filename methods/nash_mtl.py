"""Nash-MTL: the update on which the tasks agree as a Nash bargaining solution.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik and Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022 (arXiv:2202.01017), Algorithm 1.

The update is Σ_i α_i g_i with α > 0 solving Gα = 1/α (elementwise), i.e.
each task's directional derivative along the update is inversely proportional
to its weight; the paper approximates it by a sequence of convex problems
(concave-convex procedure, ``optim_niter`` iterations per step, warm-started
from the previous step's α).  TorchJD's ``NashMTL`` follows the official code
(cvxpy with the ECOS solver, the Gramian normalised by its norm).

Defaults (the official code's NYUv2/Cityscapes settings): ``optim_niter`` 20,
``update_weights_every`` 1 (solve at every step) and ``max_norm`` 1.0 (the
update's norm is clipped to 1, as the official code does).

The head rule: the official code (and LibMTL) back-propagates Σ_i α_i L_i, so task i's
own parameters (its head; on MTAN its attention modules) get α_i ∇L_i with the solver's
α, before the update's norm is clipped (the official code clips the shared parameters'
gradient only).  TorchJD returns the clipped weights for the shared update; the heads
take the solver's α (:meth:`NashMTL.head_weights`).

State: the previous α (the solver's warm start) goes into ``extra_state``.
On resume the convex problem is rebuilt from it, so the solve at the first
resumed step starts where the interrupted run would have; with
``update_weights_every`` > 1 the refresh schedule restarts at the resumed step.

Needs the optional packages ``cvxpy`` and ``ecos`` (``pip install -e
".[solvers]"``); building the method says so when they are missing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod


@dataclass
class NashMTLConfig(GradientConfig):
    """Options of ``nash_mtl``."""

    optim_niter: int = option(20, ge=1)  # concave-convex iterations per solve (official code: 20)
    update_weights_every: int = option(1, ge=1)  # solve for α every this many steps, reuse it in between
    max_norm: float = option(1.0, ge=0)  # clip the update's norm to this (0: no clipping; official code: 1.0)
    # what each task's own parameters get: alpha (α_i ∇L_i: the official code, LibMTL) | plain (∇L_i,
    # what mtlbench did before 2026-12-03; records of then lack this key and serve no row of the default)
    heads: str = option("alpha", choices=("alpha", "plain"))


@METHODS.register("nash_mtl")
class NashMTL(GradientMethod):
    """Nash-MTL (Navon et al., ICML 2022): task weights from a Nash bargaining solution."""

    Config = NashMTLConfig
    summary = "Nash-MTL (Navon et al., ICML 2022): Nash bargaining over task gradients (TorchJD, cvxpy/ECOS)"
    requires_packages = ("cvxpy", "ecos")

    def make_aggregator(self):
        from torchjd.aggregation import NashMTL as Aggregator

        return Aggregator(n_tasks=len(self.task_names), max_norm=self.cfg.max_norm,
                          update_weights_every=self.cfg.update_weights_every,
                          optim_niter=self.cfg.optim_niter)

    def head_weights(self, weights):
        """α_i, the solver's (unclipped) weights of this step: head i gets α_i ∇L_i."""
        import torch

        if self.cfg.heads == "plain":
            return None
        alpha = self.aggregator.weighting.prvs_alpha
        return torch.as_tensor(alpha, dtype=torch.float32)

    def aggregate(self, blocks, sharded_columns=False):
        with warnings.catch_warnings():
            # cvxpy notes on every new problem that Nash-MTL's parametrised problem is not
            # DPP (so it is re-compiled at each solve); true, known, and not actionable here.
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return super().aggregate(blocks, sharded_columns)

    def extra_state(self):
        w = self.aggregator.weighting
        return {"prev_alpha": [float(a) for a in w.prvs_alpha],
                "normalization_factor": [float(v) for v in w.normalization_factor]}

    def load_extra_state(self, state):
        import numpy as np

        if not state.get("prev_alpha"):
            return
        w = self.aggregator.weighting
        w.reset()
        w.prvs_alpha = np.asarray(state["prev_alpha"], dtype=np.float32)
        w.normalization_factor = np.asarray(state.get("normalization_factor", [1.0]), dtype=np.float64)
        # step stays 0: the next call builds the convex problem, warm-started from prvs_alpha.
