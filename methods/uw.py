"""Uncertainty Weighting (UW): task weights from learned homoscedastic uncertainties.

Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
Losses for Scene Geometry and Semantics", CVPR 2018 (arXiv:1705.07115), Eqs. 7-10.

Each task k has a learned log-variance s_k = log σ_k² (the paper's
parameterisation, chosen for numerical stability).  Per task::

    regression (Gaussian likelihood):          ½ · e^(-s_k) · L_k + ½ · s_k
    classification (tempered softmax, ``form: paper``): e^(-s_k) · L_k + ½ · s_k

``form: libmtl`` uses the ½ form for every task, segmentation included, as MTAN
and LibMTL do.  Minimising over s gives e^s = L for the ½ form and e^s = 2L for
the classification form: a task's effective weight ends up inversely
proportional to its loss.

Choices:

* ``init_log_var = -0.5`` (MTAN, LibMTL and Li et al.'s UniversalRepresentations,
  KD4MTL's follow-up): a ½-form task starts at weight ½e^0.5 ≈ 0.82, close to
  the equal-weight baseline's 1, instead of the 0.5 that s = 0 gives, and the
  runs stay comparable with those codebases' UW rows.
* s is trained by the main optimiser (AdamW + OneCycleLR), as in LibMTL, in its
  own parameter group without weight decay: decay would pull every σ² towards
  1, a bias the likelihood does not have (LibMTL's decay of 1e-5 is
  negligible; ours is 0.01).  ``s_lr`` sets that group's (peak) learning rate;
  Nash-MTL uses 0.025.
* s is not clamped, so the total loss may be negative (the paper's form).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mtlbench.api import Method, StepOutput
from mtlbench.config import option
from mtlbench.registry import METHODS

FORMS = ("paper", "libmtl")


@dataclass
class UWConfig:
    """Options of ``uw``."""

    # paper: e^-s·L + s/2 for classification, ½e^-s·L + s/2 for regression | libmtl: ½ form for all
    form: str = option("paper", choices=FORMS)
    init_log_var: float = option(-0.5)  # initial s = log σ² of every task (MTAN/LibMTL: -0.5); finite
    s_lr: float | None = option(None, gt=0, example=0.025)  # peak lr of the s group (None: train.lr)


@METHODS.register("uw", aliases=("uncertainty",))
class UncertaintyWeighting(Method):
    """Uncertainty Weighting (Kendall et al., CVPR 2018): learned log-variances weigh the losses."""

    Config = UWConfig
    summary = "Uncertainty Weighting (Kendall et al., CVPR 2018): learned log-variances weigh the losses"
    data_parallel = True  # s_k's gradient comes from the global losses; averaged like the rest

    def build(self):
        super().build()
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(self.cfg.init_log_var)))
        # The factor on e^(-s)·L: 1 for classification in the paper's form, ½ otherwise.
        self.loss_scale = {t: 1.0 if (self.cfg.form == "paper" and task.kind == "classification") else 0.5
                           for t, task in self.tasks.items()}

    def param_groups(self):
        return self.with_learned_group("log_vars", self.cfg.s_lr)

    def effective_weights(self) -> dict[str, float]:
        """The factor each task's loss is multiplied by: c_k · e^(-s_k)."""
        s = self.log_vars.detach().tolist()
        return {t: self.loss_scale[t] * math.exp(-s[i]) for i, t in enumerate(self.task_names)}

    def training_step(self, batch):
        preds = self.model(batch["image"])
        losses = self.task_losses(preds, batch)
        s = self.log_vars.float()
        total = 0.0
        for i, t in enumerate(self.task_names):
            total = total + self.loss_scale[t] * torch.exp(-s[i]) * losses[t] + 0.5 * s[i]
        logs = {f"weight/{t}": w for t, w in self.effective_weights().items()}
        logs.update({f"log_var/{t}": v for t, v in zip(self.task_names, self.log_vars.detach().tolist())})
        return StepOutput(losses=losses, loss=total, logs=logs)

    def summary_info(self):
        return {"final_weights": self.effective_weights(),
                "final_log_vars": dict(zip(self.task_names, self.log_vars.detach().tolist()))}
