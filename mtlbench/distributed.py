"""Data-parallel training over ``torch.distributed``: one run, N processes.

``torchrun --nproc-per-node N -m mtlbench run ...`` (or ``mtlbench run --nproc N``,
which launches the N processes itself) trains one run over N processes: gloo on the
CPU, NCCL on CUDA (process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``).  The run is the
single-process run, computed in pieces:

* the configured ``train.batch_size`` is the *global* batch; the trainer splits every
  global batch of the single-process order across the ranks (rank r takes samples
  ``r::N``), so concatenating the ranks' shards gives the single-process batch;
* every loss a method computes through :meth:`mtlbench.api.Method.task_losses` (or
  :func:`global_mean`) has, on every rank, the *value* of the loss on the global batch
  and, as gradient, this rank's share of that loss's gradient, scaled by N; the trainer
  then averages every gradient over the ranks (:func:`reduce_gradients`), so the
  update is the single-process update on the global batch.  Any function of the loss
  values (a loss weighting, a log, a ratio) thus gets its single-process value and
  gradient, by the chain rule;
* methods that need more (the gradient methods' Jacobian rows, GradNorm's gradient
  norms) average what they need with :func:`all_reduce_mean_` before using it;
* rank 0 alone writes records, step logs, checkpoints and progress, and evaluates
  (the other ranks receive its metrics, :func:`broadcast_object`).

Every rank draws from the same random streams (the same seed): a method's random
choices (RLW's weights, GradDrop's masks) are the same on every rank; dropout masks
are therefore drawn from the same stream on each rank's shard.

:class:`SyncBatchNorm` normalises with the statistics of the global batch (the
default under data parallelism, ``train.sync_batchnorm``).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .errors import UserError

#: the environment variables torchrun sets for every process
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: seconds a collective waits for the other ranks (rank 0 evaluates while they wait)
TIMEOUT_S = int(os.environ.get("MTLBENCH_DIST_TIMEOUT", "3600"))


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (``size == 1``: alone)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world() -> World:
    """The current process's :class:`World` (single-process unless :func:`init` ran)."""
    return _WORLD


def active() -> bool:
    return _WORLD.active


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or a single process)."""
    return _WORLD.is_main


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"the environment variable {name}={raw!r} is not an integer",
                        hint="launch data-parallel runs with torchrun or `mtlbench run --nproc N`") from None


def env_world() -> World | None:
    """The world torchrun's environment describes, or None when it describes none (or one process).

    An inconsistent environment (a rank without a world size, a rank outside it, no
    rendezvous address) is a :class:`UserError`."""
    present = [k for k in ("RANK", "WORLD_SIZE") if k in os.environ]
    if not present:
        return None
    if len(present) == 1:
        missing = "WORLD_SIZE" if present == ["RANK"] else "RANK"
        raise UserError(f"the environment sets {present[0]} but not {missing}: it describes no "
                        "consistent data-parallel world",
                        hint="launch data-parallel runs with torchrun or `mtlbench run --nproc N`, "
                             "or unset RANK and WORLD_SIZE for a single process")
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"inconsistent data-parallel world: RANK={rank}, WORLD_SIZE={size} "
                        "(the rank must be in 0..WORLD_SIZE-1)",
                        hint="launch data-parallel runs with torchrun or `mtlbench run --nproc N`")
    if size == 1:
        return None
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"a data-parallel world of {size} processes needs {' and '.join(missing)} "
                        "in the environment (the rendezvous address)",
                        hint="launch data-parallel runs with torchrun or `mtlbench run --nproc N`")
    return World(rank, size, local)


def init(device_type: str) -> World:
    """Join the process group torchrun's environment describes (gloo on CPU, NCCL on CUDA).

    Returns the world; a single process (no such environment) stays alone.  Idempotent."""
    global _WORLD
    env = env_world()
    if env is None:
        return _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != env.size or dist.get_rank() != env.rank:
            raise UserError(f"the process group ({dist.get_rank()} of {dist.get_world_size()}) does not "
                            f"match the environment (RANK={env.rank}, WORLD_SIZE={env.size})")
        _WORLD = World(env.rank, env.size, env.local_rank, dist.get_backend())
        return _WORLD
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed: data-parallel training is unavailable")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend, rank=env.rank, world_size=env.size,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    _WORLD = World(env.rank, env.size, env.local_rank, backend)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (after a run); the process is alone again."""
    global _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


# ---------------------------------------------------------------------------
# collectives (no-ops in a single process)
# ---------------------------------------------------------------------------

