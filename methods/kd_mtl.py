"""KD-MTL: multi-task learning by distilling frozen single-task teachers.

Wei-Hong Li and Hakan Bilen, "Knowledge Distillation for Multi-task Learning",
ECCV Workshops 2020, pp. 163-176 (https://arxiv.org/abs/2007.06889); official
code: VICO-UoE/KD4MTL.  The OKD-MTL paper's "KD-MTL [8]" row.

Two stages.  Stage 1 is an ``stl`` run (one network per task) in the same
setting: dataset, backbone, preset, training recipe and seed.  Stage 2 (this
method) trains the multi-task network with

    L = Σ_t L_t + Σ_t λ_t D_t,
    D_t = mean_{b,h,w} Σ_c ( N(A_t(f))_c - N(g_t)_c )²,   N(x) = x / sqrt(Σ_c x_c² + 1e-6),

where ``f`` is the multi-task network's feature, ``g_t`` the frozen teacher's
feature of the same layer (computed without gradient), and ``A_t`` a per-task
adaptor, a 1x1 convolution without bias (on ViT token maps that is a linear map
applied to every token).  Task losses are equally weighted; λ defaults to
(1, 1, 2) for (semseg, depth, normal) as in the official code; a task missing
from ``lambdas`` gets 1.

Distilled layer: the encoder's last per-layer feature (``Features.layers[-1]``):
ViT-tiny: the last block's tokens (before the final LayerNorm); DeepLabV3: the
layer4 output, 2048 channels at stride 8; DeepLabV3-MTAN: the shared stage-4
output (``layers[-1]``), the same for every task, not each task's attended
feature as the official SegNet-MTAN code does.  The official code distils two
SegNet layers (the encoder bottleneck and the last decoder feature); there is no
official ResNet/ViT version, so one layer is our port (the mtlbench decisions).

Adaptors have their own optimiser, as in the official code: Adam, lr 0.1,
weight decay 5e-4, no scheduler (``adaptor_lr``, ``adaptor_weight_decay``),
declared in ``optimizers()`` so the trainer zeroes, steps and checkpoints it
(``train.grad_clip``, off by default, bounds it apart from the network); they
keep PyTorch's default conv initialisation (the official MTAN script's; its
SegNet script uses Xavier-normal).

Departures and choices:

* Teachers are in eval mode by default (``teacher_mode: eval``).  The official
  code never calls ``eval()`` on them, so BatchNorm teachers normalise with
  batch statistics and keep updating their running statistics; set
  ``teacher_mode: train`` for that behaviour.  The configured mode survives the
  trainer's ``train()``/``eval()`` calls.
* Teachers are the *encoders* of the ``stl`` networks (their heads play no
  part in feature distillation).  They are submodules, so they are part of
  ``state_dict``: a kd_mtl checkpoint is self-contained (resume and
  ``load_trained_method`` work without the ``stl`` run), at the cost of the
  teachers' weights in each checkpoint.  On resume they come from the
  checkpoint, not from the ``stl`` run again.
* The official code picks the STL checkpoint with the lowest training loss;
  here the teacher is the ``stl`` run's final checkpoint.

The deployable model is the multi-task network alone: the run's architecture
(``method.architecture``) where the student has one encoder to distil into
(hard sharing, MTAN); on single-task networks and Cross-Stitch the method is
undefined and refuses (README, "Two axes").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlbench import distributed
from mtlbench.api import Encoder, Method, MultiTaskNet, OptimizerSpec, StepOutput, TrainContext, count_parameters
from mtlbench.config import option
from mtlbench.errors import UserError
from mtlbench.registry import METHODS

DEFAULT_LAMBDAS = {"semseg": 1.0, "depth": 1.0, "normal": 2.0}
NORM_EPS = 1e-6


@dataclass
class KDMTLConfig:
    """Options of ``kd_mtl`` (defaults: the official KD4MTL code)."""

    teacher_run: str | None = None  # a finished `stl` run's record (.json); None: find it in --out
    teacher_mode: str = option("eval", choices=("eval", "train"))  # the official code: train, i.e. never eval()
    # λ_t by task, each >= 0 (a task left out gets 1)
    lambdas: dict[str, float] = option(default_factory=lambda: dict(DEFAULT_LAMBDAS), ge=0)
    adaptor_lr: float = option(0.1, gt=0)  # Adam lr of the adaptors (official --alr)
    adaptor_weight_decay: float = option(5e-4, ge=0)  # Adam weight decay of the adaptors

    def __post_init__(self) -> None:
        # Store whole numbers as floats, so {normal: 2} and the default {normal: 2.0}
        # resolve to the same config (and config hash).
        if isinstance(self.lambdas, dict):
            self.lambdas = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                            for k, v in self.lambdas.items()}


def channel_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / sqrt(Σ_c x_c² + 1e-6)`` along dim 1 (eps inside the root, as KD4MTL does)."""
    return x * torch.rsqrt(x.pow(2).sum(1, keepdim=True) + NORM_EPS)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """D = mean over batch and positions of Σ_c (N(student) - N(teacher))², in float32."""
    diff = channel_normalize(student.float()) - channel_normalize(teacher.float())
    return diff.pow(2).sum(1).mean()


