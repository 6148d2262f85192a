"""GradDrop: keep, per coordinate, only the gradients of one sign, chosen by their sign purity.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020
(arXiv:2010.06808), Algorithm 1.

Per coordinate of the gradient, with the task gradients g_i::

    P = ½ (1 + Σ_i g_i / Σ_i |g_i|)          # positive sign purity, in [0, 1]
    U ~ Uniform(0, 1);  keep the positive g_i where f(P) > U, the negative ones otherwise
    update = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i     # M_i: the kept mask, ℓ_i: leak

so where the tasks agree in sign every gradient passes, and where they
disagree one sign is dropped at random, with probability by how much the sign
is in the minority.  Defaults: f the identity and no leak (ℓ = 0), as in the
paper's main experiments.  TorchJD's ``GradDrop``.

``grad_on`` defaults to ``features``: the paper applies GradDrop to the
gradients at a shared activation layer (here the encoder's final features).
P and the mask are drawn per element of the flattened batch of features
(TorchJD's ``GradDrop`` on the m x (B·C·h·w) matrix), so each sample makes
its own sign choice; an implementation that first sums the activation
gradients over the batch (one sign choice per feature position) differs.
With ``grad_on: params`` it acts on the shared parameters' gradients instead.
"""
from __future__ import annotations

from dataclasses import dataclass

from mtlbench.config import option
from mtlbench.registry import METHODS

from ._gradient import GRAD_ON, GradientConfig, GradientMethod


@dataclass
class GradDropConfig(GradientConfig):
    """Options of ``graddrop``; ``grad_on`` defaults to the paper's ``features``."""

    grad_on: str = option("features", choices=GRAD_ON)  # features: at the shared activations (the paper) | params
    leak: float = option(0.0, ge=0, le=1)  # share of every task's gradient that always passes (paper: 0)


@METHODS.register("graddrop")
class GradDrop(GradientMethod):
    """GradDrop (Chen et al., NeurIPS 2020): gradient sign dropout."""

    Config = GradDropConfig
    summary = "GradDrop (Chen et al., NeurIPS 2020): random gradient sign dropout by sign purity (TorchJD)"

    def make_aggregator(self):
        import torch
        from torchjd.aggregation import GradDrop as Aggregator

        leak = None if self.cfg.leak == 0 else torch.full((len(self.task_names),), float(self.cfg.leak))
        return Aggregator(leak=leak)
