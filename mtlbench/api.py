"""The contracts between the core and its plugins: backbones, architectures and methods.

Backbones
---------
A backbone plugin is a :class:`BackboneFactory` subclass registered in
``BACKBONES``.  It builds *encoders* (:class:`Encoder`) and task *heads*.
An encoder returns :class:`Features`: its per-layer features (ViT: every
block's patch tokens; ResNet: stem and layer1-4), each as a ``(B, C, h, w)``
map, and its final features, shared by all tasks or one per task (MTAN).
A head maps final features to a task's prediction at the input resolution.
Encoders also run layer by layer (``begin`` / ``layer`` / ``end``), which is
what Cross-Stitch uses to link several networks.

Architectures
-------------
A run has two axes: its *architecture*, how the task networks share (hard
sharing, single-task networks, Cross-Stitch, MTAN), and its *weighting*, how
the task losses or gradients are combined (the method).  An architecture
plugin is an :class:`Architecture` subclass registered in ``ARCHITECTURES``
(:mod:`mtlbench.architectures`), with a ``Config`` of its own options; it
builds a :class:`TaskModel` from the backbone's encoders and heads.  A method
reads its architecture from ``method.architecture`` (default ``hard``; the
architecture's options sit beside the method's in the ``method`` section) and
builds the network through :meth:`Method.make_model`; what a weighting asks of
the network (the heads, each task's final features, the parameters several
tasks share, parameter groups of their own) is the :class:`TaskModel`
contract, so a weighting never asks which architecture it runs on.

Methods
-------
A method plugin is a :class:`Method` subclass registered in ``METHODS``, with a
``Config`` dataclass beside it.  The trainer only ever calls the hooks below;
it never asks which method it runs.

* building: ``__init__`` builds the trainable system (``build``), usually from
  :meth:`Method.make_network`;
* ``optimizers()``: every optimiser the method needs, as :class:`OptimizerSpec`
  (the networks', and any of its own: GradNorm's task weights, KD-MTL's
  adaptors, OKD-MTL's ω in its script profile), each with its hyper-parameters
  and whether the run's learning-rate schedule applies.  The trainer builds,
  zeroes, clips, steps, schedules and checkpoints all of them; a method never
  holds a torch optimiser of its own.  ``clip_groups()``: what
  ``train.grad_clip`` bounds together;
* ``training_step(batch) -> StepOutput`` (forward and losses, run under
  autocast) and ``backward(out)`` (default: ``out.loss.backward()``);
* hooks ``on_train_start``, ``on_epoch_start``, ``after_step``, ``on_epoch_end``
  whose returned dicts go into the run record's history; ``leading_epochs``:
  epochs the method trains before the run's own schedule (OKD-MTL's warm-up);
* ``deployable()``: the multi-task model that evaluation, parameter counts and
  latency use; ``eval_models()`` may add more models to evaluate separately;
* state: parameters and buffers through ``state_dict``; anything else (loss
  history) through ``extra_state`` / ``load_extra_state``;
* ``figures()``: figures the method draws from its records (``mtlbench plot``);
* ``data_parallel`` / ``data_parallel_problem(cfg)``: whether the method may train over
  several processes (:mod:`mtlbench.distributed`; the trainer refuses it otherwise).

The step rule
-------------
**The trainer zeroes the gradients of every optimiser, then calls
``training_step`` and ``backward``; whatever gradients the method accumulates
into its parameters between those two calls (several backward passes, or
``p.grad`` set directly) is what the trainer clips and steps.**  So a method may
split its backward (OKD-MTL back-propagates each single-task network inside
``training_step`` to free its graph), but never zeroes or steps anything
itself; ``after_step(step, batch)`` runs after the optimisers and schedulers
stepped, and sets the gradients of any optimiser declared ``after_update``,
which the trainer steps right after it (FAMO).  ``tests/test_contract.py`` checks the rule for every registered
method through the trainer's own :func:`mtlbench.trainer.optimizer_step`.

How the methods use the contract (each needs no change to the trainer)::

    # DWA: epoch-level loss history
    def on_epoch_end(self, epoch, losses):      # losses: mean unweighted loss per task
        self.history[epoch] = losses            # kept in extra_state for resume
        return {"weight/" + t: w for t, w in self.weights.items()}

    # GradNorm: its own learnable weights and optimiser, a custom backward
    def optimizers(self):
        return [OptimizerSpec("model", self.param_groups()),
                OptimizerSpec("task_weights", [{"params": [self.w]}], kind="adam",
                              lr=self.cfg.weight_lr, weight_decay=0.0, scheduled=False)]
    def backward(self, out):
        ...  # network gradients of Σ w_i L_i, and w.grad from L_grad

    # OKD-MTL: N single-task networks beside the multi-task one
    def build(self):
        self.model = self.make_network(self.task_names)                 # deployable
        self.stl = TaskNetworks({t: self.make_network([t]) for t in self.task_names})

    # KD-MTL: frozen teachers from an earlier `stl` run (ctx.run.require("stl", ...))

    # Cross-Stitch: one network per task, linked layer by layer
    def deployable(self):
        return self.model                        # all N stitched networks
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from .tasks import Task


# ---------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------

@dataclass
class Features:
    """What an encoder returns.

    ``layers``: per-layer features, each ``(B, C_l, h_l, w_l)`` (empty unless
    asked for). ``final``: the final features, one tensor shared by every task,
    or a dict ``{task: tensor}`` for encoders with task-specific paths (MTAN).
    """

    layers: list[torch.Tensor]
    final: torch.Tensor | dict[str, torch.Tensor]

    def for_task(self, task: str) -> torch.Tensor:
        return self.final[task] if isinstance(self.final, dict) else self.final


class Encoder(nn.Module):
    """A backbone encoder, runnable whole or layer by layer.

    Subclasses implement ``begin``, ``layer``, ``layer_feature`` and ``end``;
    ``forward`` strings them together.  ``num_layers`` and ``layer_channels``
    describe the per-layer features (AFD distils over them).
    """

    num_layers: int = 0
    layer_channels: list[int] = []
    out_channels: int = 0
    #: whether linking the states of several encoders between layers is meaningful
    supports_stitching: bool = True

    def begin(self, x: torch.Tensor) -> Any:
        """Input image -> the state fed to layer 0."""
        raise NotImplementedError

    def layer(self, i: int, state: Any) -> Any:
        """Run layer ``i`` on ``state``."""
        raise NotImplementedError

    def layer_feature(self, state: Any) -> torch.Tensor:
        """The ``(B, C, h, w)`` feature map of a state (after a layer)."""
        raise NotImplementedError

    def end(self, state: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        """The last state -> final features (``Features.final``)."""
        raise NotImplementedError

    def mix_states(self, states: Sequence[Any], weights: torch.Tensor) -> list[Any]:
        """Linear combinations of the states of several encoders (Cross-Stitch).

        ``weights[i, j]`` is the share of network ``j`` in network ``i``'s new
        state.  The default handles states that are tensors.
        """
        stacked = torch.stack(list(states), 0)
        mixed = torch.einsum("ij,j...->i...", weights.to(stacked.dtype), stacked)
        return list(mixed.unbind(0))

    def forward(self, x: torch.Tensor, return_layers: bool = False) -> Features:
        state = self.begin(x)
        layers = []
        for i in range(self.num_layers):
            state = self.layer(i, state)
            if return_layers:
                layers.append(self.layer_feature(state))
        return Features(layers, self.end(state))

    def compile_units(self) -> list[nn.Module]:
        """The submodules ``train.compile`` compiles one by one (``nn.Module.compile``).

        Each must be *called* as a module in ``begin``/``layer``/``end`` (its
        ``__call__`` is what gets compiled), so whole-encoder ``forward`` is no
        use for encoders run layer by layer.  Default: none, the encoder runs
        eagerly (the heads are still compiled).  Repeated blocks of one class
        share their compiled code.
        """
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by every task (all of the encoder's by default)."""
        return [p for p in self.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer's parameters (GradNorm's W)."""
        raise NotImplementedError


class BackboneFactory:
    """A backbone plugin: builds encoders and task heads of one family."""

    Config: ClassVar[type]
    summary: ClassVar[str] = ""
    #: input sizes must be multiples of this
    size_multiple: ClassVar[int] = 1
    #: config overrides that keep the architecture but shrink it, for fast
    #: contract tests (e.g. narrower heads); never used by real runs
    test_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: Any, tasks: dict[str, Task]):
        self.cfg = cfg
        self.tasks = tasks

    def encoder(self, tasks: Sequence[str]) -> Encoder:
        """A new encoder serving ``tasks`` (task-specific paths, if any, for those)."""
        raise NotImplementedError

    def head(self, task: Task) -> nn.Module:
        """A new head: ``head(final_features, out_size) -> (B, task.channels, H, W)``."""
        raise NotImplementedError

    def pretraining_model(self, objective: dict) -> nn.Module:
        """A module for ``mtlbench pretrain`` (:mod:`mtlbench.pretrain`): ``model(images, generator)``
        returns the pretraining loss of a batch, ``model.encoder_state_dict()`` the encoder's weights
        in the form this backbone's ``pretraining`` option loads. ``objective``: the recipe's options."""
        from .errors import UserError

        raise UserError(f"backbone {type(self).__name__} has no pretraining objective",
                        hint="pretrain a backbone that defines pretraining_model (vit_tiny)")

    def mtan_encoder(self, tasks: Sequence[str]) -> Encoder:
        """An encoder with MTAN's per-task attention (Liu et al., CVPR 2019) over this backbone's
        shared network, for the ``mtan`` architecture.  A backbone without such a variant leaves
        this unimplemented, and MTAN is undefined on it."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """What the run's record should say about where the weights came from (e.g. the
        pretraining artefact's identity); empty when they start from scratch."""
        return {}

    def default_amp(self, device_type: str) -> str:
        """``"bf16"`` or ``"fp32"``: what ``train.amp: auto`` means for this backbone."""
        return "bf16" if device_type == "cuda" else "fp32"

    def default_channels_last(self, device_type: str) -> bool:
        return False

    def check_image_size(self, size: Sequence[int]) -> None:
        from .errors import UserError

        m = self.size_multiple
        if any(int(s) % m for s in size):
            raise UserError(
                f"dataset.image_size {list(size)} is not divisible by {m}, which this backbone needs",
                hint=f"choose sizes that are multiples of {m}, e.g. --set dataset.image_size=[96,128]")