def last_layer_feature(encoder: Encoder, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last per-layer feature map, without computing its final features."""
    state = encoder.begin(x)
    for i in range(encoder.num_layers):
        state = encoder.layer(i, state)
    return encoder.layer_feature(state)


@METHODS.register("kd_mtl", aliases=("kd",))
class KDMTL(Method):
    """KD-MTL (Li & Bilen, ECCV-W 2020): distil frozen `stl` teachers through per-task adaptors."""

    Config = KDMTLConfig
    summary = "KD-MTL: MTL net + distillation from frozen `stl` teachers via 1x1 adaptors (run stl first)"
    data_parallel = True  # the distillation losses are the global batch's (distributed.global_mean)

    @classmethod
    def requires(cls, cfg: KDMTLConfig) -> list[str]:
        # The teachers: an `stl` run of the same setting, unless a record is named.
        return [] if cfg.teacher_run else ["stl"]

    def build(self):
        unknown = sorted(set(self.cfg.lambdas) - set(self.task_names) - set(DEFAULT_LAMBDAS))
        if unknown:
            raise UserError(f"method.lambdas names {', '.join(map(repr, unknown))}, not a task of this "
                            f"dataset (tasks: {', '.join(self.task_names)})",
                            hint="key method.lambdas by task name, e.g. "
                                 "--set method.lambdas={semseg: 1, depth: 1, normal: 2}")
        self.lambdas = {t: float(self.cfg.lambdas.get(t, 1.0)) for t in self.task_names}
        self.model = self.make_model()  # the student: the run's architecture
        if not isinstance(self.model, MultiTaskNet):
            arch = getattr(type(self.architecture), "registry_name", type(self.architecture).__name__)
            raise UserError(f"kd_mtl on the {arch} architecture is unsupported: KD-MTL distils every "
                            "teacher into the one encoder of a multi-task student (its last per-layer "
                            f"feature, through a per-task adaptor), and {arch} builds "
                            f"{type(self.model).__name__}, which has no such encoder",
                            hint="use --set method.architecture=hard (or mtan on a DeepLabV3 backbone)")
        # One teacher encoder per task, built exactly as `stl` builds its networks' encoders,
        # so the stl checkpoint's weights load strictly.
        self.teachers = nn.ModuleDict({t: self.backbone.encoder([t]) for t in self.task_names})
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        c_student = self.model.encoder.layer_channels[-1]
        self.adaptors = nn.ModuleDict({
            t: nn.Conv2d(c_student, self.teachers[t].layer_channels[-1], kernel_size=1, bias=False)
            for t in self.task_names})
        self.teacher_source: str | None = None  # record id/path the teachers were loaded from
        self.teachers.train(self.cfg.teacher_mode == "train")

    # -- modes and optimisers ---------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        # The teachers keep their configured mode whatever the trainer asks of the method.
        self.teachers.train(self.cfg.teacher_mode == "train")
        return self

    def param_groups(self) -> list[dict]:
        # Only the multi-task network: teachers are frozen, adaptors have their own optimiser.
        return self.network_groups([p for p in self.model.parameters() if p.requires_grad])

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("model", self.param_groups()),
                OptimizerSpec("adaptors", [{"params": list(self.adaptors.parameters())}], kind="adam",
                              lr=self.cfg.adaptor_lr, weight_decay=self.cfg.adaptor_weight_decay,
                              scheduled=False)]

    # -- teachers -----------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        if ctx.start_epoch > 0:
            return  # resumed: the teachers' weights came with the checkpoint
        self.load_teachers(ctx.run)

    def load_teachers(self, run_ctx: Any) -> None:
        """Copy the encoders of a finished ``stl`` run into the frozen teachers."""
        from mtlbench.runs import load_task_networks

        nets, source = load_task_networks(run_ctx, self.task_names, "kd_mtl (its frozen single-task teachers)",
                                          method="stl", record_path=self.cfg.teacher_run)
        for t in self.task_names:
            try:
                self.teachers[t].load_state_dict(nets[t].encoder.state_dict())
            except RuntimeError as exc:
                raise UserError(f"the {t} network of the stl run {source} does not fit this run's encoder: "
                                f"{str(exc).splitlines()[0][:300]}",
                                hint="train the stl run with the same backbone options") from exc
        self.teacher_source = source

    # -- the step -------------------------------------------------------------------
    def training_step(self, batch: dict) -> StepOutput:
        x = batch["image"]
        preds, feats = self.model(x, return_features=True)
        losses = self.task_losses(preds, batch)
        student = feats.layers[-1]
        distill = {}
        for t in self.task_names:
            with torch.no_grad():
                target = last_layer_feature(self.teachers[t], x)
            adapted = self.adaptors[t](student)
            if adapted.shape[-2:] != target.shape[-2:]:
                adapted = F.interpolate(adapted, size=target.shape[-2:], mode="bilinear",
                                        align_corners=False)
            # a mean over the shard's samples; data parallel: the global batch's (distributed)
            distill[t] = distributed.global_mean(distillation_loss(adapted, target), x.shape[0])
        total = sum(losses.values()) + sum(self.lambdas[t] * distill[t] for t in self.task_names)
        logs = {f"distill/{t}": float(d.detach()) for t, d in distill.items()}
        return StepOutput(losses=losses, loss=total, logs=logs, extra={"distill": distill})

    # -- state ------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"teacher_source": self.teacher_source}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher_source = state.get("teacher_source", self.teacher_source)

    def summary_info(self) -> dict[str, Any]:
        return {"teacher_run": self.teacher_source, "teacher_mode": self.cfg.teacher_mode,
                "lambdas": dict(self.lambdas),
                "teacher_params": count_parameters(self.teachers),
                "adaptor_params": count_parameters(self.adaptors)}
