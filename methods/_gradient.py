"""Shared machinery of the gradient-based MTL methods: per-task gradients, a TorchJD aggregator, ``.grad``.

The methods in ``pcgrad.py``, ``mgda.py``, ``cagrad.py``, ``imtl_g.py``,
``nash_mtl.py``, ``aligned_mtl.py``, ``upgrad.py``, ``dualproj.py`` and
``graddrop.py`` are small plugins over :class:`GradientMethod`: each picks a
TorchJD aggregator (``torchjd.aggregation``) and its options.  This module does
the rest, once.  (The leading underscore keeps the registry from importing it
as a plugin.)

One step, for tasks i = 1..m with losses L_i, shared features z and heads h_i:

1. ``training_step``: the forward of the multi-task network, keeping z.
2. ``backward``, stage 1: for each task, ``autograd.grad(L_i, [z_i, θ_{h_i}])``
   (each head traversed once): head i's parameters get task i's plain gradient
   (a head is reached by its own task only, so that *is* its gradient of Σ L_i),
   or, for a method whose definition back-propagates Σ α_i L_i (Nash-MTL:
   :meth:`GradientMethod.head_weights`), α_i times it; ∂L_i/∂z_i is kept.
3. stage 2, by ``grad_on``:

   * ``params`` (the methods as published): the Jacobian of (L_1..L_m) with
     respect to the shared parameters θ_s (the architecture's
     ``TaskModel.shared_parameters()``: on hard sharing ``Encoder.shared_parameters()``;
     on Cross-Stitch the stitch matrices and every task's encoder; on single-task
     networks none, so the gradient methods are undefined there and refuse),
     one row per task, by back-propagating the m feature gradients through the
     encoder (``torchjd.autojac.jac`` with ``jac_outputs``: at once, vectorised
     with ``torch.vmap``, or one task after another; ``jac_chunk_size``); the aggregator turns J (m x |θ_s|) into the shared
     parameters' gradient.  Parameters outside the heads and ``shared_parameters()``
     (MTAN's attention modules) are task-specific: they get the sum of the rows,
     i.e. their own task's gradient.  Cost: m encoder backward passes.
   * ``features`` (the cheap "rep-grad" variant of LibMTL; MGDA-UB, Sener and
     Koltun 2018, §3.3): J_z = [∂L_i/∂z] (m x |z|, the whole batch flattened) is
     aggregated into one feature gradient g_z, back-propagated through the
     encoder once: the encoder's gradient is ∂⟨z, g_z⟩/∂θ.  Cost: about the
     baseline's.  Needs one shared representation (``TaskModel.shared_representation``):
     on encoders with task-specific paths (MTAN: ``Features.final`` is a dict per
     task) and on Cross-Stitch (each head reads its own network) building the
     method says "unsupported"; use ``grad_on: params`` there.

Aggregation runs in float32 whatever the autocast dtype.  For aggregators that
weight J's rows by a function of the Gramian G = J Jᵀ (most of them), G is
summed block by block over the parameter tensors and each block's gradient is
``weights @ J_block``, so the concatenated J is never formed (TorchJD's
``jac_to_grad(..., optimize_gramian_computation=True)`` does the same); other
aggregators (Nash-MTL, GradDrop) see the concatenated matrix.

Logs per step (floats): ``weight/<task>`` (where the aggregator weights rows),
``cos/<a>-<b>`` the cosine similarity of two tasks' gradients on the shared
part (the standard conflict diagnostic; on θ_s or on z by ``grad_on``),
``grad_norm/<task>`` and ``grad_norm/aggregated`` (the norm of the aggregated
shared gradient, in the same space).

Why not TorchJD's ``autogram.Engine`` (the Gramian without the Jacobian)?  Its
batched mode excludes BatchNorm (the DeepLab backbones) and modules that use
their parameters outside their own ``forward`` (timm's ViT position
embedding), and the Jacobian is needed anyway by the aggregators that are not
Gramian-based and for the per-task norms; on ViT-tiny J is m x 5.5M floats
(66 MB for three tasks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, ClassVar

import torch
from torch import nn

from mtlbench import distributed
from mtlbench.api import Method, StepOutput
from mtlbench.config import option
from mtlbench.errors import UserError

GRAD_ON = ("params", "features")
SOLVERS_HINT = 'pip install -e ".[solvers]"'


@dataclass
class GradientConfig:
    """Options every gradient-based method has."""

    # params: Jacobian on the shared parameters (as published) | features: on the shared representation (rep-grad)
    grad_on: str = option("params", choices=GRAD_ON)
    # params only: tasks back-propagated together (0: auto, all via torch.vmap on CUDA in fp32, else one by one; k: k at once)
    jac_chunk_size: int = option(0, ge=0)


def missing_packages(names) -> list[str]:
    """The importable module names among ``names`` that are not installed."""
    return [n for n in names if find_spec(n) is None]


def cosine_matrix(gramian: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities from a Gramian ``G = J Jᵀ`` (0 where a gradient is zero)."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gramian / denom.clamp_min(1e-30), torch.zeros_like(gramian))


class GradientMethod(Method):
    """Base of the gradient-based methods: aggregate the tasks' gradients with a TorchJD aggregator.

    A plugin sets ``Config`` (a :class:`GradientConfig` subclass), ``summary``,
    ``requires_packages`` (optional modules its aggregator needs) and
    implements :meth:`make_aggregator`.
    """

    Config: ClassVar[type] = GradientConfig
    # data parallel: the Jacobian rows (grad_on=params) are averaged over the processes before
    # aggregation; with grad_on=features the Gramian is summed over the processes' shards
    # (Gramian-based aggregators only; the others are refused when built)
    data_parallel = True
    #: modules the aggregator needs beyond torchjd (checked when the method is built)
    requires_packages: ClassVar[tuple[str, ...]] = ()

    # -- the head rule -------------------------------------------------------
    def head_weights(self, weights: torch.Tensor | None) -> torch.Tensor | None:
        """The factor on each task's gradient for its own parameters (its head and, on MTAN, its
        attention modules), given this step's aggregation ``weights``; None: the plain gradient.

        Most methods define the update on the shared parameters only, and a task's own
        parameters get its plain gradient (the gradient of Σ L_i). A method whose definition
        back-propagates Σ α_i L_i overrides this (Nash-MTL)."""
        return None

    # -- building ------------------------------------------------------------
    def make_aggregator(self):
        """The ``torchjd.aggregation.Aggregator`` this method uses, built from ``self.cfg``."""
        raise NotImplementedError

    def build(self) -> None:
        super().build()
        name = getattr(type(self), "registry_name", type(self).__name__)
        missing = missing_packages(self.requires_packages)
        if missing:
            raise UserError(
                f"method {name} is not supported in this environment: its TorchJD aggregator needs "
                f"the optional package{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                "(not installed)",
                hint=f"install the solvers extra: {SOLVERS_HINT}")
        where = self._network_name()
        if not self._shared_parameters():
            raise UserError(f"method {name} is unsupported on {where}: it has no trainable shared "
                            "parameters to aggregate gradients on (nothing is shared, so there is no "
                            "conflict between the tasks' gradients to resolve)",
                            hint="gradient-based methods need a shared, trainable encoder: use "
                                 "--set method.architecture=hard (or cross_stitch, mtan)")
        if self.cfg.grad_on == "features" and not self.model.shared_representation:
            raise UserError(
                f"method {name} with method.grad_on=features is unsupported on {where}: "
                "its tasks' heads read task-specific final features (one tensor per task), so there "
                "is no single shared representation to aggregate gradients on",
                hint="use --set method.grad_on=params (the Jacobian on the shared parameters), "
                     "or hard sharing on a backbone with one shared representation (e.g. --backbone deeplabv3)")
        # Not a submodule: aggregators hold no parameters, and state_dict stays the network's.
        object.__setattr__(self, "aggregator", self.make_aggregator())
        if self.cfg.grad_on == "features" and distributed.active():
            from torchjd.aggregation import GramianWeightedAggregator

            if not isinstance(self.aggregator, GramianWeightedAggregator):
                raise UserError(
                    f"method {name} with method.grad_on=features cannot train over "
                    f"{distributed.world().size} processes: its aggregator "
                    f"({type(self.aggregator).__name__}) is not a function of the Gramian of the "
                    "feature gradients, so it would need every sample's feature gradients in one "
                    "process (not implemented)",
                    hint="use --set method.grad_on=params (the Jacobian on the shared parameters, "
                         "averaged over the processes), or train in one process")

    def _network_name(self) -> str:
        """The network the method runs on, for messages: architecture and encoder."""
        arch = getattr(type(self.architecture), "registry_name", type(self.architecture).__name__)
        enc = getattr(self.model, "encoder", None)
        return f"the {arch} architecture" + (f" ({type(enc).__name__} encoder)" if enc is not None else "")

    def _shared_parameters(self) -> list[nn.Parameter]:
        """The parameters the tasks' gradients are aggregated on: the architecture's shared ones
        (:meth:`mtlbench.api.TaskModel.shared_parameters`; hard sharing: ``Encoder.shared_parameters``)."""
        seen: set[int] = set()
        out = []
        for p in self.model.shared_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def _encoder_specific_parameters(self) -> list[nn.Parameter]:
        shared = {id(p) for p in self._shared_parameters()}
        return [p for p in self.model.task_specific_parameters() if id(p) not in shared]

    # -- the step --------------------------------------------------------------
    def training_step(self, batch: dict) -> StepOutput:
        x = batch["image"]
        preds, z = self.model.forward_with_final(x)  # z: each task's features, for backward
        losses = self.task_losses(preds, batch)
        # The combined loss depends on the gradients: it is known only in backward.
        return StepOutput(losses=losses, loss=None,
                          extra={"features": z, "vmap_ok": x.device.type != "cpu"
                                 and not torch.is_autocast_enabled(x.device.type)})

    def backward(self, out: StepOutput) -> None:
        z = out.extra["features"]
        m = len(self.task_names)
        # Unique feature tensors (one for shared encoders, one per task for MTAN).
        reps: list[torch.Tensor] = []
        rep_of: list[int] = []
        for t in self.task_names:
            k = next((j for j, r in enumerate(reps) if r is z[t]), None)
            if k is None:
                reps.append(z[t])
                k = len(reps) - 1
            rep_of.append(k)
        if self.cfg.grad_on == "features" and len(reps) > 1:
            raise UserError("grad_on=features is unsupported with task-specific final features "
                            "(Features.final is a dict of distinct tensors)",
                            hint="use --set method.grad_on=params")

        # this step's loss values, for aggregators that normalise by them (MGDA's loss, loss+)
        self.step_losses = torch.stack([out.losses[t].detach().float().reshape(()) for t in self.task_names])
        # Stage 1: each task's gradient w.r.t. its head and its features; each head once.
        feat_grads: list[torch.Tensor] = []
        head_grads: list[tuple[list, tuple]] = []
        for i, t in enumerate(self.task_names):
            head = [p for p in self.model.heads[t].parameters() if p.requires_grad]
            zi = z[t]
            grads = torch.autograd.grad(out.losses[t], [zi, *head], retain_graph=True, allow_unused=True)
            head_grads.append((head, grads[1:]))
            feat_grads.append(torch.zeros_like(zi) if grads[0] is None else grads[0])

        if self.cfg.grad_on == "features":
            rep = reps[0]
            J = torch.stack(feat_grads).flatten(1).float()
            (g,), weights, gram = self.aggregate([J], sharded_columns=distributed.active())
            torch.autograd.backward(rep, g.view_as(rep).to(rep.dtype))
            own = self.head_weights(weights)
            if distributed.active():
                # for the logs: the norm of the global batch's aggregated feature gradient (this
                # process's columns are its shard's, N times the global ones: global_means)
                n = distributed.world().size
                g = distributed.all_reduce_sum(g.detach().pow(2).sum()).sqrt().reshape(1) / n
        else:
            from torchjd.autojac import jac

            shared = self._shared_parameters()
            specific = self._encoder_specific_parameters()
            # jac_outputs[k][i]: task i's gradient w.r.t. representation k (0 if task i does not use it)
            jac_outputs = [torch.stack([feat_grads[i] if rep_of[i] == k else torch.zeros_like(r)
                                        for i in range(m)]) for k, r in enumerate(reps)]
            inputs = [*shared, *specific]
            jacs = jac(reps, inputs, jac_outputs=jac_outputs, retain_graph=False,
                       parallel_chunk_size=self._chunk_size(out.extra.get("vmap_ok", False)))
            blocks = [j.reshape(m, -1).float() for j in jacs[:len(shared)]]
            # data parallel: each process's rows are its share of the global batch's (N times,
            # see mtlbench.distributed.global_means); their mean is the global Jacobian
            distributed.all_reduce_mean_(blocks)
            grads, weights, gram = self.aggregate(blocks)
            _accumulate(shared, [g.view_as(p).to(p.dtype) for g, p in zip(grads, shared)])
            own = self.head_weights(weights)
            # Task-specific encoder parameters: only their task's row is non-zero; the sum is
            # that task's plain gradient (weighted by the head rule's factors, if any).
            if own is None:
                _accumulate(specific, [j.sum(0).to(p.dtype) for j, p in zip(jacs[len(shared):], specific)])
            else:
                w = own.to(jacs[0].device, torch.float32)
                _accumulate(specific, [torch.tensordot(w, j.float(), dims=1).to(p.dtype)
                                       for j, p in zip(jacs[len(shared):], specific)])
            g = torch.cat([x.reshape(-1) for x in grads])
        for i, (head, grads_i) in enumerate(head_grads):
            if own is not None:
                grads_i = tuple(None if gi is None else gi * own[i].to(gi.dtype) for gi in grads_i)
            _accumulate(head, grads_i)
        out.logs.update(self._logs(weights, gram, g))

    def _chunk_size(self, vmap_ok: bool) -> int | None:
        """Rows of the Jacobian back-propagated together (``None``: all, in one vmapped pass).

        ``jac_chunk_size: 0`` (auto) vectorises over the tasks with ``torch.vmap``
        on CUDA in float32 (TorchJD's default), and otherwise goes one task at a
        time, a loop of plain backward passes, which always works:

        * under autocast torch.vmap fails on the mixed-precision backward (on the
          CPU, deeplabv3 with bf16: "expected scalar type BFloat16 but found Float");
        * on the CPU torch.vmap has no batching rule for the CPU flash-attention
          backward and falls back to a per-sample loop, slower than the plain loop
          (timings: docs/BENCHMARKS.md).
        """
        if self.cfg.jac_chunk_size:
            return self.cfg.jac_chunk_size
        return None if vmap_ok else 1

    # -- aggregation -------------------------------------------------------------
    def aggregate(self, blocks: list[torch.Tensor], sharded_columns: bool = False
                  ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """Aggregate a Jacobian given as column blocks ``[m, n_k]`` (float32).

        Returns each block's aggregated gradient ``[n_k]``, the weights of J's
        rows if the aggregator combines rows linearly (else None) and the
        Gramian ``J Jᵀ``.  ``sharded_columns`` (data parallel, ``grad_on=features``): each
        process holds its shard's columns, N times the global batch's; the Gramian is
        then summed over the processes (and divided by N²), and each process's blocks
        are weighted by the global weights (Gramian-based aggregators only).
        """
        from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

        agg = self.aggregator
        if sharded_columns and not isinstance(agg, GramianWeightedAggregator):  # refused in build already
            raise UserError(f"{type(agg).__name__} cannot aggregate columns sharded over processes")
        gram = self.gramian(blocks, sharded_columns)
        if isinstance(agg, GramianWeightedAggregator):
            weights = agg.gramian_weighting(gram)
            return [weights.to(b.dtype) @ b for b in blocks], weights, gram
        J = torch.cat(blocks, 1) if len(blocks) > 1 else blocks[0]
        if isinstance(agg, WeightedAggregator):
            weights = agg.weighting(J)
            vec = weights.to(J.dtype) @ J
        else:
            weights = None
            vec = agg(J)
        return list(vec.split([b.shape[1] for b in blocks])), weights, gram

    @staticmethod
    def gramian(blocks: list[torch.Tensor], sharded_columns: bool = False) -> torch.Tensor:
        """``J Jᵀ`` summed over the column blocks; with ``sharded_columns`` (see :meth:`aggregate`)
        the global batch's, from every process's shard (an override of :meth:`aggregate` that
        weights J's rows from the Gramian takes it from here)."""
        gram = sum(b @ b.T for b in blocks)
        if sharded_columns:
            gram = distributed.all_reduce_sum(gram) / float(distributed.world().size) ** 2
        return gram

    def _logs(self, weights: torch.Tensor | None, gram: torch.Tensor, g: torch.Tensor) -> dict[str, float]:
        names = self.task_names
        m = len(names)
        cos = cosine_matrix(gram.detach())
        pairs = [(a, b) for a in range(m) for b in range(a + 1, m)]
        parts = [gram.diagonal().clamp_min(0).sqrt(), g.detach().float().norm().reshape(1)]
        if pairs:
            parts.append(torch.stack([cos[a, b] for a, b in pairs]))
        if weights is not None:
            parts.append(weights.detach().reshape(-1))
        values = torch.cat([p.float().to(gram.device) for p in parts]).tolist()  # one device sync
        logs = {f"grad_norm/{t}": values[i] for i, t in enumerate(names)}
        logs["grad_norm/aggregated"] = values[m]
        k = m + 1
        for a, b in pairs:
            logs[f"cos/{names[a]}-{names[b]}"] = values[k]
            k += 1
        if weights is not None:
            logs.update({f"weight/{t}": values[k + i] for i, t in enumerate(names)})
        # Logs are strict JSON: a non-finite value (the trainer stops on non-finite gradients
        # anyway) is left out rather than written as NaN.
        return {key: v for key, v in logs.items() if math.isfinite(v)}

    def summary_info(self) -> dict[str, Any]:
        return {"aggregator": repr(self.aggregator), "grad_on": self.cfg.grad_on}


def _accumulate(params, grads) -> None:
    """Add ``grads`` into ``p.grad`` (``None`` entries skipped), as autograd would."""
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.detach().clone() if g.requires_grad else g
        else:
            p.grad.add_(g)
