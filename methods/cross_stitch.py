"""Cross-Stitch networks: one network per task, linked by learnable linear mixing.

Ishan Misra, Abhinav Shrivastava, Abhinav Gupta and Martial Hebert,
"Cross-stitch Networks for Multi-task Learning", CVPR 2016, pp. 3994-4003
(https://arxiv.org/abs/1604.03539).  The OKD-MTL paper's "Cross Stitch [1]" row.

Each task has its own network (encoder + head).  The encoders run side by side
layer by layer; after each *group* of layers (a stitch point) every task's
state becomes a learnable linear combination of all tasks' states,

    x̃_i = Σ_j α_ij x_j,   one T x T matrix α per stitch point,

through :meth:`mtlbench.api.Encoder.mix_states` (ViT: the whole token state,
class token included).  Following the OKD-MTL paper (§4, "we take layers of the
transformer encoder to form a block"), ViT-tiny's 12 blocks form 4 groups of 3
by default, with a stitch after each group (the last one included, as
Vandenhende et al.'s ResNet version stitches after layer4).

``groups``: ``None`` (default) = 4 equal groups when the encoder's layer count
is a multiple of 4, else one stitch after every layer (DeepLabV3's 5 layers,
stem and layer1-4: ``--set method.groups=[2,1,1,1]`` gives Vandenhende's
placement after layer1-4); an int k = k equal groups; a list = the group
sizes, summing to the layer count.

Choices, against the paper and the implementations (Misra et al.; Vandenhende et al.'s and LibMTL's code):

* α is one scalar per (target, source) pair, initialised 0.9 on the diagonal
  and 0.1 off it (Misra's best (α_S, α_D); Vandenhende's init, whose α is per
  channel; LibMTL initialises all ones).  Per-channel α is not implemented.
  With a single task the one weight starts at 1 (nothing to mix).
* Misra scales the α learning rate by 10²-10³; here ``stitch_lr_mult``
  (default 1.0, the same rate as the networks, as LibMTL) sets a separate
  parameter group whose learning rate is that multiple of the run's
  (``lr_mult`` of :class:`mtlbench.api.OptimizerSpec` groups; under OneCycleLR
  it is that group's peak).  The
  matrices get the trainer's weight decay like every other parameter.
* Misra initialises the networks from single-task models; here they start
  from the backbone's initialisation (ImageNet weights when configured), like
  every other method of the benchmark.
* Not defined for MTAN encoders (``supports_stitching = False``): that
  combination is not in the paper and is refused.

The deployable model is the whole stitched system (all N networks and the
stitch matrices): its parameter count and latency say so.  The stitch matrices
are logged after every epoch (history ``logs``, ``stitch/<k>`` rows = target
task, columns = source task, in ``method_info.tasks`` order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from mtlbench.api import Method, MultiTaskNet
from mtlbench.config import option
from mtlbench.errors import UserError
from mtlbench.registry import METHODS


@dataclass
class CrossStitchConfig:
    """Options of ``cross_stitch``."""

    # stitch points: None (auto), k equal groups, or a list of group sizes (each >= 1)
    groups: int | list[int] | None = option(None, ge=1, min_items=1, example=4)
    stitch_lr_mult: float = option(1.0, gt=0)  # α's peak lr / train.lr (Misra: 1e2-1e3)
    alpha_self: float = option(0.9)  # initial α_ii (any finite number)
    alpha_other: float = option(0.1)  # initial α_ij, i != j (any finite number)


def resolve_groups(groups: int | Sequence[int] | None, num_layers: int) -> list[int]:
    """Group sizes for an encoder of ``num_layers`` layers (see the module docstring)."""
    hint = (f"the encoder has {num_layers} layers: use --set method.groups=K with K dividing "
            f"{num_layers} (" + ", ".join(str(k) for k in range(1, num_layers + 1) if num_layers % k == 0)
            + f"), or a list of group sizes summing to {num_layers}, e.g. "
              f"--set method.groups=[{','.join(['1'] * num_layers)}]")
    if num_layers < 1:
        raise UserError("cross_stitch needs an encoder with at least one layer")
    if groups is None:
        k = 4 if num_layers % 4 == 0 else num_layers
        return [num_layers // k] * k
    if isinstance(groups, int):
        if groups < 1 or groups > num_layers or num_layers % groups:
            raise UserError(f"method.groups={groups} does not divide the encoder's {num_layers} "
                            f"layers into equal groups", hint=hint)
        return [num_layers // groups] * groups
    sizes = [int(g) for g in groups]
    if not sizes or any(g < 1 for g in sizes) or sum(sizes) != num_layers:
        raise UserError(f"method.groups={sizes} must be positive group sizes summing to the "
                        f"encoder's {num_layers} layers (they sum to {sum(sizes)})", hint=hint)
    return sizes


def initial_stitch(n_tasks: int, n_points: int, alpha_self: float = 0.9,
                   alpha_other: float = 0.1) -> torch.Tensor:
    """``(n_points, T, T)``: ``alpha_self`` on the diagonal, ``alpha_other`` off it."""
    if n_tasks == 1:
        return torch.ones(n_points, 1, 1)
    eye = torch.eye(n_tasks)
    one = alpha_self * eye + alpha_other * (1 - eye)
    return one.expand(n_points, n_tasks, n_tasks).clone()


class CrossStitchNetwork(nn.Module):
    """N single-task networks run layer by layer, mixed after each group: ``f(x) -> {task: pred}``."""

    def __init__(self, nets: dict[str, MultiTaskNet], group_sizes: Sequence[int],
                 alpha_self: float = 0.9, alpha_other: float = 0.1):
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.group_sizes = list(group_sizes)
        #: stitch[k][i, j]: share of task j's state in task i's state after group k
        self.stitch = nn.Parameter(initial_stitch(len(nets), len(self.group_sizes),
                                                  alpha_self, alpha_other))

    @property
    def task_names(self) -> list[str]:
        return list(self.nets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        nets = list(self.nets.values())
        encoders = [net.encoder for net in nets]
        states = [enc.begin(x) for enc in encoders]
        layer = 0
        for k, size in enumerate(self.group_sizes):
            for _ in range(size):
                states = [enc.layer(layer, s) for enc, s in zip(encoders, states)]
                layer += 1
            states = encoders[0].mix_states(states, self.stitch[k])
        out = {}
        size_hw = x.shape[-2:]
        for t, net, enc, s in zip(self.nets, nets, encoders, states):
            final = enc.end(s)
            feat = final[t] if isinstance(final, dict) else final
            out[t] = net.heads[t](feat, size_hw)
        return out


@METHODS.register("cross_stitch")
class CrossStitch(Method):
    """Cross-Stitch networks (Misra et al., CVPR 2016): per-task networks mixed after layer groups."""

    Config = CrossStitchConfig
    summary = "Cross-Stitch: one network per task, learnable T x T mixing after each layer group"
    data_parallel = True  # the networks and the stitch matrices: gradients the core averages

    def build(self):
        nets: dict[str, MultiTaskNet] = {}
        for t in self.task_names:
            nets[t] = self.make_network([t])
            if not getattr(nets[t].encoder, "supports_stitching", True):
                name = getattr(self.backbone, "registry_name", type(self.backbone).__name__)
                raise UserError(f"cross_stitch with backbone {name!r} is unsupported: its encoders "
                                f"have task-specific paths (supports_stitching = False), and "
                                f"stitching them is not defined (the paper has no such combination)",
                                hint="pick a backbone without task-specific paths, e.g. --backbone "
                                     "vit_tiny (`mtlbench list backbones`)")
            if len(nets) == 1:  # check the groups before building the other networks
                sizes = resolve_groups(self.cfg.groups, nets[t].encoder.num_layers)
        self.model = CrossStitchNetwork(nets, sizes, self.cfg.alpha_self, self.cfg.alpha_other)

    @property
    def stitch_layers(self) -> list[int]:
        """The (0-based) layer after which each stitch point sits."""
        ends, n = [], 0
        for g in self.model.group_sizes:
            n += g
            ends.append(n - 1)
        return ends

    def param_groups(self) -> list[dict]:
        stitch = self.model.stitch
        rest = [p for p in self.parameters() if p.requires_grad and p is not stitch]
        group: dict[str, Any] = {"params": [stitch]}
        if self.cfg.stitch_lr_mult != 1.0:
            group["lr_mult"] = self.cfg.stitch_lr_mult  # the trainer scales the run's lr
        return [{"params": rest}, group]

    def _matrices(self) -> dict[str, list[list[float]]]:
        m = self.model.stitch.detach().float().cpu()
        return {f"stitch/{k}": [[round(float(v), 5) for v in row] for row in m[k]]
                for k in range(m.shape[0])}

    def on_epoch_end(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        return self._matrices()

    def summary_info(self) -> dict[str, Any]:
        return {"tasks": self.task_names, "group_sizes": self.model.group_sizes,
                "stitch_after_layer": self.stitch_layers, "stitch": self._matrices()}
