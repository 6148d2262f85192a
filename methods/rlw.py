"""Random Loss Weighting (RLW): fresh random task weights at every step.

Lin, Ye and Zhang, "A Closer Look at Loss Weighting in Multi-Task Learning",
arXiv:2111.10603, 2021 (TMLR 2022 as "Reasonable Effectiveness of Random
Weighting"); official code in median-research-group/LibMTL.

At every training step (mini-batch)::

    λ = softmax(λ̃),  λ̃ ~ N(0, I_K)
    L = Σ_k λ_k L_k          # no gradient through λ

The weights are positive and sum to 1 (not K), as in the paper and LibMTL's and
Nash-MTL's code; so RLW's loss is about 1/K of the equal-weight baseline's, which
AdamW's scale invariance makes harmless.  No hyper-parameters.

λ̃ is drawn from torch's global (CPU) generator, which the trainer seeds from the
run's seed and saves in every checkpoint: the sequence of weights is reproducible
and a resumed run continues it exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mtlbench.api import Method
from mtlbench.registry import METHODS


@dataclass
class RLWConfig:
    """RLW has no options (the paper's default: standard normal + softmax)."""


def sample_weights(k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax(N(0, I_k)): ``k`` positive weights summing to 1 (on the CPU)."""
    return torch.softmax(torch.randn(k, generator=generator, dtype=torch.float64), 0)


@METHODS.register("rlw")
class RLW(Method):
    """Random Loss Weighting (Lin et al., 2021): λ = softmax(N(0, I)) resampled every step."""

    Config = RLWConfig
    summary = "Random Loss Weighting (Lin et al., 2021): λ = softmax(N(0, I)), new every step"
    # every process draws λ from the same seeded stream: the same weights everywhere
    data_parallel = True

    def loss_weights(self, losses):
        # Python floats: no gradient through λ and no host-device copy of the weights.
        lam = sample_weights(len(losses)).tolist()
        return dict(zip(losses, lam))
