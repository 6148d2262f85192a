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
* ``solver: exact`` (default): the minimum-norm point solved exactly (float64) by
  enumerating the supports of α: on each support S the equality-constrained problem
  min αᵀG_SSα, Σα = 1 is one linear (KKT) system; the optimum of the convex problem over
  the simplex is the feasible (α ≥ 0) support solution of least norm, ties going to the
  smallest support.  2^m - 1 small systems: for up to :data:`EXACT_MAX_TASKS` tasks; more
  tasks fall back to Frank-Wolfe.  ``solver: frank_wolfe`` is Algorithm 2 as TorchJD runs
  it: from the uniform start, at most ``max_iters`` steps, stopping when the line-search
  step falls below ``epsilon``.  Frank-Wolfe converges sublinearly and left weight 0.0012
  on a task whose exact weight is 0 after 250 iterations in the cross-check against LibMTL
  (tests/test_crosscheck_libmtl.py), which is why the exact solve is the default.
* ``max_iters`` = 250 and ``epsilon`` = 1e-5 (Frank-Wolfe only): the official code's
  ``MinNormSolver`` (MAX_ITER, STOP_CRIT); TorchJD's defaults are 100 and 1e-3.

* ``normalization`` (the official code's ``gradient_normalizers`` and LibMTL's
  ``mgda_gn``; Algorithm 2 itself has none): ``none`` (default), ``l2`` (g_i / ‖g_i‖),
  ``loss`` (g_i / L_i) or ``loss+`` (g_i / (L_i ‖g_i‖)): α is the min-norm point of the
  normalised gradients (their Gramian D G D, D = diag(1 / n_i)); the update is
  Σ α_i g_i of the *unnormalised* gradients, as the official code's backward of
  Σ α_i L_i.  LibMTL's parameter-space MGDA instead steps along Σ α_i g_i / n_i (the
  normalised gradients): the same α, a per-task scale apart.  A zero norm or loss
  normalises by 1.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GradientConfig, GradientMethod

#: the most tasks the exact solve enumerates supports for (2^m - 1 linear systems of size <= m + 1)
EXACT_MAX_TASKS = 10


def min_norm_weights(gramian: torch.Tensor) -> torch.Tensor:
    """α* = argmin over the simplex of αᵀ G α, exactly (float64), for a PSD Gramian ``G`` (m x m).

    For each support S (smallest first) the KKT system of min αᵀG_SSα s.t. Σα = 1,
    ``[[G_SS, 1], [1ᵀ, 0]] [α; -μ] = [0; 1]``, is solved by least squares (a singular G_SS
    has a solution set; least squares picks one); solutions with α ≥ 0 (to 1e-12) are
    candidates and the one of least αᵀGα wins (a later, larger support only when it is
    lower by more than rounding).  Returns α in ``gramian``'s dtype."""
    g = gramian.detach().to(torch.float64).cpu()
    g = (g + g.T) / 2
    m = g.shape[0]
    scale = float(g.diagonal().abs().max()) or 1.0
    best, best_val = None, float("inf")
    for k in range(1, m + 1):
        for support in itertools.combinations(range(m), k):
            idx = list(support)
            a = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            a[:k, :k] = g[idx][:, idx]
            a[:k, k] = 1.0
            a[k, :k] = 1.0
            rhs = torch.zeros(k + 1, 1, dtype=torch.float64)
            rhs[k] = 1.0
            sol = torch.linalg.lstsq(a, rhs, driver="gelsd").solution[:k, 0]
            if not torch.isfinite(sol).all() or (sol < -1e-12).any() or abs(float(sol.sum()) - 1) > 1e-9:
                continue
            alpha = torch.zeros(m, dtype=torch.float64)
            alpha[idx] = sol.clamp_min(0)
            alpha /= alpha.sum()
            val = float(alpha @ g @ alpha)
            if val < best_val - 1e-12 * scale:
                best, best_val = alpha, val
    if best is None:  # cannot happen for a PSD matrix (every vertex is feasible); keep the uniform point
        best = torch.full((m,), 1.0 / m, dtype=torch.float64)
    return best.to(device=gramian.device, dtype=gramian.dtype)


