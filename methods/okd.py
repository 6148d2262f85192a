"""OKD-MTL: online knowledge distillation for multi-task learning, in two profiles.

Jacob, Agarwal and Stenger, "Online Knowledge Distillation for Multi-task
Learning", WACV 2023 (§3, Eq. 1-3; ablations in Tables 4 and 5).

N_t single-task networks (one backbone + one head each) and the multi-task
network (shared backbone + N_t heads, the deployable model) train together on
the same batches with

    L = L_AFD + Σ_i (L_STL^i + λ_i · L_MTL^i)                          (Eq. 1)

the single-task features detached in L_AFD (the paper's stop-gradient, after
rocket launching): L_AFD and the λ-weighted multi-task losses train the
multi-task network and ω, each L_STL^i its own single-task network.

Two profiles (``profile``)
--------------------------
The paper's text and the authors' public training script differ in ways the
text never mentions (``shared/reference/okd-official-code.md`` in the project's
notes).  Both are here; ``profile`` sets the default of every option that
differs, and each difference is an option of its own, so an ablation can cite
it:

============================  =================================  =====================================
option                        ``text`` (the paper, Eq. 2-3)      ``script`` (the authors' script)
============================  =================================  =====================================
``afd_features``              ``raw``: mean squared error of      ``normalized``: features L2-normalised
                              the raw features per layer          per token (eps 1e-6 under the root),
                                                                  squared error summed over channels,
                                                                  averaged over positions and batch
``omega_init``                ``uniform_2_over_n``: U(0, 2/N_t)   ``uniform_0_1``: U(0, 1)
``omega_optimizer``           ``shared``: the run's optimiser     ``adam``: its own Adam, lr 1e-3,
                              and schedule, no weight decay       weight decay 5e-4, no schedule
``otw_schedule``              ``step``: Eq. 3 at every step       ``epoch``: once per epoch from the
                                                                  previous epoch's mean losses (epoch 0:
                                                                  λ = 1; epoch 1: ratios capped at 1;
                                                                  exp(m/T) capped at 10, NaN counted 10)
``stl_train_fraction``        1.0: single-task networks train     1/3: they stop after a third of the
                              to the end                          run (the script: epoch 100 of 300) and
                                                                  keep supplying features and losses
============================  =================================  =====================================

**The default profile is ``script``**: it is what produced the published
numbers (Tables 1-5), so it is the method as its authors ran it; ``text`` is
the method as readers of the paper implement it, and is one flag away
(``--set method.profile=text``); what each profile gives is in docs/RESULTS.md.
Note what the script's OTW does at T = 0.1: exp(m/T) hits
the cap of 10 as soon as m > T·ln 10 ≈ 0.23, so for ordinary loss ratios every
term is capped and λ_i = 1 for all tasks: equal weighting, unless a task's
multi-task loss falls below about a quarter of its single-task loss.

The training recipe is the preset's, not the method's: the script's is the
``script`` preset (Adam, lr 1e-4, weight decay 1e-5, no schedule, batch 8, 300
epochs, the lowest-training-loss epoch reported); the paper's text is the
``paper`` preset (AdamW + OneCycle, lr 1e-3, 200 epochs).

Both profiles
-------------
* **Warm-up** (§3.3): the single-task networks train alone for
  ``warmup_epochs`` (5) *before* the run's schedule (``Method.leading_epochs``):
  the multi-task network then trains for all of ``train.epochs`` on exactly the
  baseline's schedule (same epochs, same learning-rate curve), as in the
  script.  The warm-up is capped (ours) at ``floor(warmup_max_fraction ·
  epochs)`` (a quarter of the run by default: the paper's 5 of 200 epochs is
  2.5%, but 5 extra epochs on the quick preset's 8 would be more than half
  again); the record's ``schedule.leading_epochs`` says how many ran.  The
  multi-task network is not run during warm-up; a step's task losses are then
  the single-task networks'.  The single-task networks' own optimiser follows
  the schedule over the warm-up and the run together.
* **AFD** (Eq. 2) over every encoder layer l (``Features.layers``: ViT 12
  blocks' patch tokens, CNN 5 stages), summed over layers.  ``text``: the
  per-layer term is the *mean* of the squared error over the layer's elements
  (ours: the sum over elements would scale with batch and image size and dwarf
  the O(1) task losses).
* **ω** (N_t x L) is learnable.  ``text``: U(0, 2/N_t) (ours: the paper says
  only "randomly initialised"; this makes E[Σ_i ω_i^l] = 1), trained by the
  run's optimiser and schedule like the networks (the paper's words), in its
  own parameter group without weight decay.
* **OTW** (Eq. 3): λ_i = N_t · softmax_i(m_i / T), m_i = L_MTL^i / L_STL^i,
  T = 0.1; λ carries no gradient.  ``otw: false`` sets λ_i = 1.

Variants (Tables 4 and 5), as config values tables can cite:

* ``afd``: ``ours`` (learnable ω on every layer), ``equal`` (ω = 1: the target
  is the *sum* of the single-task features), ``softmax`` (ω normalised across
  tasks per layer), ``select_skip`` (per layer, distil only from the argmax
  task of softmax(ω); ours: made differentiable with a straight-through
  estimator whose backward is the softmax's, otherwise ω would never move),
  ``last_layer`` (learnable ω on the last layer only), ``none`` (no AFD);
* ``otw``: on/off; ``T``: the OTW temperature (Table 5 right);
* ``teachers``: ``online`` (the method) or ``pretrained`` (Table 4's
  "MTL-pretrained-AFD": frozen single-task networks copied from a finished
  ``stl`` run of the same setting, or the record named by ``teacher_run``; no
  warm-up, no single-task updates; the paper's row has OTW off).

Records: per step ``mtl/<task>``, ``stl/<task>``, ``lambda/<task>`` and
``afd``; per epoch ``phase``, the raw ω (``omega``: {task: [per layer]}, the
paper's Fig. 4) and the weights AFD used (``afd_weights``); metrics of the
multi-task network (``""``) and, apart, of the single-task networks
(``"stl"``); ``method_info`` says which profile ran and every resolved option.

A lean step, by the step rule of :mod:`mtlbench.api`: in ``training_step``
each single-task network runs forward and its loss is back-propagated at once
(freeing its graph), keeping only detached features; then the multi-task
network runs, and ``backward`` differentiates its loss and L_AFD.  Peak memory
is one single-task graph or the multi-task graph, not all N_t + 1 at once.
With ``train.grad_clip`` set, each network's gradient is clipped on its own
(``clip_groups``).

The multi-task network is the run's architecture (``method.architecture``)
where AFD has one shared feature per layer to distil into (hard sharing,
MTAN); on single-task networks and Cross-Stitch OKD-MTL is undefined and
refuses (README, "Two axes").  The single-task networks are always the
backbone's own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench import distributed
from mtlbench.api import Method, MultiTaskNet, OptimizerSpec, StepOutput, TaskNetworks, TrainContext
from mtlbench.config import option
from mtlbench.errors import UserError
from mtlbench.registry import METHODS

AFD_VARIANTS = ("ours", "equal", "softmax", "select_skip", "last_layer", "none")
TEACHERS = ("online", "pretrained")
PROFILES = ("script", "text")
#: variants whose distillation weights are learnable parameters
LEARNABLE = ("ours", "softmax", "select_skip", "last_layer")
_EPS = 1e-8
#: the script's normalisation: eps under the square root
NORM_EPS = 1e-6
#: the script's cap on exp(m / T) in per-epoch OTW
OTW_CAP = 10.0
#: the script's own Adam for ω
OMEGA_ADAM = {"lr": 1e-3, "weight_decay": 5e-4}

#: what each profile sets (the options left at None take these values)
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": {"afd_features": "raw", "omega_init": "uniform_2_over_n", "omega_optimizer": "shared",
             "otw_schedule": "step", "stl_train_fraction": 1.0},
    "script": {"afd_features": "normalized", "omega_init": "uniform_0_1", "omega_optimizer": "adam",
               "otw_schedule": "epoch", "stl_train_fraction": 1.0 / 3.0},
}
CHOICES = {"afd_features": ("raw", "normalized"), "omega_init": ("uniform_2_over_n", "uniform_0_1"),
           "omega_optimizer": ("shared", "adam"), "otw_schedule": ("step", "epoch")}


@dataclass
class OKDConfig:
    """Options of ``okd`` (defaults: the full method, AFD-ours + OTW, as the authors' script runs it).

    The options left at None take their ``profile``'s value (see the module docstring).
    """

    profile: str = option("script", choices=PROFILES)  # script (the authors' training script) | text (the paper's text)
    afd: str = option("ours", choices=AFD_VARIANTS)  # the AFD variant (Table 5)
    # raw (text) | normalized (script): what AFD compares
    afd_features: str | None = option(None, choices=CHOICES["afd_features"])
    # uniform_2_over_n (text) | uniform_0_1 (script)
    omega_init: str | None = option(None, choices=CHOICES["omega_init"])
    # shared (text: the run's optimiser) | adam (script: own Adam)
    omega_optimizer: str | None = option(None, choices=CHOICES["omega_optimizer"])
    otw: bool = True  # online task weighting (Eq. 3); false: λ_i = 1
    # step (text: Eq. 3 every step) | epoch (script: per epoch, capped)
    otw_schedule: str | None = option(None, choices=CHOICES["otw_schedule"])
    T: float = option(0.1, gt=0)  # OTW temperature (the paper: 0.1; Table 5 right)
    # share of the run the single-task nets train (text 1, script 1/3)
    stl_train_fraction: float | None = option(None, gt=0, le=1, example=1.0)
    warmup_epochs: int = option(5, ge=0)  # single-task networks alone first, before the run's schedule (the paper: 5)
    warmup_max_fraction: float = option(0.25, ge=0, le=1)  # cap the warm-up at this share of train.epochs
    teachers: str = option("online", choices=TEACHERS)  # online | pretrained (frozen nets of an `stl` run, Table 4)
    teacher_run: str | None = None  # teachers=pretrained: this stl record instead of searching

    def validate(self) -> None:
        """The one rule that ties two options together (ranges and choices: :func:`option`)."""
        if self.teacher_run is not None and self.teachers != "pretrained":
            raise ValueError("method.teacher_run names an stl run for frozen teachers; "
                             "it needs method.teachers=pretrained")

    def resolved(self) -> dict[str, Any]:
        """Every option with the profile's values filled in."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in PROFILE_DEFAULTS[self.profile].items():
            if out[k] is None:
                out[k] = v
        return out


# ---------------------------------------------------------------------------
# the formulas, as functions (tested against hand computations)
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


def otw_epoch_weights(prev_mtl: Sequence[float] | None, prev_stl: Sequence[float] | None,
                      joint_epoch: int, T: float, n_tasks: int) -> list[float]:
    """The script's OTW for one epoch, from the previous epoch's mean training losses.

    ``joint_epoch`` counts the epochs after warm-up.  Epoch 0 (or no previous
    epoch): λ_i = 1.  Otherwise w_i = mean L_MTL^i / mean L_STL^i of the previous
    epoch, capped at 1 in epoch 1; term_i = min(exp(w_i / T), 10), a NaN term
    counting as 10; λ_i = N_t · term_i / Σ_j term_j.  At T = 0.1 every ratio
    above 0.1·ln 10 ≈ 0.23 hits the cap, so ordinary ratios give λ_i = 1.
    """
    if joint_epoch <= 0 or prev_mtl is None or prev_stl is None:
        return [1.0] * n_tasks
    terms = []
    for m, st in zip(prev_mtl, prev_stl):
        w = m / st if st != 0 else float("nan")
        if joint_epoch == 1 and not math.isnan(w):
            w = min(w, 1.0)
        try:
            term = math.exp(w / T)
        except OverflowError:
            term = math.inf
        terms.append(OTW_CAP if math.isnan(term) else min(term, OTW_CAP))
    z = sum(terms)
    return [n_tasks * t / z for t in terms]


def afd_loss(f_mtl: Sequence[torch.Tensor], f_stl: Sequence[Sequence[torch.Tensor]],
             weights: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Eq. 2 over the given layers, summed over layers, in float32.

    ``f_mtl[l]``: the multi-task features of layer l, ``(B, C, h, w)``;
    ``f_stl[i][l]``: task i's single-task features of the same layer (detached
    by the caller); ``weights``: ``(N_t, len(f_mtl))``.

    ``normalize=False`` (the text): Σ_l mean((f_MTL(l) − Σ_i w[i, l] f_STL^i(l))²)
    over every element.  ``normalize=True`` (the script): each feature vector
    (per position, over channels) is divided by sqrt(Σ_c f_c² + 1e-6), both the
    multi-task one and each single-task one; the squared difference is summed
    over channels and averaged over positions and batch.
    """
    total = f_mtl[0].new_zeros((), dtype=torch.float32)
    for j, fm in enumerate(f_mtl):
        fm = fm.float()
        stl = [f_stl[i][j].float() for i in range(len(f_stl))]
        if normalize:
            fm = _channel_normalize(fm)
            stl = [_channel_normalize(f) for f in stl]
        target = sum(weights[i, j] * stl[i] for i in range(len(stl)))
        if normalize:
            total = total + (fm - target).pow(2).sum(1).mean()
        else:
            total = total + F.mse_loss(fm, target)
    return total


def _channel_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(1, keepdim=True) + NORM_EPS)


# ---------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------

@METHODS.register("okd")
class OKD(Method):
    """OKD-MTL (Jacob et al., WACV 2023): single-task nets train beside the MTL net, AFD + OTW."""

    Config = OKDConfig
    summary = ("OKD-MTL (the paper's method): N single-task nets train online beside the "
               "MTL net; adaptive feature distillation + online task weighting (profiles script|text)")
    # every network (single-task ones included) is trained by gradients the core averages; the
    # single-task, multi-task and AFD losses are the global batch's (task_losses, global_mean)
    data_parallel = True

    @classmethod
    def requires(cls, cfg: OKDConfig) -> list[str]:
        """Methods whose finished runs this configuration needs first."""
        return ["stl"] if cfg.teachers == "pretrained" and not cfg.teacher_run else []

    @classmethod
    def figures(cls):
        from mtlbench.methods._okd_figures import FIGURES

        return FIGURES

    # -- building ----------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        self.opts = cfg.resolved()
        self.model = self.make_model()  # the deployable multi-task network: the run's architecture
        if not isinstance(self.model, MultiTaskNet):
            arch = getattr(type(self.architecture), "registry_name", type(self.architecture).__name__)
            raise UserError(f"okd on the {arch} architecture is unsupported: OKD-MTL's AFD (Eq. 2) "
                            "distils the single-task networks' features into the one shared feature "
                            "of each layer of a multi-task encoder, and "
                            f"{arch} builds {type(self.model).__name__}, which has no such encoder",
                            hint="use --set method.architecture=hard (or mtan on a DeepLabV3 backbone)")
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
            hi = 2.0 / n if self.opts["omega_init"] == "uniform_2_over_n" else 1.0
            self.omega = nn.Parameter(torch.empty(n, len(self.afd_layers)).uniform_(0.0, hi))
        else:
            self.register_parameter("omega", None)
        if cfg.teachers == "pretrained":
            self.stl.requires_grad_(False)
        # set in on_train_start: the run's leading (warm-up) epochs and the epoch the
        # single-task networks stop training (joint epochs are counted after warm-up)
        self.warmup_epochs = 0
        self.stl_stop_epoch: int | None = None
        self._epoch: int | None = None  # None: not told, distil (e.g. a bare training_step)
        self.teacher_record: str | None = None
        # per-epoch OTW (script): this epoch's λ and loss sums, the previous epoch's means
        self._lam_epoch: list[float] | None = None
        self._sums = {"mtl": [0.0] * n, "stl": [0.0] * n, "n": 0}
        self._prev_means: dict[str, list[float]] | None = None

    @property
    def stl_nets(self) -> nn.ModuleDict:
        return self.stl.nets

    def eval_models(self):
        return {"": self.model, "stl": self.stl}

    def _stl_params(self) -> list[nn.Parameter]:
        return [p for p in self.stl.parameters() if p.requires_grad]

    def optimizers(self):
        mtl = [p for p in self.model.parameters() if p.requires_grad]
        specs = []
        if self.omega is not None and self.opts["omega_optimizer"] == "shared":
            specs.append(OptimizerSpec("model", [{"params": mtl},
                                                 {"params": [self.omega], "weight_decay": 0.0}]))
        else:
            specs.append(OptimizerSpec("model", [{"params": mtl}]))
            if self.omega is not None:
                specs.append(OptimizerSpec("omega", [{"params": [self.omega]}], kind="adam",
                                           scheduled=False, **OMEGA_ADAM))
        stl = self._stl_params()
        if stl:
            # the single-task networks train over the warm-up and the run: their schedule spans both
            specs.append(OptimizerSpec("stl", [{"params": stl}], schedule_leading=True))
        return specs

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
        """The warm-up epochs before a run of ``epochs`` epochs (0 with pretrained teachers)."""
        if self.cfg.teachers == "pretrained":
            return 0  # the teachers are trained already
        cap = math.floor(self.cfg.warmup_max_fraction * epochs + 1e-9)
        return max(0, min(self.cfg.warmup_epochs, cap))

    def leading_epochs(self, epochs: int) -> int:
        return self.effective_warmup(epochs)

    def stl_epochs(self, epochs: int) -> int:
        """Joint epochs during which the single-task networks still train."""
        return max(1, round(self.opts["stl_train_fraction"] * epochs))

    @property
    def distilling(self) -> bool:
        """Whether the multi-task network trains (after warm-up)."""
        return self._epoch is None or self._epoch >= self.warmup_epochs

    @property
    def joint_epoch(self) -> int | None:
        return None if self._epoch is None else self._epoch - self.warmup_epochs

    @property
    def stl_training(self) -> bool:
        """Whether the single-task networks train in the current epoch."""
        if self.cfg.teachers == "pretrained":
            return False
        j = self.joint_epoch
        return j is None or self.stl_stop_epoch is None or j < self.stl_stop_epoch

    def on_train_start(self, ctx: TrainContext) -> None:
        self.warmup_epochs = ctx.leading_epochs
        self.stl_stop_epoch = self.stl_epochs(ctx.epochs)
        if self.cfg.teachers == "pretrained" and ctx.start_epoch == 0:
            # On resume the teachers come back with the checkpoint's state dict.
            self._load_teachers(ctx)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        n = len(self.task_names)
        self._sums = {"mtl": [0.0] * n, "stl": [0.0] * n, "n": 0}
        if self.opts["otw_schedule"] == "epoch" and self.distilling:
            prev = self._prev_means
            self._lam_epoch = otw_epoch_weights(prev and prev["mtl"], prev and prev["stl"],
                                                self.joint_epoch, self.cfg.T, n)

    # -- teachers ------------------------------------------------------------
    def _load_teachers(self, ctx: TrainContext) -> None:
        from mtlbench.runs import load_task_networks

        nets, source = load_task_networks(
            ctx.run, self.task_names, "okd with method.teachers=pretrained (Table 4's MTL-pretrained-AFD)",
            method="stl", record_path=self.cfg.teacher_run)
        for t, net in self.stl_nets.items():
            try:
                net.load_state_dict(nets[t].state_dict())
            except RuntimeError as exc:
                raise UserError(f"the {t} network of the stl run {source} does not fit this "
                                f"backbone: {str(exc).splitlines()[0][:200]}",
                                hint="use an stl run with the same backbone and backbone options") from exc
        self.stl.requires_grad_(False)
        self.train(self.training)
        self.teacher_record = source

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
        train_stl = self.stl_training and torch.is_grad_enabled()
        want_feats = distill and bool(self.afd_layers)

        stl_losses: dict[str, torch.Tensor] = {}
        stl_feats: list[list[torch.Tensor]] = []
        for t, net in self.stl_nets.items():
            with torch.enable_grad() if train_stl else torch.no_grad():
                preds, feats = net(x, return_features=True) if want_feats else (net(x), None)
                loss = self.task_losses({t: preds[t]}, batch)[t]  # data parallel: the global batch's
            if train_stl:
                # The step rule: back-propagate this network's own loss now, so its
                # graph is freed before the next network runs.
                with torch.autocast(x.device.type, enabled=False):
                    loss.backward()
            stl_losses[t] = loss.detach()
            if want_feats:
                # Stop-gradient: L_AFD must not reach the single-task networks.
                stl_feats.append([feats.layers[l].detach() for l in self.afd_layers])
            del preds, feats, loss
        logs = {f"stl/{t}": float(v) for t, v in stl_losses.items()}
        if not distill:
            # Warm-up: only the single-task networks train; their losses stand in
            # for the task losses of the step (the multi-task network is not run).
            return StepOutput(losses=stl_losses, loss=None, logs=logs)

        preds, feats = (self.model(x, return_features=True) if want_feats
                        else (self.model(x), None))
        mtl_losses = self.task_losses(preds, batch)
        mtl = torch.stack([mtl_losses[t] for t in self.task_names])
        stl = torch.stack([stl_losses[t] for t in self.task_names])
        if not self.cfg.otw:
            lam = torch.ones_like(mtl)
        elif self.opts["otw_schedule"] == "epoch":
            lam_list = self._lam_epoch or [1.0] * len(self.task_names)
            lam = torch.tensor(lam_list, dtype=mtl.dtype, device=mtl.device)
        else:
            lam = otw_weights(mtl, stl, self.cfg.T)
        total = (lam * mtl).sum()
        if want_feats:
            l_afd = afd_loss([feats.layers[l] for l in self.afd_layers], stl_feats, self.afd_weights(),
                             normalize=self.opts["afd_features"] == "normalized")
            # a mean over the shard's samples (per layer, over a fixed number of elements each);
            # data parallel: the global batch's
            l_afd = distributed.global_mean(l_afd, x.shape[0])
            total = total + l_afd
        else:
            l_afd = total.new_zeros(())
        lam_values = lam.tolist()
        for i, t in enumerate(self.task_names):
            logs[f"mtl/{t}"] = float(mtl_losses[t].detach())
            logs[f"lambda/{t}"] = lam_values[i]
            self._sums["mtl"][i] += logs[f"mtl/{t}"]
            self._sums["stl"][i] += logs[f"stl/{t}"]
        self._sums["n"] += 1
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
        phase = "warmup" if not self.distilling else ("distill" if self.stl_training else "distill_frozen_stl")
        out: dict[str, Any] = {"phase": phase, **self._omega_logs()}
        n = self._sums["n"]
        if self.distilling and n:
            self._prev_means = {k: [v / n for v in self._sums[k]] for k in ("mtl", "stl")}
        if self._lam_epoch is not None and self.distilling:
            out["lambda"] = dict(zip(self.task_names, self._lam_epoch))
        return out

    def extra_state(self) -> dict:
        st: dict[str, Any] = {"prev_means": self._prev_means}
        if self.teacher_record:
            st["teacher_record"] = self.teacher_record
        return st

    def load_extra_state(self, state: dict) -> None:
        self.teacher_record = state.get("teacher_record", self.teacher_record)
        self._prev_means = state.get("prev_means", self._prev_means)

    def summary_info(self) -> dict:
        info = {"profile": self.cfg.profile, "options": self.opts,
                "warmup_epochs": self.warmup_epochs, "warmup_epochs_configured": self.cfg.warmup_epochs,
                "stl_train_epochs": self.stl_stop_epoch, **self._omega_logs()}
        if self.teacher_record:
            info["teacher_record"] = self.teacher_record
        return info
