"""Dynamic Weight Average (DWA): task weights from the rate at which each task's loss falls.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR
2019 (arXiv:1803.10704), Eq. 7; official code lorenmt/mtan.

For epoch ``e`` and K tasks::

    w_k = L̄_k(e-1) / L̄_k(e-2)               # relative descent rate of task k
    λ_k = K · exp(w_k / T) / Σ_i exp(w_i / T)  # weights sum to K
    L   = Σ_k λ_k L_k

``L̄_k(e)`` is the mean *unweighted* training loss of task k over epoch e (the
trainer passes it to ``on_epoch_end``).  Epochs 0 and 1 use λ = 1; from epoch 2
on, the weights are fixed for the whole epoch.  T = 2 as in MTAN, LibMTL and
Auto-Lambda (KD4MTL's baseline script defaults to 1).

Follows the official code.  Two choices of ours: an epoch uses the losses of the
two epochs just before it, and if either is missing (a run resumed from a
checkpoint written before this method kept history, or hooks called out of
order as in the contract test) the epoch falls back to λ = 1; a zero mean loss
in the denominator gives a ratio of 1 instead of a division by zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from mtlbench.api import Method, StepOutput
from mtlbench.config import option
from mtlbench.registry import METHODS


@dataclass
class DWAConfig:
    """Options of ``dwa``."""

    T: float = option(2.0, gt=0)  # softmax temperature (MTAN, LibMTL: 2); larger T -> weights closer to 1


def dwa_weights(prev: Mapping[str, float], prev2: Mapping[str, float], T: float,
                tasks: Sequence[str] | None = None) -> dict[str, float]:
    """λ_k = K · softmax_k(w_k / T) with w_k = prev[k] / prev2[k].

    ``prev`` / ``prev2``: mean unweighted losses of the last and the
    second-to-last epoch.
    """
    tasks = list(tasks if tasks is not None else prev)
    ratios = [prev[t] / prev2[t] if prev2[t] > 0 else 1.0 for t in tasks]
    # Subtracting the max before exp leaves the softmax unchanged and cannot overflow.
    top = max(r / T for r in ratios)
    exps = [math.exp(r / T - top) for r in ratios]
    z = sum(exps)
    return {t: len(tasks) * e / z for t, e in zip(tasks, exps)}


@METHODS.register("dwa")
class DWA(Method):
    """Dynamic Weight Average (Liu et al., CVPR 2019): λ_k = K·softmax(L̄_k(e-1)/L̄_k(e-2) / T)."""

    Config = DWAConfig
    summary = "Dynamic Weight Average (Liu et al., CVPR 2019): weights from each task's loss-descent rate"
    data_parallel = True  # the epoch means it sees are of global-batch losses, the same everywhere

    def build(self):
        super().build()
        self.history: dict[int, dict[str, float]] = {}  # epoch -> mean unweighted loss per task
        self.weights: dict[str, float] = {t: 1.0 for t in self.task_names}

    def weights_for_epoch(self, epoch: int) -> dict[str, float]:
        prev, prev2 = self.history.get(epoch - 1), self.history.get(epoch - 2)
        if epoch < 2 or prev is None or prev2 is None \
                or not all(t in prev and t in prev2 for t in self.task_names):
            return {t: 1.0 for t in self.task_names}
        return dwa_weights(prev, prev2, self.cfg.T, self.task_names)

    def on_epoch_start(self, epoch):
        self.weights = self.weights_for_epoch(epoch)

    def training_step(self, batch):
        preds = self.model(batch["image"])
        losses = self.task_losses(preds, batch)
        total = sum(self.weights[t] * losses[t] for t in losses)
        # The weights are constant within an epoch: they are logged per epoch, not per step.
        return StepOutput(losses=losses, loss=total)

    def on_epoch_end(self, epoch, losses):
        self.history[int(epoch)] = {t: float(v) for t, v in losses.items()}
        return {f"weight/{t}": w for t, w in self.weights.items()}

    def extra_state(self):
        return {"history": {int(e): dict(v) for e, v in self.history.items()}}

    def load_extra_state(self, state):
        self.history = {int(e): {t: float(x) for t, x in v.items()}
                        for e, v in state.get("history", {}).items()}

    def summary_info(self):
        return {"final_weights": dict(self.weights)}
