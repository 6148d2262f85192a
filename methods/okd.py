"""OKD-MTL: online knowledge distillation for multi-task learning.

Jacob, Agarwal and Stenger, "Online Knowledge Distillation for Multi-task
Learning", WACV 2023 (§3, Eq. 1-3; ablations in Tables 4 and 5).  No official
code was released: this follows the paper; the choices it leaves open are
listed below and marked "ours".

N_t single-task networks (one backbone + one head each) and the multi-task
network (shared backbone + N_t heads, the deployable model) train together on
the same batches with

    L = L_AFD + Σ_i (L_STL^i + λ_i · L_MTL^i)                          (Eq. 1)

* **AFD** (Eq. 2): L_AFD = Σ_l ‖f_MTL(l) − Σ_i ω_i^l f_STL^i(l)‖² over every
  encoder layer l (``Features.layers``: ViT 12 blocks, CNN 5 stages).  The
  single-task features are detached (the paper's stop-gradient, after rocket
  launching): no gradient of L_AFD reaches a single-task network.
  ‖·‖² is the *mean* of the squared error over a layer's elements, summed over
  layers (ours): the sum over elements would scale with batch and image size
  (~10^5-10^6 elements per ViT layer) and dwarf the O(1) task losses, while
  the per-layer mean keeps each layer's term on the scale of one feature's
  squared error whatever the resolution, and the sum over layers keeps Eq. 2's Σ_l.
  ω (shape N_t x L) is learnable, randomly initialised from U(0, 2/N_t) (ours:
  the paper says only "randomly initialised"; this makes E[Σ_i ω_i^l] = 1, so
  the initial target is on the scale of one network's features while the
  spread breaks the symmetry that AFD-equal keeps), and trained by the
  trainer's optimiser and schedule like the networks (the paper's words),
  in its own parameter group without weight decay (ours: decaying mixing
  weights toward 0 would pull the target toward zero features).
* **OTW** (Eq. 3): λ_i = N_t · softmax_i(m_i / T), m_i = L_MTL^i / L_STL^i at
  the current iteration, T = 0.1; λ carries no gradient.  ``otw: false`` sets
  λ_i = 1.
* **Warm-up** (§3.3): the single-task networks train alone for
  ``warmup_epochs`` (5) before the multi-task network and distillation start;
  the multi-task network is not run during warm-up.  Capped (ours) at
  ``floor(warmup_max_fraction · epochs)`` (default a quarter of the run) and
  at ``epochs - 1`` (the deployable network always trains): the
  paper's 5 of 200 epochs is 2.5%, but 5 epochs of the quick preset's 8 would
  leave the deployable model 3 epochs, and the smoke preset's single epoch
  none.  The effective value is in the record (``method_info``).  During
  warm-up a step's task losses (``loss/<task>``, ``train_loss``) are the
  single-task networks'; afterwards they are the multi-task network's.

Variants (Tables 4 and 5), as config values tables can cite:

* ``afd``: ``ours`` (learnable ω on every layer), ``equal`` (ω = 1, as the
  paper says: the target is the *sum* of the single-task features),
  ``softmax`` (ω normalised across tasks per layer), ``select_skip`` (per
  layer, distil only from the argmax task of softmax(ω); ours: the one-hot
  selection is made differentiable with a straight-through estimator whose
  backward is the softmax's, otherwise ω would get no gradient and the
  selection would stay frozen at its random initialisation), ``last_layer``
  (learnable ω on the last layer only), ``none`` (no AFD);
* ``otw``: on/off; ``T``: the OTW temperature (Table 5 right);
* ``teachers``: ``online`` (the method) or ``pretrained`` (Table 4's
  "MTL-pretrained-AFD": frozen single-task networks copied from a finished
  ``stl`` run of the same dataset, backbone, preset, recipe and seed, or from
  the record named by ``teacher_run``; no warm-up, no single-task updates; the
  paper's row has OTW off: add ``--set method.otw=false``).

Records: per step ``mtl/<task>``, ``stl/<task>``, ``lambda/<task>`` and
``afd``; per epoch ``phase``, the raw ω (``omega``: {task: [per layer]}, the
paper's Fig. 4) and the weights AFD used (``afd_weights``); metrics of the
multi-task network (``""``) and, apart, of the single-task networks
(``"stl"``).

A lean step: in ``training_step`` each single-task network runs forward, its
loss is back-propagated at once (freeing its graph) and only its detached
features are kept (the trainer zeroes gradients before ``training_step``).
Then the multi-task network runs, and ``backward`` differentiates its loss and
L_AFD.  Peak memory is thus one single-task graph or the
multi-task graph, not all N_t + 1 graphs at once (``benchmarks/bench_okd_step.py``).
With ``train.grad_clip`` set, the trainer clips each network's gradient norm on
its own (``clip_groups``: the multi-task network with ω, then each single-task
network), so a spike in the multi-task network does not slow its teachers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import Method, StepOutput, TaskNetworks, TrainContext
from mtlbench.errors import UserError
from mtlbench.registry import METHODS

AFD_VARIANTS = ("ours", "equal", "softmax", "select_skip", "last_layer", "none")
TEACHERS = ("online", "pretrained")
#: variants whose distillation weights are learnable parameters
LEARNABLE = ("ours", "softmax", "select_skip", "last_layer")
_EPS = 1e-8


@dataclass
class OKDConfig:
    """Options of ``okd`` (defaults: the paper's full method, AFD-ours + OTW)."""

    afd: str = "ours"  # ours | equal | softmax | select_skip | last_layer | none (Table 5)
    otw: bool = True  # online task weighting (Eq. 3); false: λ_i = 1
    T: float = 0.1  # OTW temperature (the paper: 0.1; Table 5 right)
    warmup_epochs: int = 5  # single-task networks alone first (the paper: 5)
    warmup_max_fraction: float = 0.25  # cap the warm-up at this share of train.epochs
    teachers: str = "online"  # online | pretrained (frozen nets of an `stl` run, Table 4)
    teacher_run: str | None = None  # teachers=pretrained: this stl record instead of searching

    def validate(self) -> None:
        if self.afd not in AFD_VARIANTS:
            raise ValueError(f"method.afd must be one of {', '.join(AFD_VARIANTS)}, got {self.afd!r}")
        if self.teachers not in TEACHERS:
            raise ValueError(f"method.teachers must be online or pretrained, got {self.teachers!r}")
        if not self.T > 0:
            raise ValueError(f"method.T (OTW temperature) must be > 0, got {self.T}")
        if self.warmup_epochs < 0:
            raise ValueError(f"method.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0.0 <= self.warmup_max_fraction <= 1.0:
            raise ValueError("method.warmup_max_fraction must be in [0, 1], "
                             f"got {self.warmup_max_fraction}")
        if self.teacher_run is not None and self.teachers != "pretrained":
            raise ValueError("method.teacher_run names an stl run for frozen teachers; "
                             "it needs method.teachers=pretrained")


# ---------------------------------------------------------------------------
# the two formulas, as functions (tested against hand computations)
# ---------------------------------------------------------------------------

def otw_weights(mtl_losses: torch.Tensor, stl_losses: torch.Tensor, T: float) -> torch.Tensor:
    """Eq. 3: λ_i = N_t · softmax_i(m_i / T), m_i = L_MTL^i / L_STL^i; no gradient.

    A task whose multi-task loss lags its single-task loss most gets the
    largest weight; T flattens (large) or sharpens (small) the weights, and
    the N_t factor keeps Σ_i λ_i = N_t, the scale of the equal-weight sum.
    """
    mtl = mtl_losses.detach().float()
    # A zero single-task loss (e.g. no labelled pixel in the batch) comes with a
    # zero multi-task loss: clamping gives m = 0 there instead of 0/0.
    ratio = mtl / stl_losses.detach().float().clamp_min(_EPS)
    return mtl.numel() * torch.softmax(ratio / T, dim=0)


def afd_loss(f_mtl: Sequence[torch.Tensor], f_stl: Sequence[Sequence[torch.Tensor]],
             weights: torch.Tensor) -> torch.Tensor:
    """Eq. 2 over the given layers: Σ_l mean((f_MTL(l) − Σ_i w[i, l] f_STL^i(l))²).

    ``f_mtl[l]``: the multi-task features of layer l; ``f_stl[i][l]``: task i's
    single-task features of the same layer (detached by the caller);
    ``weights``: ``(N_t, len(f_mtl))``.  Computed in float32 (features may be
    bf16 under autocast).
    """
    total = f_mtl[0].new_zeros((), dtype=torch.float32)
    for j, fm in enumerate(f_mtl):
        target = sum(weights[i, j] * f_stl[i][j].float() for i in range(len(f_stl)))
        total = total + F.mse_loss(fm.float(), target)
    return total


# ---------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------

@METHODS.register("okd")
class OKD(Method):
    """OKD-MTL (Jacob et al., WACV 2023): single-task nets train beside the MTL net, AFD + OTW."""

    Config = OKDConfig
    summary = ("OKD-MTL (the paper's method): N single-task nets train online beside the "
               "MTL net; adaptive feature distillation + online task weighting")

    @classmethod
    def requires(cls, cfg: OKDConfig) -> list[str]:
        """Methods whose finished runs this configuration needs first."""
        return ["stl"] if cfg.teachers == "pretrained" and not cfg.teacher_run else []

    # -- building ----------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        self.model = self.make_network(self.task_names)  # the deployable multi-task network
        self.stl = TaskNetworks({t: self.make_network([t]) for t in self.task_names})
        n_layers = self.model.encoder.num_layers
        if cfg.afd != "none" and n_layers == 0:
            raise UserError("okd: this backbone exposes no per-layer features to distil "
                            f"(method.afd={cfg.afd})", hint="use --set method.afd=none")
        # Layers AFD distils: all of them, or only the last one.
        self.afd_layers = ([] if cfg.afd == "none" else
                           [n_layers - 1] if cfg.afd == "last_layer" else list(range(n_layers)))
        n = len(self.task_names)
        if cfg.afd in LEARNABLE:
            # U(0, 2/N_t): E[Σ_i ω_i^l] = 1, see the module docstring.
            self.omega = nn.Parameter(torch.empty(n, len(self.afd_layers)).uniform_(0.0, 2.0 / n))
        else:
            self.register_parameter("omega", None)
        if cfg.teachers == "pretrained":
            self.stl.requires_grad_(False)
        # capped in on_train_start; none with pretrained teachers (they are trained)
        self.warmup_epochs = 0 if cfg.teachers == "pretrained" else cfg.warmup_epochs
        self._epoch: int | None = None  # None: not told, distil (e.g. a bare training_step)
        self.teacher_record: str | None = None

    @property
    def stl_nets(self) -> nn.ModuleDict:
        return self.stl.nets

    def eval_models(self):
        return {"": self.model, "stl": self.stl}

    def param_groups(self):
        nets = [p for name, p in self.named_parameters() if p.requires_grad and name != "omega"]
        groups = [{"params": nets}]
        if self.omega is not None:
            groups.append({"params": [self.omega], "weight_decay": 0.0})
        return groups

    def clip_groups(self):
        mtl = [p for p in self.model.parameters() if p.requires_grad]
        if self.omega is not None:
            mtl.append(self.omega)
        stl = [[p for p in net.parameters() if p.requires_grad] for net in self.stl_nets.values()]
        return [mtl] + [g for g in stl if g]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.teachers == "pretrained":
            self.stl.eval()  # frozen teachers: no dropout, as they were evaluated
        return self

    # -- schedule ----------------------------------------------------------
    def effective_warmup(self, epochs: int) -> int:
        """The warm-up epochs of a run of ``epochs`` epochs (0 with pretrained teachers)."""
        if self.cfg.teachers == "pretrained":
            return 0  # the teachers are trained already
        # At most the configured share of the run, and never all of it: the
        # deployable network gets at least one epoch.
        cap = min(math.floor(self.cfg.warmup_max_fraction * epochs + 1e-9), epochs - 1)
        return max(0, min(self.cfg.warmup_epochs, cap))

    @property
    def distilling(self) -> bool:
        """Whether the multi-task network trains (after warm-up)."""
        return self._epoch is None or self._epoch >= self.warmup_epochs

    def reportable(self, epoch: int) -> bool:
        # During warm-up the multi-task network is untrained: never report those epochs.
        return epoch >= self.warmup_epochs

    def on_train_start(self, ctx: TrainContext) -> None:
        self.warmup_epochs = self.effective_warmup(ctx.epochs)
        if self.cfg.teachers == "pretrained" and ctx.start_epoch == 0:
            # On resume the teachers come back with the checkpoint's state dict.
            self._load_teachers(ctx)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    # -- teachers ------------------------------------------------------------
    def _load_teachers(self, ctx: TrainContext) -> None:
        from mtlbench.runs import load_trained_method, read_record

        what = "okd with method.teachers=pretrained (Table 4's MTL-pretrained-AFD)"
        if self.cfg.teacher_run:
            rec = read_record(self.cfg.teacher_run)
        elif ctx.run is not None:
            rec = ctx.run.require("stl", what, override_key="method.teacher_run")
        else:
            raise UserError(f"{what} needs a finished stl run, and no results directory is known",
                            hint="name one with --set method.teacher_run=PATH/TO/RECORD.json")
        if rec.get("method") != "stl":
            raise UserError(f"method.teacher_run {rec['_path']!r} is a {rec.get('method')!r} run, "
                            "not an stl run", hint="point it at a record under runs/*/*/stl/")
        teacher = load_trained_method(rec)
        for t, net in self.stl_nets.items():
            if t not in teacher.nets:
                raise UserError(f"the stl run {rec['_path']!r} has no {t!r} network "
                                f"(it has {', '.join(teacher.nets)})",
                                hint="use an stl run of the same dataset")
            try:
                net.load_state_dict(teacher.nets[t].state_dict())
            except RuntimeError as exc:
                raise UserError(f"the {t} network of stl run {rec['_path']!r} does not fit this "
                                f"backbone: {str(exc).splitlines()[0][:200]}",
                                hint="use an stl run with the same backbone and backbone options") from exc
        self.stl.requires_grad_(False)
        self.train(self.training)
        self.teacher_record = rec["_path"]

    # -- the step ------------------------------------------------------------
    def afd_weights(self) -> torch.Tensor | None:
        """The ``(N_t, len(afd_layers))`` weights of Σ_i ω_i^l f_STL^i(l); None without AFD."""
        afd = self.cfg.afd
        if afd == "none":
            return None
        if afd == "equal":
            return torch.ones(len(self.task_names), len(self.afd_layers),
                              device=next(self.model.parameters()).device)
        if afd in ("ours", "last_layer"):
            return self.omega
        soft = torch.softmax(self.omega, dim=0)  # normalised across tasks, per layer
        if afd == "softmax":
            return soft
        # select_skip: forward uses the one-hot argmax task, backward the softmax's
        # gradient (straight-through), so ω keeps learning which task to follow.
        hard = F.one_hot(soft.argmax(0), soft.shape[0]).t().to(soft.dtype)
        return hard + soft - soft.detach()

    def training_step(self, batch: dict) -> StepOutput:
        x = batch["image"]
        distill = self.distilling
        online = self.cfg.teachers == "online"
        want_feats = distill and bool(self.afd_layers)
        grad_on = torch.is_grad_enabled()

        stl_losses: dict[str, torch.Tensor] = {}
        stl_feats: list[list[torch.Tensor]] = []
        for t, net in self.stl_nets.items():
            train_it = online and grad_on
            with torch.enable_grad() if train_it else torch.no_grad():
                preds, feats = net(x, return_features=True) if want_feats else (net(x), None)
                loss = self.tasks[t].loss(preds[t], batch[t])
            if train_it:
                # Back-propagate this network's own loss now, so its graph is freed
                # before the next network runs (the trainer zeroes gradients before
                # training_step, so these are the step's gradients).
                with torch.autocast(x.device.type, enabled=False):
                    loss.backward()
            stl_losses[t] = loss.detach()
            if want_feats:
                # Stop-gradient: L_AFD must not reach the single-task networks.
                stl_feats.append([feats.layers[l].detach() for l in self.afd_layers])
            del preds, feats, loss
        logs = {f"stl/{t}": float(v) for t, v in stl_losses.items()}
        bad = [t for t, v in logs.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"the single-task {bad[0][4:]} loss became {logs[bad[0]]}; "
                                     "lower train.lr or set train.grad_clip")
        if not distill:
            # Warm-up: only the single-task networks train; their losses stand in
            # for the task losses of the step (the multi-task network is not run).
            return StepOutput(losses=stl_losses, loss=None, logs=logs)

        preds, feats = (self.model(x, return_features=True) if want_feats
                        else (self.model(x), None))
        mtl_losses = self.task_losses(preds, batch)
        mtl = torch.stack([mtl_losses[t] for t in self.task_names])
        stl = torch.stack([stl_losses[t] for t in self.task_names])
        lam = (otw_weights(mtl, stl, self.cfg.T) if self.cfg.otw
               else torch.ones_like(mtl))
        total = (lam * mtl).sum()
        if want_feats:
            l_afd = afd_loss([feats.layers[l] for l in self.afd_layers], stl_feats, self.afd_weights())
            total = total + l_afd
        else:
            l_afd = total.new_zeros(())
        lam_values = lam.tolist()
        for i, t in enumerate(self.task_names):
            logs[f"mtl/{t}"] = float(mtl_losses[t].detach())
            logs[f"lambda/{t}"] = lam_values[i]
        logs["afd"] = float(l_afd.detach())
        return StepOutput(losses=mtl_losses, loss=total, logs=logs)

    def backward(self, out: StepOutput) -> None:
        # The single-task networks already ran their backward in training_step.
        if out.loss is not None:
            out.loss.backward()  # L_AFD + Σ λ_i L_MTL^i: the multi-task network and ω

    def _omega_logs(self) -> dict:
        out = {}
        if self.omega is not None:
            w = self.omega.detach().float().cpu()
            out["omega"] = {t: [round(float(v), 6) for v in w[i]] for i, t in enumerate(self.task_names)}
        eff = self.afd_weights()
        if eff is not None:
            e = eff.detach().float().cpu()
            out["afd_weights"] = {t: [round(float(v), 6) for v in e[i]]
                                  for i, t in enumerate(self.task_names)}
            out["afd_layers"] = list(self.afd_layers)
        return out

    def on_epoch_end(self, epoch: int, losses: dict[str, float]) -> dict:
        phase = "warmup" if self._epoch is not None and self._epoch < self.warmup_epochs else "distill"
        return {"phase": phase, **self._omega_logs()}

    def extra_state(self) -> dict:
        return {"teacher_record": self.teacher_record} if self.teacher_record else {}

    def load_extra_state(self, state: dict) -> None:
        self.teacher_record = state.get("teacher_record", self.teacher_record)

    def summary_info(self) -> dict:
        info = {"warmup_epochs": self.warmup_epochs,
                "warmup_epochs_configured": self.cfg.warmup_epochs, **self._omega_logs()}
        if self.teacher_record:
            info["teacher_record"] = self.teacher_record
        return info
