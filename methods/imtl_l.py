"""IMTL-L: learned loss scales that bring every task's scaled loss to 1.

Liu, Li, Kuang, Xue, Chen, Yang, Liao and Zhang, "Towards Impartial
Multi-task Learning", ICLR 2021: the loss balance (IMTL-L, the half of IMTL that
weighs the losses; the gradient half is ``imtl_g``).

Each task i has a learned scale parameter s_i (the log of its loss weight,
initialised to 0, i.e. weight 1).  The total loss is::

    L = Σ_i ( e^(s_i) · L_i − s_i )

and s is trained by gradient descent together with the network, on this same
loss.  Its gradient is ∂L/∂s_i = e^(s_i) · L_i − 1, zero at e^(s_i) = 1 / L_i:
at the optimum every scaled loss e^(s_i) · L_i equals 1, whatever the tasks'
loss magnitudes (the paper's "impartial" loss scales).  The −s_i term keeps
s_i from running to −∞ (which would zero every loss).  The network sees
∂L/∂θ = Σ_i e^(s_i) ∇_θ L_i: a loss weighting with weights e^(s_i), which are
not detached (the scales and the network train on one loss, as in the paper).
Over stochastic batches the optimum is e^(s_i) = 1 / E[L_i].

Algebraically this is twice ``uw``'s ½ form (``form: libmtl``) at u = −s:
2 · (½ e^(−u) L + ½ u) = e^s L − s.  The two differ in that factor 2 (so in the
step size of s and of the network) and in their initialisation (``uw``: u = −0.5,
a weight ½e^0.5 ≈ 0.82; here s = 0, a weight of 1); ``tests/test_imtl_l.py``
checks the identity.

Choices:

* s starts at 0 (``init_scale``): weight 1, the equal-weight start (LibMTL's
  ``IMTL`` starts its scales at 0 too).
* s is trained by the main optimiser (AdamW + OneCycleLR), in its own
  parameter group without weight decay (decay would pull every weight towards 1,
  a bias the objective does not have), as ``uw`` does.  ``s_lr`` sets that
  group's (peak) learning rate (None: ``train.lr``).
* s is not clamped, so the total loss may be negative (at the optimum task i's
  term is 1 + ln L_i, below 0 where L_i < 1/e).

Not implemented here: the full IMTL (IMTL-L's scaled losses fed to IMTL-G's
gradient aggregation), which LibMTL's ``IMTL`` weighting is; this method sums
the scaled losses with unit weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlbench.api import Method, StepOutput
from mtlbench.config import option
from mtlbench.registry import METHODS


@dataclass
class IMTLLConfig:
    """Options of ``imtl_l``."""

    init_scale: float = option(0.0)  # initial s = log weight of every task (0: weight 1, as LibMTL); finite
    s_lr: float | None = option(None, gt=0, example=0.025)  # peak lr of the s group (None: train.lr)


@METHODS.register("imtl_l")
class IMTLL(Method):
    """IMTL-L (Liu et al., ICLR 2021): learned scales s_i, loss Σ e^(s_i) L_i − s_i, so e^(s_i) L_i → 1."""

    Config = IMTLLConfig
    summary = "IMTL-L (Liu et al., ICLR 2021): learned loss scales, Σ e^s·L − s, each scaled loss driven to 1"
    data_parallel = True  # s_i's gradient comes from the global losses; averaged like the rest

    def build(self):
        super().build()
        self.log_scales = nn.Parameter(torch.full((len(self.task_names),), float(self.cfg.init_scale)))

    def param_groups(self):
        return self.with_learned_group("log_scales", self.cfg.s_lr)

    def effective_weights(self) -> dict[str, float]:
        """The factor each task's loss is multiplied by: e^(s_i)."""
        return {t: math.exp(v) for t, v in zip(self.task_names, self.log_scales.detach().tolist())}

    def training_step(self, batch):
        preds = self.model(batch["image"])
        losses = self.task_losses(preds, batch)
        s = self.log_scales.float()
        total = 0.0
        for i, t in enumerate(self.task_names):
            total = total + torch.exp(s[i]) * losses[t] - s[i]
        logs = {f"weight/{t}": w for t, w in self.effective_weights().items()}
        logs.update({f"log_scale/{t}": v for t, v in zip(self.task_names, self.log_scales.detach().tolist())})
        return StepOutput(losses=losses, loss=total, logs=logs)

    def summary_info(self):
        return {"final_weights": self.effective_weights(),
                "final_log_scales": dict(zip(self.task_names, self.log_scales.detach().tolist()))}