# ---------------------------------------------------------------------------
# architectures: the networks they build
# ---------------------------------------------------------------------------

class TaskModel(nn.Module):
    """What an architecture builds: ``forward(x) -> {task: prediction}``, and what weightings ask of it.

    Besides ``forward``, a task model has ``heads`` (``{task: head}``, each head reached by its
    task alone) and ``forward_with_final(x) -> (predictions, {task: the final features its head
    read})``.  The hooks below have defaults for a model whose every non-head parameter is shared.
    """

    #: whether every task's head reads one and the same final feature tensor (the gradient
    #: methods' ``grad_on: features`` needs it)
    shared_representation: bool = False

    def _head_ids(self) -> set[int]:
        return {id(p) for h in self.heads.values() for p in h.parameters()}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters outside the heads that several tasks' losses reach: where the
        gradient methods aggregate the tasks' gradients (empty: nothing is shared)."""
        heads = self._head_ids()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in heads]

    def task_specific_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters outside the heads that one task's loss alone reaches (MTAN's
        attention modules, single-task networks' encoders): each gets its own task's gradient."""
        shared = {id(p) for p in self.shared_parameters()} | self._head_ids()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in shared]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer's parameters (GradNorm's W); empty when nothing is shared."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Optimiser groups of some of the model's parameters with options of their own (e.g.
        Cross-Stitch's stitch matrices with their ``lr_mult``); :meth:`Method.network_groups`
        splits them off the network's group.  Default: none."""
        return []

    def independent_parts(self) -> list[list[nn.Parameter]] | None:
        """Sets of parameters that share nothing (single-task networks): ``train.grad_clip``
        bounds each one's gradient on its own.  None: the model is one system."""
        return None

    def epoch_logs(self) -> dict[str, Any]:
        """Scalars or small matrices to record after every epoch (Cross-Stitch's α)."""
        return {}

    def info(self) -> dict[str, Any]:
        """What the run record's ``method_info`` should say about the architecture."""
        return {}


