"""FAMO: task weights learned from how fast each task's log-loss falls, one backward per step.

Liu, Feng, Stone and Liu, "FAMO: Fast Adaptive Multitask Optimization",
NeurIPS 2023 (arXiv:2306.03792), Algorithm 1 and its practical form
(Algorithm 2, Appendix C).

FAMO asks every task's loss to fall at the same *relative* rate, using only
loss values (O(1) space and time in the number of tasks, unlike the gradient
methods).  With logits ξ (initially 0), z = softmax(ξ), lower bounds b_i on
the losses (``min_loss``, 0) and D_i = ℓ_i − b_i + ε:

    model:  one backward of   c Σ_i z_i log D_i,     c = (Σ_i z_i / D_i)^{-1}   (z, c constants)
            so its gradient is Σ_i w_i ∇ℓ_i with w_i = c z_i / D_i, a convex combination
    logits: δ_i = log D_i(θ_t) − log D_i(θ_{t+1})    (the losses before and after the
            model's step, on the same batch)
            ξ ← ξ − β (∇_ξ z(ξ)ᵀ δ + γ ξ),   ∇_ξ zᵀ δ = z ⊙ (δ − zᵀδ)

A task whose log-loss fell more than the z-weighted average loses weight; the
slowest task gains it.  As in Algorithm 2 the logit step is Adam with learning
rate β = ``lr`` = 0.025 and the γξ term as Adam's (L2) ``weight_decay`` γ =
1e-3.  The official code has three defaults for γ: 1e-5 on the ``FAMO`` class, 1e-2
on its experiments' command-line flag, and 1e-3 passed by its NYUv2 script (the
setting the FAMO paper reports for NYUv2, and LibMTL's default); we use 1e-3, the
value of the NYUv2 experiment that is this benchmark's setting.  ε = 1e-8 as in the
official code.

Mapping onto the trainer's step rule:

* the logits are a parameter of the method with their own optimiser,
  declared in :meth:`FAMO.optimizers` (Adam, not scheduled, ``after_update``);
  the trainer steps and checkpoints it;
* ``after_step(step, batch)`` runs after the model's step: one extra no-grad
  forward on the same batch under the run's autocast (``ctx.autocast()``),
  giving δ and the logits' gradient z ⊙ (δ − zᵀδ) (with the z of that step),
  which it sets as ``ξ.grad``; the trainer then steps ξ (an ``after_update``
  optimiser is stepped after ``after_step``), so ξ_{t+1} includes δ_t exactly
  as in Algorithm 1;
* the extra forward runs in training mode (the function being optimised),
  with the network's buffers (BatchNorm running statistics) restored
  afterwards so the repeated batch does not count twice.

D_i is floored at ε (ℓ_i < b_i would make the logarithm undefined).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from mtlbench.api import Method, OptimizerSpec, StepOutput
from mtlbench.config import option
from mtlbench.registry import METHODS


# ---------------------------------------------------------------------------
# the maths, as pure functions (tested on their own)
# ---------------------------------------------------------------------------

def famo_gaps(losses: torch.Tensor, min_loss: float, eps: float) -> torch.Tensor:
    """D_i = max(ℓ_i − b_i, 0) + ε."""
    return (losses - min_loss).clamp_min(0) + eps


def famo_objective(losses: torch.Tensor, z: torch.Tensor, min_loss: float = 0.0,
                   eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """FAMO's model objective ``c Σ z_i log D_i`` and its per-task gradient weights ``c z_i / D_i``.

    ``losses``: the task losses (a vector, differentiable); ``z``: the task
    weights softmax(ξ).  The weights are constants (detached); they sum to 1.
    """
    d = famo_gaps(losses, min_loss, eps)
    z = z.detach().to(d.dtype)
    inv = z / d.detach()
    c = 1.0 / inv.sum()
    return c * (z * d.log()).sum(), (c * inv).detach()


def famo_delta(before: torch.Tensor, after: torch.Tensor, min_loss: float = 0.0,
               eps: float = 1e-8) -> torch.Tensor:
    """δ_i = log D_i(before) − log D_i(after): how much each task's log-loss fell."""
    return famo_gaps(before, min_loss, eps).log() - famo_gaps(after, min_loss, eps).log()


