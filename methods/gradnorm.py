"""GradNorm: learnable task weights that balance the tasks' gradient norms on the shared layer.

Chen, Badrinarayanan, Lee and Rabinovich, "GradNorm: Gradient Normalization
for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018
(arXiv:1711.02257), Algorithm 1.

With learnable weights w (initially 1) and the shared layer's weights W::

    G_i   = ‖∇_W (w_i L_i)‖₂,        Ḡ = mean_i G_i
    L̃_i   = L_i(t) / L_i(0),         r_i = L̃_i / mean_j L̃_j   # relative inverse training rate
    L_grad = Σ_i | G_i − [Ḡ · r_i^α]_const |
    network: ∇ of Σ_i w_i L_i (w constant);   w: ∇_w L_grad only
    after each step: w ← K · w / Σ_j w_j

A task that trains slower than the others (r_i > 1) gets a larger target norm,
so its weight grows; α (1.5, the paper's NYUv2 value and LibMTL's and KD4MTL's
default) sets how strongly this restoring force acts.

Choices and departures (the GradNorm paper, KD4MTL's and LibMTL's code):

* ``shared_params: last`` (default, the paper): W = the architecture's last
  shared layer (``TaskModel.last_shared_parameters``; hard sharing: the
  encoder's, ``Encoder.last_shared_parameters``, ViT: the last block's MLP
  output projection; Cross-Stitch: every task network's own last shared layer,
  each feeding every task through the last stitch).  ``all``: every shared
  parameter, as LibMTL does; it costs one extra encoder backward pass per task.
  On single-task networks nothing is shared and GradNorm is undefined (it refuses).
* L_i(0) is the loss of the very first training step, as in KD4MTL.  The paper
  suggests the theoretical initial loss (log C for cross-entropy) where it is
  known; LibMTL trains epoch 0 with equal weights and uses its mean loss.
  Neither is implemented; L_i(0) is kept in ``extra_state`` for resume.
* w has its own Adam optimiser with lr ``weight_lr`` = 0.025 (declared in
  ``optimizers()``; the trainer steps and checkpoints it).  KD4MTL puts w in the network's
  Adam at lr 1e-4 and LibMTL its softmax logits at 1e-4 (weight decay 1e-5):
  with Adam a weight moves by at most about lr per step, so at 1e-4 the weights
  would barely move in runs of a few hundred steps; 0.025 (Nash-MTL's lr for
  UW's learned weights) lets them move by ~1 within ~40 steps of consistent
  signal while staying smooth.  w's optimiser has no schedule and no weight
  decay; ``backward`` sets ``w.grad`` = ∇_w L_grad and ``after_step``
  renormalises w once the trainer has stepped it.
* Before renormalising, w is clamped at ``MIN_WEIGHT`` so a weight can never
  reach zero or turn negative (which would make its task's loss be maximised);
  the paper does not say what to do there.

Efficiency (same gradients, fewer passes).  Because w_i is a scalar factor,
∇_W (w_i L_i) = w_i ∇_W L_i, so G_i = w_i ‖∇_W L_i‖ and ∂G_i/∂w_i = ‖∇_W L_i‖:
differentiating through the gradient (``create_graph=True``) gives the same
∇_w L_grad as this product, at the price of a double backward; the tests check
the two agree.  (On vit_tiny on the CPU ``create_graph=True`` does not even run:
PyTorch 2.x has no double backward for the fused CPU attention kernel the heads
use.)  And rather than one backward per task into W followed by a
second full backward of Σ w_i L_i, ``backward`` takes each task's gradient with
respect to its head's parameters and the shared features z once
(``autograd.grad``, head i only), runs z's gradient into W alone for the norm,
and then backpropagates Σ_i w_i ∂L_i/∂z through the encoder once.  Each head
and the encoder are thus traversed once, as in the equal-weight baseline; the
network's gradient is exactly that of Σ w_i L_i (tested against a plain
backward).  Step-time figures: docs/BENCHMARKS.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlbench import distributed
from mtlbench.api import Method, OptimizerSpec, StepOutput
from mtlbench.config import option
from mtlbench.errors import UserError
from mtlbench.registry import METHODS

SHARED_CHOICES = ("last", "all")
#: floor of a task weight before renormalisation (keeps every weight positive)
MIN_WEIGHT = 1e-3


@dataclass
class GradNormConfig:
    """Options of ``gradnorm``."""

    alpha: float = option(1.5, ge=0)  # strength of the restoring force (the paper's NYUv2 value)
    weight_lr: float = option(0.025, gt=0)  # Adam lr of the task weights (KD4MTL, LibMTL: 1e-4; see the docstring)
    shared_params: str = option("last", choices=SHARED_CHOICES)  # W: last (the last shared layer, the paper) | all (LibMTL)


@METHODS.register("gradnorm")
class GradNorm(Method):
    """GradNorm (Chen et al., ICML 2018): learned weights equalise the tasks' training rates."""

    Config = GradNormConfig
    # data parallel: ∇_W L_i is averaged over the processes before its norm is taken (the
    # global batch's gradient norm), so w's gradient, and w, are the same everywhere
    data_parallel = True
    summary = "GradNorm (Chen et al., ICML 2018): learned weights balance gradient norms on the shared layer"

    def build(self):
        super().build()
        self.task_weights = nn.Parameter(torch.ones(len(self.task_names)))
        self.initial_losses: torch.Tensor | None = None  # L_i(0), set at the first step
        self.shared_layer()  # fail at build time if the backbone cannot say what W is

    # -- what trains what ----------------------------------------------------
    def param_groups(self):
        # w is trained by its own optimiser on L_grad, never by the network's.
        return self.network_groups_except("task_weights")

    def optimizers(self):
        return [OptimizerSpec("model", self.param_groups()),
                OptimizerSpec("task_weights", [{"params": [self.task_weights]}], kind="adam",
                              lr=self.cfg.weight_lr, weight_decay=0.0, scheduled=False)]

    def shared_layer(self) -> list[nn.Parameter]:
        """W: the parameters whose per-task gradient norms GradNorm balances (the architecture's
        last shared layer, ``TaskModel.last_shared_parameters``, or all its shared parameters)."""
        model = self.model
        enc = getattr(model, "encoder", None)
        arch = getattr(type(self.architecture), "registry_name", type(self.architecture).__name__)
        where = f"the {arch} architecture" + (f" ({type(enc).__name__} encoder)" if enc is not None else "")
        if self.cfg.shared_params == "all":
            params = model.shared_parameters()
        else:
            try:
                params = model.last_shared_parameters()
            except NotImplementedError:
                raise UserError(
                    f"gradnorm with method.shared_params=last is unsupported on {where}: it does not "
                    "name its last shared layer (Encoder.last_shared_parameters)",
                    hint="use --set method.shared_params=all, or implement "
                         "last_shared_parameters in the backbone") from None
        params = [p for p in params if p.requires_grad]
        if not params:
            raise UserError(f"gradnorm with method.shared_params={self.cfg.shared_params} is unsupported "
                            f"on {where}: it has no trainable shared parameters to balance the tasks' "
                            "gradient norms on",
                            hint="GradNorm needs a shared, trainable layer: use "
                                 "--set method.architecture=hard (or cross_stitch, mtan)")
        return params

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self.task_weights.detach().tolist()))

    # -- the step --------------------------------------------------------------
    def training_step(self, batch):
        preds, z = self.model.forward_with_final(batch["image"])  # z: the shared features, for backward
        losses = self.task_losses(preds, batch)
        w = self.task_weights.detach()
        total = sum(w[i] * losses[t] for i, t in enumerate(self.task_names))
        logs = {f"weight/{t}": v for t, v in self.current_weights().items()}
        return StepOutput(losses=losses, loss=total, logs=logs, extra={"features": z})

    def backward(self, out: StepOutput) -> None:
        z = out.extra["features"]
        W = self.shared_layer()
        w = self.task_weights.detach()
        rep_grads: dict[int, torch.Tensor] = {}  # id(z) -> Σ w_i ∂L_i/∂z
        reps: dict[int, torch.Tensor] = {}
        norms = []
        for i, t in enumerate(self.task_names):
            head = [p for p in self.model.heads[t].parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.losses[t], [z[t], *head], retain_graph=True,
                                        allow_unused=True)
            # Head i is reached by L_i only: its gradient in Σ w_j L_j is w_i ∇L_i.
            for p, g in zip(head, grads[1:]):
                if g is not None:
                    g = g * w[i].to(g.dtype)
                    p.grad = g if p.grad is None else p.grad.add_(g)
            gz = grads[0]
            if gz is None:  # the task does not use the shared features
                norms.append(torch.zeros((), device=w.device))
                continue
            # ‖∇_W L_i‖: z's gradient run back into W alone (autograd prunes the rest).
            gw = torch.autograd.grad(z[t], W, grad_outputs=gz, retain_graph=True, allow_unused=True)
            distributed.all_reduce_mean_([g for g in gw if g is not None])
            sq = [g.float().pow(2).sum() for g in gw if g is not None]
            norms.append(torch.stack(sq).sum().sqrt() if sq else torch.zeros((), device=w.device))
            key = id(z[t])
            reps[key] = z[t]
            weighted = gz * w[i].to(gz.dtype)
            rep_grads[key] = weighted if key not in rep_grads else rep_grads[key] + weighted
        if reps:
            # One encoder backward for Σ_i w_i L_i.
            torch.autograd.backward([reps[k] for k in reps], [rep_grads[k] for k in reps])
        out.logs.update(self._update_weights(out.losses, torch.stack(norms)))

    def _update_weights(self, losses: dict[str, torch.Tensor], raw_norms: torch.Tensor) -> dict[str, float]:
        """Set ``w.grad`` = ∇_w L_grad (the trainer steps w); ``raw_norms[i]`` = ‖∇_W L_i‖ (unweighted)."""
        L = torch.stack([losses[t].detach().float() for t in self.task_names]).to(raw_norms.device)
        if self.initial_losses is None:
            self.initial_losses = L.clone()
        # A task whose first loss was 0 has no meaningful rate: treat it as average (L̃ = 1).
        L0 = self.initial_losses.to(L.device)
        loss_ratio = torch.where(L0 > 0, L / L0.clamp_min(1e-12), torch.ones_like(L))
        r = loss_ratio / loss_ratio.mean().clamp_min(1e-12)
        w = self.task_weights
        G = w * raw_norms.detach()  # = ‖∇_W (w_i L_i)‖ since w_i is a positive scalar
        # The target is a constant (the paper): no gradient through Ḡ or r.
        target = (G.mean() * r.pow(self.cfg.alpha)).detach()
        l_grad = (G - target).abs().sum()
        w.grad = torch.autograd.grad(l_grad, w)[0]
        logs = {"gradnorm/l_grad": float(l_grad.detach())}
        logs.update({f"grad_norm/{t}": float(g) for t, g in zip(self.task_names, G.detach().tolist())})
        return logs

    def after_step(self, step, batch):
        with torch.no_grad():
            # After the trainer stepped w: renormalise to Σ w = K, so only the
            # tasks' relative weights are learned (never zero or negative).
            w = self.task_weights
            w.clamp_(min=MIN_WEIGHT)
            w.mul_(len(self.task_names) / w.sum())
        return {}

    # -- state -------------------------------------------------------------
    def extra_state(self):
        return {"initial_losses": None if self.initial_losses is None else self.initial_losses.tolist()}

    def load_extra_state(self, state):
        l0 = state.get("initial_losses")
        self.initial_losses = (None if l0 is None else
                               torch.tensor(l0, dtype=torch.float32, device=self.task_weights.device))

    def summary_info(self):
        return {"final_weights": self.current_weights(),
                "initial_losses": None if self.initial_losses is None else
                dict(zip(self.task_names, self.initial_losses.tolist()))}