class MultiTaskNet(TaskModel):
    """An encoder and one head per task: ``forward(x) -> {task: prediction}``.

    Used for the multi-task model (all tasks) and for single-task networks
    (one task) alike.  As a :class:`TaskModel`, the encoder says what is shared
    (``Encoder.shared_parameters``: all of it, or MTAN's trunk without its
    attention modules).
    """

    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.encoder(x, return_layers=return_features)
        size = x.shape[-2:]
        preds = {t: head(feats.for_task(t), size) for t, head in self.heads.items()}
        return (preds, feats) if return_features else preds

    def forward_with_final(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(predictions, {task: the final features its head read})``: for methods that take
        gradients at the shared representation (GradNorm, the gradient methods)."""
        feats = self.encoder(x)
        size = x.shape[-2:]
        z = {t: feats.for_task(t) for t in self.heads}
        return {t: head(z[t], size) for t, head in self.heads.items()}, z

    @property
    def shared_representation(self) -> bool:
        return not self.task_specific_parameters()

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.shared_parameters() if p.requires_grad]

    def task_specific_parameters(self) -> list[nn.Parameter]:
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in shared]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self.encoder.last_shared_parameters()


class TaskNetworks(TaskModel):
    """Independent networks, one per task, presented as one multi-task model.

    As a :class:`TaskModel`: nothing is shared; each network is an independent part."""

    def __init__(self, nets: dict[str, MultiTaskNet]):
        super().__init__()
        self.nets = nn.ModuleDict(nets)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for net in self.nets.values():
            out.update(net(x))
        return out

    @property
    def task_names(self) -> list[str]:
        return [t for net in self.nets.values() for t in net.task_names]

    @property
    def heads(self) -> dict[str, nn.Module]:
        return {t: h for net in self.nets.values() for t, h in net.heads.items()}

    def forward_with_final(self, x: torch.Tensor):
        preds, z = {}, {}
        for net in self.nets.values():
            p, f = net.forward_with_final(x)
            preds.update(p)
            z.update(f)
        return preds, z

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return []

    def independent_parts(self) -> list[list[nn.Parameter]]:
        return [[p for p in net.parameters() if p.requires_grad] for net in self.nets.values()]


@dataclass
class ArchitectureConfig:
    """Base of architecture configs (no options)."""


class Architecture:
    """An architecture plugin: how the task networks share (see "Architectures" above).

    ``Config``: its options, validated in the ``method`` section beside the method's own
    (their names must not clash); ``build`` makes the :class:`TaskModel` for ``task_names``
    from the backbone factory's encoders and heads.  A pair that cannot be built (Cross-Stitch
    on encoders that cannot be stitched, MTAN on a backbone without an MTAN variant) raises a
    :class:`~mtlbench.errors.UserError` saying "unsupported" and why.
    """

    Config: ClassVar[type] = ArchitectureConfig
    summary: ClassVar[str] = ""

    def __init__(self, cfg: Any = None):
        self.cfg = cfg if cfg is not None else self.Config()

    def build(self, backbone: "BackboneFactory", tasks: dict[str, Task],
              task_names: Sequence[str]) -> TaskModel:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------

@dataclass
class MethodConfig:
    """Base of method configs (no options)."""


@dataclass
class StepOutput:
    """What a method's ``training_step`` returns.

    ``losses``: the unweighted loss of each task (for history and hooks);
    ``loss``: the scalar the default ``backward`` differentiates;
    ``logs``: scalars to record for this step (task weights, extra terms);
    ``extra``: anything the method's own ``backward`` needs.
    """

    losses: dict[str, torch.Tensor]
    loss: torch.Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerSpec:
    """One optimiser a method needs; the trainer builds, zeroes, clips, steps, schedules
    and checkpoints it (see "The step rule" above).

    ``groups``: torch parameter groups (dicts with ``"params"``, optionally ``"lr"``,
    ``"weight_decay"`` and ``"lr_mult"``: this group's learning rate as a multiple of
    the optimiser's).  ``kind="default"``: the run's optimiser (``train.optimizer``,
    ``train.lr``, ``train.weight_decay``); otherwise ``"adam"``, ``"adamw"`` or
    ``"sgd"`` with this spec's ``lr`` / ``weight_decay`` / ``kwargs`` (falling back to
    the run's values where None).  ``scheduled``: whether ``train.scheduler`` applies;
    it spans the run's own epochs, or with ``schedule_leading`` the method's leading
    epochs too (OKD-MTL's single-task networks, which also train in its warm-up).
    ``after_update``: stepped after ``after_step`` instead of with the others, for
    parameters whose gradient is only known once the model has stepped (FAMO's
    logits: from the losses of the updated model on the same batch); the method
    sets their ``.grad`` in ``after_step``.  ``name`` keys its state in checkpoints.
    """

    name: str
    groups: list[dict]
    kind: str = "default"
    lr: float | None = None
    weight_decay: float | None = None
    scheduled: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    schedule_leading: bool = False
    after_update: bool = False

    def parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g["params"]]


@dataclass
class FigureSpec:
    """A figure a method (or the core) draws from run records (``mtlbench plot --kind NAME``).

    ``draw(records, out_path, **options) -> path written``; ``select(records)``: the
    records to draw when none are named; ``options``: option name -> help text.
    """

    name: str
    summary: str
    draw: Callable[..., Path]
    select: Callable[[list[dict]], list[dict]] | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainContext:
    """What the trainer tells a method at the start of training.

    ``epochs``: the run's own schedule (``train.epochs``); ``leading_epochs``: the
    method's extra epochs before it (:meth:`Method.leading_epochs`); epoch indices
    given to the hooks count both (``0 .. leading_epochs + epochs - 1``).
    ``autocast()``: the run's autocast context, for a method's own forward passes
    (e.g. in ``after_step``).
    """

    epochs: int
    steps_per_epoch: int
    device: torch.device
    run: Any = None  # mtlbench.runs.RunContext: identity, results dir, loading other runs
    start_epoch: int = 0
    leading_epochs: int = 0
    autocast: Callable[[], Any] = field(default=lambda: _nullcontext())
    train_cfg: Any = None  # mtlbench.config.TrainConfig


def _nullcontext():
    from contextlib import nullcontext

    return nullcontext()


class Method(nn.Module):
    """Base class of method plugins; see the module docstring for the contract."""

    Config: ClassVar[type] = MethodConfig
    summary: ClassVar[str] = ""
    #: the row Δ is measured against when a run ends (the paper's equal-weight
    #: baseline sets it); at most one registered method should
    is_delta_reference: ClassVar[bool] = False
    #: the architecture this method always runs on, which makes it a *pair alias* (``stl``: equal
    #: weights on ``single_task``; its ``Config`` holds the architecture's options, and it has no
    #: ``method.architecture``); None: the run chooses (``method.architecture``, default ``hard``)
    fixed_architecture: ClassVar[str | None] = None
    #: of a pair alias: the method (weighting) it runs, so that the config resolver spells that
    #: weighting on ``fixed_architecture`` by the alias's name (one computation, one run identity)
    alias_of: ClassVar[str | None] = None
    #: verified under data-parallel training (:mod:`mtlbench.distributed`): its update over N
    #: processes equals the single-process update on the global batch.  The trainer refuses
    #: to run a method without it over several processes (:meth:`data_parallel_problem`).
    #: What the core does for every method: losses from :meth:`task_losses` carry the
    #: global batch's value, and every gradient is averaged over the ranks after
    #: ``backward``; a method that computes other batch means uses
    #: :func:`mtlbench.distributed.global_mean`, and one whose update is not linear in the
    #: gradients (the gradient methods, GradNorm) averages what it needs before using it.
    data_parallel: ClassVar[bool] = False

    def __init__(self, cfg: Any, tasks: dict[str, Task], backbone: BackboneFactory):
        super().__init__()
        from .architectures import architecture_for

        self.cfg = cfg
        self.tasks = dict(tasks)
        self.task_names = list(tasks)
        self.backbone = backbone
        #: the run's architecture plugin (not a module: it holds no parameters)
        self.architecture: Architecture = architecture_for(type(self), cfg)
        self.build()

    @classmethod
    def requires(cls, cfg: Any) -> list[str]:
        """Methods whose finished runs (same setting) this config needs first.

        KD-MTL returns ``["stl"]`` (its teachers); OKD-MTL with pretrained
        teachers likewise.  Sweeps order runs by it; the contract test trains
        them first.
        """
        return []

    @classmethod
    def data_parallel_problem(cls, cfg: Any) -> str | None:
        """Why this method with ``cfg`` cannot train over several processes (None: it can).

        Default: None when the class sets :attr:`data_parallel`; override to refuse some
        configurations only (e.g. an option whose data-parallel form is not implemented).
        A weighting on an architecture other than hard sharing (``method.architecture``) is
        refused: only the pair aliases (``stl``, ``cross_stitch``) were checked over several
        processes, and an architecture changes what a gradient method calls shared."""
        arch = getattr(cfg, "architecture", None)
        if cls.fixed_architecture is None and arch not in (None, "hard"):
            return (f"it runs on the {arch!r} architecture (method.architecture), and only hard "
                    f"sharing and the pair aliases were verified under data-parallel training")
        if cls.data_parallel:
            return None
        return "it has not been verified under data-parallel training (Method.data_parallel is not set)"

    # -- building ----------------------------------------------------------
    def make_network(self, task_names: Sequence[str]) -> MultiTaskNet:
        """A network with its own encoder and one head per task in ``task_names``."""
        enc = self.backbone.encoder(list(task_names))
        return MultiTaskNet(enc, {t: self.backbone.head(self.tasks[t]) for t in task_names})

    def make_model(self, task_names: Sequence[str] | None = None) -> TaskModel:
        """The run's architecture for ``task_names`` (default: all): the network a weighting trains."""
        names = list(self.task_names if task_names is None else task_names)
        return self.architecture.build(self.backbone, self.tasks, names)

    def build(self) -> None:
        """Build the trainable system. Default: the run's architecture over all tasks
        (:meth:`make_model`; hard sharing: one shared-encoder multi-task network)."""
        self.model = self.make_model()

    def deployable(self) -> nn.Module:
        """The multi-task model to evaluate, count and time: ``f(x) -> {task: pred}``."""
        return self.model

    def eval_models(self) -> dict[str, nn.Module]:
        """Models to evaluate: ``""`` is the deployable one; others are reported apart."""
        return {"": self.deployable()}

    def param_groups(self) -> list[dict]:
        """Parameter groups of the run's own optimiser (the default ``optimizers()``)."""
        return self.network_groups([p for p in self.parameters() if p.requires_grad])

    def network_groups(self, params: Sequence[nn.Parameter]) -> list[dict]:
        """``params`` as optimiser groups: one group, less the parameters the architecture puts in
        groups of their own (:meth:`TaskModel.parameter_groups`, e.g. Cross-Stitch's stitch
        matrices), which follow it.  A method overriding ``param_groups`` passes its network
        parameters through here, so any architecture's groups survive."""
        model = getattr(self, "model", None)
        special = model.parameter_groups() if isinstance(model, TaskModel) else []
        mine = {id(p) for p in params}
        taken = {id(p) for g in special for p in g["params"]}
        out = [{"params": [p for p in params if id(p) not in taken]}]
        for g in special:
            ps = [p for p in g["params"] if id(p) in mine]
            if ps:
                out.append({**g, "params": ps})
        return out

    def network_groups_except(self, *names: str) -> list[dict]:
        """:meth:`network_groups` of every trainable parameter of the method but its own ``names``
        (a learned task weighting's parameters, trained in a group or an optimiser of their own)."""
        return self.network_groups([p for n, p in self.named_parameters() if p.requires_grad and n not in names])

    def with_learned_group(self, name: str, lr: float | None) -> list[dict]:
        """The network's groups and, after them, a group of the method's parameter ``name`` alone,
        without weight decay, at ``lr`` (None: ``train.lr``), as UW and IMTL-L train their s."""
        group = {"params": [getattr(self, name)], "weight_decay": 0.0}
        if lr is not None:
            group["lr"] = lr
        return [*self.network_groups_except(name), group]

    def optimizers(self) -> list[OptimizerSpec]:
        """Every optimiser the method needs (see :class:`OptimizerSpec` and the step rule).

        Default: the run's optimiser over ``param_groups()``.  Every trainable
        parameter must belong to exactly one of them (the contract test checks).
        """
        return [OptimizerSpec("model", self.param_groups())]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Sets of parameters whose gradient norm ``train.grad_clip`` bounds, each on its own.

        Default: one set per optimiser, split along the architecture's independent parts
        (:meth:`TaskModel.independent_parts`: single-task networks), so a gradient spike in
        one network does not shrink the others' steps.  A method that trains independent
        networks of its own beside (OKD-MTL) returns one set per network.
        """
        model = getattr(self, "model", None)
        parts = model.independent_parts() if isinstance(model, TaskModel) else None
        groups = []
        for spec in self.optimizers():
            params = spec.parameters()
            if not parts:
                groups.append(params)
                continue
            ids = {id(p) for p in params}
            placed: set[int] = set()
            for part in parts:
                sub = [p for p in part if id(p) in ids]
                placed |= {id(p) for p in sub}
                if sub:
                    groups.append(sub)
            rest = [p for p in params if id(p) not in placed]
            if rest:
                groups.append(rest)
        return groups

    def compile_modules(self) -> list[nn.Module]:
        """The modules ``train.compile`` compiles: every encoder's ``compile_units`` and every
        :class:`MultiTaskNet`'s heads.  Override to compile something else (a method's own
        modules); the state dict is unchanged either way (``nn.Module.compile`` is in place)."""
        units: dict[int, nn.Module] = {}
        for m in self.modules():
            if isinstance(m, Encoder):
                units.update((id(u), u) for u in m.compile_units())
            elif isinstance(m, MultiTaskNet):
                units.update((id(h), h) for h in m.heads.values())
        return list(units.values())

    def leading_epochs(self, epochs: int) -> int:
        """Epochs the method trains before the run's ``epochs``-epoch schedule (default 0).

        OKD-MTL's warm-up of the single-task networks comes here, so its
        deployable network still gets the run's whole schedule, like the baseline.
        Optimisers with ``scheduled=True`` follow the schedule over the run's own
        epochs only; epochs before it are never reported (``reportable``).
        """
        return 0

    # -- the step ------------------------------------------------------------
    def task_losses(self, preds: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """Each task's loss on the batch.  Under data-parallel training each is the loss of the
        *global* batch (the same value on every rank; its gradient this rank's share, see
        :func:`mtlbench.distributed.global_means`), weighted by :meth:`Task.loss_count`."""
        losses = {t: self.tasks[t].loss(preds[t], batch[t]) for t in preds}
        from . import distributed

        if not distributed.active():
            return losses
        names = list(losses)
        counts = [self.tasks[t].loss_count(preds[t], batch[t]) for t in names]
        return dict(zip(names, distributed.global_means([losses[t] for t in names], counts)))

    def loss_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, float | torch.Tensor]:
        """Per-task loss weights for this step (default: 1 for every task)."""
        return {t: 1.0 for t in losses}

    def training_step(self, batch: dict) -> StepOutput:
        preds = self.model(batch["image"])
        losses = self.task_losses(preds, batch)
        weights = self.loss_weights(losses)
        total = sum(weights[t] * losses[t] for t in losses)
        logs = {f"weight/{t}": float(w.detach()) if isinstance(w, torch.Tensor) else float(w)
                for t, w in weights.items() if not (isinstance(w, float) and w == 1.0)}
        return StepOutput(losses=losses, loss=total, logs=logs)

    def backward(self, out: StepOutput) -> None:
        out.loss.backward()

    # -- hooks ---------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch; must cope with any epoch (a resumed run starts mid-way)."""

    def after_step(self, step: int, batch: dict) -> dict[str, float]:
        """After the optimisers and schedulers stepped; ``batch`` is this step's batch."""
        return {}

    def on_epoch_end(self, epoch: int, losses: dict[str, float]) -> dict[str, Any]:
        """``losses``: the epoch's mean unweighted training loss per task."""
        return {}

    def reportable(self, epoch: int) -> bool:
        """Whether ``epoch``'s metrics may be reported (the trainer already excludes
        ``leading_epochs``; a method may exclude more)."""
        return True

    @classmethod
    def figures(cls) -> dict[str, FigureSpec]:
        """Figures this method draws from its run records (``mtlbench plot --list``)."""
        return {}

    # -- state ---------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Non-parameter state to checkpoint (histories); optimisers are the trainer's."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def summary_info(self) -> dict[str, Any]:
        """Anything to add to the run record at the end (e.g. final weights)."""
        return {}

    # -- the architecture's records (the trainer merges them with the method's) --------
    def architecture_logs(self) -> dict[str, Any]:
        """The architecture's epoch logs (:meth:`TaskModel.epoch_logs`), recorded beside
        ``on_epoch_end``'s."""
        model = getattr(self, "model", None)
        return model.epoch_logs() if isinstance(model, TaskModel) else {}

    def architecture_info(self) -> dict[str, Any]:
        """The architecture's part of ``method_info`` (:meth:`TaskModel.info`), beside
        ``summary_info``'s."""
        model = getattr(self, "model", None)
        return model.info() if isinstance(model, TaskModel) else {}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def config_fields(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