def famo_logit_grad(z: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """∇_ξ z(ξ)ᵀ δ for z = softmax(ξ): ``z ⊙ (δ − zᵀδ)`` (the logits' descent direction)."""
    return z * (delta - (z * delta).sum())


# ---------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------

@dataclass
class FAMOConfig:
    """Options of ``famo``."""

    lr: float = option(0.025, gt=0)  # Adam learning rate β of the logits (the paper)
    weight_decay: float = option(1e-3, ge=0)  # γ, as Adam's weight decay on the logits (the official NYUv2 script and LibMTL: 1e-3)
    min_loss: float = option(0.0)  # b: lower bound of every task's loss (any finite number)
    eps: float = option(1e-8, gt=0)  # ε added to ℓ − b before the logarithm (official code)


@METHODS.register("famo")
class FAMO(Method):
    """FAMO (Liu et al., NeurIPS 2023): balanced log-loss decrease from loss values alone."""

    Config = FAMOConfig
    summary = "FAMO (Liu et al., NeurIPS 2023): softmax task weights learned from log-loss decrease, 1 backward"
    # the losses before and after the step are the global batch's: ξ's gradient is the same everywhere
    data_parallel = True

    def build(self):
        super().build()
        self.logits = nn.Parameter(torch.zeros(len(self.task_names)))
        self._autocast = nullcontext
        self._before: torch.Tensor | None = None  # this step's losses (float32), for after_step
        self._z: torch.Tensor | None = None  # this step's z

    # -- what trains what ----------------------------------------------------
    def param_groups(self):
        return self.network_groups_except("logits")

    def optimizers(self):
        return [OptimizerSpec("model", self.param_groups()),
                OptimizerSpec("famo_logits", [{"params": [self.logits]}], kind="adam",
                              lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, scheduled=False,
                              after_update=True)]

    def weights(self) -> torch.Tensor:
        """z = softmax(ξ), the task weights."""
        return torch.softmax(self.logits.detach().float(), 0)

    # -- the step --------------------------------------------------------------
    def on_train_start(self, ctx):
        self._autocast = getattr(ctx, "autocast", None) or nullcontext

    def _loss_vector(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([losses[t].float() for t in self.task_names])

    def training_step(self, batch):
        preds = self.model(batch["image"])
        losses = self.task_losses(preds, batch)
        L = self._loss_vector(losses)
        z = self.weights().to(L.device)
        objective, w = famo_objective(L, z, self.cfg.min_loss, self.cfg.eps)
        self._before, self._z = L.detach(), z
        logs = {}
        for i, (zi, wi) in enumerate(zip(z.tolist(), w.tolist())):
            logs[f"weight/{self.task_names[i]}"] = zi
            logs[f"famo/grad_weight/{self.task_names[i]}"] = wi
        return StepOutput(losses=losses, loss=objective, logs=logs)

    def backward(self, out):
        out.loss.backward()  # the model only: ξ's gradient comes in after_step

    @torch.no_grad()
    def after_step(self, step, batch=None):
        if batch is None or self._before is None:
            return {}
        # Re-evaluate this batch after the model's step, in training mode (the same
        # function), leaving BatchNorm running statistics as the real step left them.
        saved = [b.detach().clone() for b in self.model.buffers()]
        with self._autocast():
            after = self._loss_vector(self.task_losses(self.model(batch["image"]), batch))
        for b, s in zip(self.model.buffers(), saved):
            b.copy_(s)
        delta = famo_delta(self._before, after, self.cfg.min_loss, self.cfg.eps)
        # ξ's gradient for the trainer's after-update step of the logits optimiser
        self.logits.grad = famo_logit_grad(self._z, delta).to(self.logits.device, self.logits.dtype)
        self._before = None
        return {f"famo/delta/{t}": v for t, v in zip(self.task_names, delta.tolist())}

    # -- state -------------------------------------------------------------
    def summary_info(self):
        return {"final_weights": dict(zip(self.task_names, self.weights().tolist()))}