def comm_device() -> torch.device:
    """Where this backend's collectives take their tensors: NCCL's on this process's GPU."""
    if _WORLD.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor; ``t`` itself in a single process)."""
    if not active():
        return t
    import torch.distributed as dist

    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def all_reduce_mean_(tensors: Sequence[torch.Tensor], bucket: int = 1 << 24) -> None:
    """Average ``tensors`` over the ranks, in place, a few large flat buffers at a time."""
    if not active() or not tensors:
        return
    import torch.distributed as dist

    n = _WORLD.size
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for ts in groups.values():
        i = 0
        while i < len(ts):
            chunk, size = [], 0
            while i < len(ts) and (not chunk or size + ts[i].numel() <= bucket):
                chunk.append(ts[i])
                size += ts[i].numel()
                i += 1
            flat = torch.cat([t.reshape(-1) for t in chunk])
            dist.all_reduce(flat)
            flat.div_(n)
            offset = 0
            for t in chunk:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def mean_floats(values: dict[str, float]) -> dict[str, float]:
    """A dict of floats averaged over the ranks (same keys, in the same order, on every rank)."""
    if not active() or not values:
        return dict(values)
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=comm_device())
    all_reduce_mean_([t])
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not active():
        return obj
    import torch.distributed as dist

    box = [obj if _WORLD.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average every parameter's gradient over the ranks (the trainer, after each backward).

    A parameter with a gradient on some ranks and none on others gets zeros where it had
    none (its single-process gradient is the sum of the ranks' shares); one without a
    gradient anywhere keeps ``None`` (an optimiser skips it, as in a single process)."""
    if not active():
        return
    params = list({id(p): p for p in params}.values())
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=comm_device())
    has = all_reduce_sum(has)
    for p, h in zip(params, has.tolist()):
        if h > 0 and p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p, h in zip(params, has.tolist()) if h > 0])


# ---------------------------------------------------------------------------
# losses over the global batch
# ---------------------------------------------------------------------------

def global_means(values: Sequence[torch.Tensor], counts: Sequence[torch.Tensor | float]) -> list[torch.Tensor]:
    """Means over the global batch from each rank's means over its shard.

    ``values[i]``: a mean over ``counts[i]`` elements of this rank's shard (valid pixels,
    samples).  Returns, for each, a tensor whose value is the mean over the global batch,
    ``Σ_r c_r v_r / Σ_r c_r``, the same on every rank, and whose gradient is
    ``N · c_r / Σ_r c_r`` times ``values[i]``'s: averaged over the N ranks (as the trainer
    averages gradients), it is the gradient of the global mean.  One collective for all.
    A single process gets ``values`` back unchanged."""
    if not active() or not values:
        return list(values)
    n = _WORLD.size
    dev = values[0].device
    c = torch.stack([torch.as_tensor(ci, dtype=torch.float64, device=dev).reshape(()) for ci in counts])
    v = torch.stack([vi.detach().to(torch.float64).reshape(()) for vi in values])
    packed = all_reduce_sum(torch.cat([v * c, c]))
    k = len(values)
    sums, totals = packed[:k], packed[k:]
    means = torch.where(totals > 0, sums / totals.clamp_min(1.0), torch.zeros_like(sums))
    share = torch.where(totals > 0, n * c / totals.clamp_min(1.0), torch.zeros_like(c))
    out = []
    for i, vi in enumerate(values):
        local = vi * share[i].to(vi.dtype)
        out.append(local + (means[i].to(vi.dtype) - local).detach())
    return out


def global_mean(value: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """:func:`global_means` of one value (e.g. a distillation loss averaged over the shard's
    samples: ``global_mean(loss, batch_size)``)."""
    return global_means([value], [count])[0]


# ---------------------------------------------------------------------------
# batch normalisation over the global batch
# ---------------------------------------------------------------------------

class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch: in training, the mean and variance of every channel
    are those of all ranks' samples together, as one process would compute them; in eval
    mode it is plain BatchNorm (running statistics).  Works on every backend (gloo too,
    which ``torch.nn.SyncBatchNorm`` does not support).  Two collectives per layer and
    forward (the sum, then the squared deviations: the exact two-pass variance, not
    ``E[x²] − E[x]²``); gradients flow through both (``torch.distributed.nn``).

    Same parameters and buffers as :class:`torch.nn.BatchNorm2d`, so state dicts and
    checkpoints are interchangeable."""

    @property
    def synchronised(self) -> bool:
        """Whether a forward now normalises over every process's shard (a module that checks
        its batch size for BatchNorm, such as ASPP's image pooling, asks this)."""
        return self.training and active()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.synchronised:
            return super().forward(x)
        import warnings

        with warnings.catch_warnings():
            # deprecated in favour of a private module (_functional_collectives); still the
            # public differentiable all_reduce
            warnings.simplefilter("ignore", FutureWarning)
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device, dtype=torch.float64)
        packed = all_reduce(torch.cat([xf.sum(dims).double(), count]))
        total = packed[-1]
        mean = (packed[:-1] / total).float()
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = xf - mean.view(shape)
        var = (all_reduce(centred.pow(2).sum(dims).double()) / total).float()
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var.detach() * float(total / (total - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Replace every ``BatchNorm1d/2d/3d`` under ``module`` by :class:`SyncBatchNorm`, in place,
    keeping its parameters and buffers (the same tensors); returns how many were replaced."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats, device="meta")
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
            n += 1
        else:
            n += convert_sync_batchnorm(child)
    return n


def shard_batch_indices(indices: list[int], rank: int, size: int) -> list[int]:
    """This rank's share of one global batch: samples ``rank::size`` (in order)."""
    return indices[rank::size]


class ShardedBatchSampler(torch.utils.data.Sampler):
    """The global batches of ``batch_sampler`` (the single-process order), each cut to this
    rank's share (:func:`shard_batch_indices`)."""

    def __init__(self, batch_sampler, rank: int, size: int):
        self.batch_sampler, self.rank, self.size = batch_sampler, rank, size

    def __iter__(self):
        for batch in self.batch_sampler:
            yield shard_batch_indices(list(batch), self.rank, self.size)

    def __len__(self) -> int:
        return len(self.batch_sampler)