def _exact_aggregator(fallback):
    """A TorchJD Gramian-weighted aggregator whose weighting is :func:`min_norm_weights` (or
    ``fallback``'s Frank-Wolfe weighting beyond :data:`EXACT_MAX_TASKS` tasks)."""
    from torchjd.aggregation import GramianWeightedAggregator
    from torchjd.aggregation._weighting_bases import _GramianWeighting

    class ExactMinNormWeighting(_GramianWeighting):
        def forward(self, gramian, /):
            if gramian.shape[0] > EXACT_MAX_TASKS:
                return fallback.gramian_weighting(gramian)
            return min_norm_weights(gramian)

    class ExactMGDA(GramianWeightedAggregator):
        def __init__(self):
            super().__init__(ExactMinNormWeighting())

        def __repr__(self) -> str:
            return f"ExactMGDA(max_tasks={EXACT_MAX_TASKS}, fallback={fallback!r})"

    return ExactMGDA()


@dataclass
class MGDAConfig(GradientConfig):
    """Options of ``mgda``; ``grad_on: features`` is MGDA-UB."""

    # exact: the min-norm point solved exactly (up to EXACT_MAX_TASKS tasks); frank_wolfe: Algorithm 2
    solver: str = option("exact", choices=("exact", "frank_wolfe"))
    max_iters: int = option(250, ge=1)  # Frank-Wolfe iterations at most (official code's MAX_ITER)
    epsilon: float = option(1e-5, ge=0)  # stop when the line-search step falls below this (official STOP_CRIT)
    # the gradients' normalisation before the solver: none | l2 | loss | loss+ (the official code, LibMTL mgda_gn)
    normalization: str = option("none", choices=("none", "l2", "loss", "loss+"), hash_default=False)


@METHODS.register("mgda")
class MGDA(GradientMethod):
    """MGDA (Sener and Koltun, NeurIPS 2018); MGDA-UB with ``grad_on: features``."""

    Config = MGDAConfig
    summary = "MGDA (Sener & Koltun, NeurIPS 2018): min-norm convex combination; MGDA-UB with grad_on=features"

    def make_aggregator(self):
        from torchjd.aggregation import MGDA as Aggregator

        fw = Aggregator(epsilon=self.cfg.epsilon, max_iters=self.cfg.max_iters)
        return fw if self.cfg.solver == "frank_wolfe" else _exact_aggregator(fw)

    def aggregate(self, blocks, sharded_columns=False):
        if self.cfg.normalization == "none":
            return super().aggregate(blocks, sharded_columns)
        gram = self.gramian(blocks, sharded_columns)  # data parallel: the global batch's
        n = normalizers(gram, getattr(self, "step_losses", None), self.cfg.normalization)
        inv = 1.0 / n
        alpha = self.aggregator.gramian_weighting(gram * inv[:, None] * inv[None, :])
        return [alpha.to(b.dtype) @ b for b in blocks], alpha, gram


def normalizers(gram: torch.Tensor, losses: torch.Tensor | None, kind: str) -> torch.Tensor:
    """The per-task normalisers n_i of ``kind`` (``l2``: ‖g_i‖, ``loss``: L_i, ``loss+``: L_i ‖g_i‖),
    from the Gramian's diagonal and this step's losses; a non-positive n_i is replaced by 1."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    if kind == "l2":
        n = norms
    else:
        if losses is None:
            raise RuntimeError("MGDA normalisation by loss needs the step's losses (GradientMethod.backward sets them)")
        losses = losses.to(gram.device, gram.dtype)
        n = losses if kind == "loss" else losses * norms
    return torch.where(n > 0, n, torch.ones_like(n))
