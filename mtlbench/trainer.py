"""The trainer: one loop for every method, driven only through the method contract.

Every optimiser a method declares (:meth:`mtlbench.api.Method.optimizers`; the
run's own is AdamW with OneCycleLR by default, the paper's recipe) is built,
zeroed, clipped, stepped, scheduled and checkpointed here, by the step rule of
:mod:`mtlbench.api`.  bf16 autocast and channels_last when asked (or when the
backbone prefers them on the device), deterministic seeding, evaluation on the
val split, a checkpoint after every epoch, ``resume`` from the last one, and a
result record at the end.  A NaN or infinite loss, gradient norm, evaluation
metric or weight stops the run at once (:class:`Diverged`, exit code 2): the
last checkpoint (finite) is kept and no record is written.

:func:`train` runs the phases of :class:`Training` (set up or resume, the
epochs, the end); what a record holds, and how it and the run's logs are
written, is :mod:`mtlbench.records`.
"""
from __future__ import annotations

import math
import os
import platform
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from . import distributed
from .api import Method, TrainContext, count_parameters
from .config import ResolvedConfig
from .errors import UserError
from .models import assemble
from .progress import Progress
from .provenance import cpu_capability, processor_model
from .records import RunPaths, StepLog, atomic_torch_save, make_record, strict_json, write_record
from .reference import learned_block
from .registry import DATASETS
from .runs import RunContext, RunLock


class RunExists(Exception):
    """A record with the same identity exists (and ``force`` was not given)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(str(path))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"train.device {name!r} is not a device name",
                        hint="use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device {name!r}: CUDA is not available on this machine",
                        hint="use --device cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"train.device {name!r}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                        f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})", hint="use --device cuda or cuda:N")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"train.device {name!r}: mtlbench trains on cpu or cuda", hint="use auto, cpu, cuda or cuda:N")
    return dev


def nuisance_stream_seed(seed: int, nuisance_seed: int) -> int:
    """The seed of the random stream after initialisation in an A/A pair's run: a 63-bit
    integer mixed from both seeds (numpy's SeedSequence), so nearby pairs share no stream."""
    words = np.random.SeedSequence([int(seed), int(nuisance_seed), 0x6E756973]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def data_parallel_device(device: torch.device, name: str) -> torch.device:
    """Under data-parallel training on CUDA, process ``LOCAL_RANK`` trains on ``cuda:LOCAL_RANK``."""
    if not distributed.active() or device.type != "cuda":
        return device
    w = distributed.world()
    if device.index is not None and name not in ("auto", "cuda"):
        raise UserError(f"train.device {name!r} names one GPU, but the run has {w.size} processes "
                        "(each takes the GPU of its LOCAL_RANK)",
                        hint="use --device cuda (or auto) with torchrun; CUDA_VISIBLE_DEVICES picks the GPUs")
    n = torch.cuda.device_count()
    if w.local_rank >= n:
        raise UserError(f"process LOCAL_RANK={w.local_rank} has no GPU: this machine has {n}",
                        hint=f"start at most {n} processes per machine (torchrun --nproc-per-node {n})")
    return torch.device("cuda", w.local_rank)


def check_data_parallel(cfg: ResolvedConfig, n_train: int | None = None, size: int | None = None) -> None:
    """Refuse, with a :class:`UserError`, a run that cannot train over ``size`` processes (default:
    the current world's): a method not verified for it (:meth:`Method.data_parallel_problem`), a
    global batch that does not split evenly, or (given ``n_train``, the training samples) an epoch
    whose last batch leaves a process without samples."""
    w = distributed.world() if size is None else distributed.World(0, int(size))
    if not w.active:
        return
    from .registry import METHODS

    name = cfg.name("method")
    problem = METHODS.get(name).data_parallel_problem(cfg.method)
    if problem:
        raise UserError(f"method {name} cannot train over {w.size} processes: {problem}",
                        hint="train it in one process (plain `mtlbench run`, no torchrun or --nproc)")
    b = cfg.train.batch_size
    if b % w.size:
        raise UserError(f"train.batch_size {b} (the global batch) does not split evenly over {w.size} "
                        "processes", hint=f"use a batch size divisible by {w.size}, or another process count")
    if n_train is not None:
        n_batches = math.ceil(n_train / b)
        steps = min(n_batches, cfg.train.max_steps_per_epoch or n_batches)
        last = n_train - (n_batches - 1) * b
        if steps == n_batches and last < w.size:
            raise UserError(f"the last batch of every epoch holds {last} sample{'s' if last != 1 else ''} "
                            f"({n_train} training samples, batch {b}), fewer than the {w.size} processes: "
                            "a process would get none",
                            hint="choose a batch size whose remainder is 0 or at least the process count")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def peak_memory_mb(device: torch.device) -> dict:
    # ru_maxrss is in KiB on Linux: the process's lifetime peak resident set.
    mem = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        mem["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return mem


@dataclass
class Setup:
    """Everything built from a config, before training."""

    cfg: ResolvedConfig
    dataset: Any
    tasks: dict
    method: Method
    device: torch.device
    amp: str
    channels_last: bool
    train_set: Any = None
    val_set: Any = None
    factory: Any = None


def build(cfg: ResolvedConfig, *, with_data: bool = True) -> Setup:
    """Build dataset, tasks, backbone and method from a resolved config.

    With data, the data is checked and its splits opened first, so a missing
    directory or a bad file is reported before any model is built.
    """
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = data_parallel_device(resolve_device(tcfg.device), tcfg.device)
    seed_everything(cfg.seed)
    dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    splits = {}
    if with_data:
        # bad labels / NaN in the files: an error naming the file, before any model exists
        dataset.validate_for_training(log=lambda m: print(f"mtlbench: {m}", file=sys.stderr, flush=True))
        splits = {"train_set": dataset.split("train"), "val_set": dataset.split("val")}
        if len(splits["train_set"]) == 0:
            raise UserError(f"the train split of dataset {cfg.name('dataset')!r} is empty")
        seed_everything(cfg.seed)  # opening the data must not shift the models' initialisation
    dataset, tasks, factory, method = assemble(cfg, dataset)
    if distributed.active() and tcfg.sync_batchnorm:
        # the batch statistics of the global batch, as one process computes them
        distributed.convert_sync_batchnorm(method)
    amp = factory.default_amp(device.type) if tcfg.amp == "auto" else tcfg.amp
    cl = factory.default_channels_last(device.type) if tcfg.channels_last is None else tcfg.channels_last
    method.to(device)
    if cl:
        method.to(memory_format=torch.channels_last)
    if tcfg.compile:
        # Heads differ in shape and run in train and eval mode: more variants than dynamo's default 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for module in method.compile_modules():
            module.compile()
    return Setup(cfg, dataset, tasks, method, device, amp, bool(cl), factory=factory, **splits)


def autocast_ctx(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: dict, loader, device: torch.device, amp: str,
             channels_last: bool = False) -> dict[str, dict[str, float]]:
    """Run ``model`` over ``loader`` and return ``{task: {metric: value}}``."""
    was_training = model.training
    model.eval()
    metrics = {}
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        with autocast_ctx(device, amp):
            preds = model(batch["image"])
        for t, pred in preds.items():
            if t not in metrics:
                metrics[t] = tasks[t].new_metric()
            metrics[t].update(pred.float(), batch[t])
    model.train(was_training)
    return {t: {k: float(v) for k, v in m.compute().items()} for t, m in metrics.items()}


@torch.no_grad()
def inference_latency_ms(model: torch.nn.Module, sample: torch.Tensor, device, amp: str,
                         repeats: int = 5) -> float:
    """Median wall time of one forward pass on one image, in milliseconds."""
    was_training = model.training
    model.eval()
    x = sample[:1]
    times = []
    with autocast_ctx(device, amp):
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return float(np.median(times))


@dataclass
class TrainOptions:
    out: Path = Path("results")
    resume: bool = False
    force: bool = False
    quiet: bool = False
    on_epoch: Callable[[int, dict], None] | None = None  # test hook (e.g. to kill mid-run)
    on_step: Callable[[int, int], None] | None = None


def _fmt_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{t}={v:.4f}" for t, v in losses.items())


# ---------------------------------------------------------------------------
# optimisers: every one a method declares, owned by the trainer
# ---------------------------------------------------------------------------

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Diverged(UserError):
    """A loss, gradient norm or evaluation metric became NaN or infinite."""


class _NonFinite(Exception):
    """Raised inside a step; the training loop turns it into :class:`Diverged` with context."""


class Optimisation:
    """The optimisers of a method's :class:`~mtlbench.api.OptimizerSpec` list, with their schedules.

    ``schedule_steps``: the number of steps the run's schedule spans (the run's
    own epochs, not the method's leading ones).  The trainer zeroes, clips, steps,
    schedules and checkpoints them all (:func:`optimizer_step`, :meth:`state_dict`).
    """

    def __init__(self, method: Method, tcfg, schedule_steps: int, leading_steps: int = 0):
        self.specs = list(method.optimizers())
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(method).__name__}.optimizers() repeats a name: {names}")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        for spec in self.specs:
            kind = tcfg.optimizer if spec.kind == "default" else spec.kind
            if kind not in OPTIMIZERS:
                raise UserError(f"optimizer {kind!r} (of {type(method).__name__}'s {spec.name!r} optimiser) "
                                f"is not one of {', '.join(OPTIMIZERS)}")
            lr = tcfg.lr if spec.lr is None or spec.kind == "default" else spec.lr
            wd = tcfg.weight_decay if spec.weight_decay is None or spec.kind == "default" else spec.weight_decay
            groups = []
            for g in spec.groups:
                g = dict(g)
                mult = g.pop("lr_mult", None)
                if mult is not None:
                    g["lr"] = lr * float(mult)
                groups.append(g)
            self.optimizers[spec.name] = OPTIMIZERS[kind](groups, lr=lr, weight_decay=wd, **spec.kwargs)
            if spec.scheduled:
                steps = schedule_steps + (leading_steps if spec.schedule_leading else 0)
                self.schedulers[spec.name] = make_scheduler(self.optimizers[spec.name], tcfg, steps)
        self._leading = {s.name for s in self.specs if s.schedule_leading}
        self._late = [s.name for s in self.specs if s.after_update]

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Step every optimiser but those stepped after the update (``after_update``)."""
        for name, opt in self.optimizers.items():
            if name not in self._late:
                opt.step()

    def step_after_update(self) -> None:
        """Step the ``after_update`` optimisers, whose gradients ``after_step`` set."""
        for name in self._late:
            params = [p for g in self.optimizers[name].param_groups for p in g["params"]]
            distributed.reduce_gradients(params)
            norm = _grad_norm(params)
            if norm is not None and not bool(torch.isfinite(norm)):
                raise _NonFinite(f"the gradient norm of the {name!r} optimiser became {float(norm)}")
            self.optimizers[name].step()

    def schedule(self, leading: bool = False) -> None:
        """Advance the schedules after a step (``leading``: a step of the method's leading
        epochs, which only the schedules with ``schedule_leading`` span)."""
        for name, sch in self.schedulers.items():
            if not leading or name in self._leading:
                sch.step()

    def lr(self) -> float:
        """The learning rate of the first optimiser's first group (for the epoch log)."""
        first = next(iter(self.optimizers.values()))
        return float(first.param_groups[0]["lr"])

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for spec in self.specs for p in spec.parameters()]

    def state_dict(self) -> dict:
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        opts, schs = state["optimizers"], state["schedulers"]
        missing = [k for k in self.optimizers if k not in opts]
        if missing:
            raise UserError(f"the checkpoint has no state for the optimiser(s) {', '.join(missing)} "
                            "(written by another version of the method?)",
                            hint="start the run over with --force")
        for k, o in self.optimizers.items():
            o.load_state_dict(opts[k])
        for k, sch in self.schedulers.items():
            if k in schs:
                sch.load_state_dict(schs[k])


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg, total_steps: int):
    """``train.scheduler`` over ``total_steps`` steps: onecycle (peak = each group's lr) or constant."""
    if tcfg.scheduler == "onecycle":
        max_lr = [grp["lr"] for grp in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 1),
                                                   pct_start=tcfg.pct_start)
    if tcfg.scheduler == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise UserError(f"train.scheduler must be onecycle or constant, got {tcfg.scheduler!r}")


def clip_gradients(groups, max_norm: float) -> list[torch.Tensor]:
    """``train.grad_clip``: bound the gradient norm of each set of ``Method.clip_groups()``
    on its own; returns each set's norm before clipping."""
    return [torch.nn.utils.clip_grad_norm_(params, max_norm) for params in groups]


def _grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor | None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads)


def optimizer_step(method: Method, optim: Optimisation, batch: dict, device: torch.device, amp: str,
                   clip_groups=(), max_norm: float | None = None):
    """One training step as the trainer takes it (benchmarks time this very function).

    The step rule of :mod:`mtlbench.api`: every optimiser's gradients are zeroed,
    then ``training_step`` (under autocast) and ``backward`` accumulate the step's
    gradients, however the method splits its backward; then gradient norms are
    checked (a non-finite norm stops the run before any weight changes), clipped
    per ``clip_groups`` when ``max_norm`` is set, and every optimiser steps.
    """
    optim.zero_grad()
    with autocast_ctx(device, amp):
        out = method.training_step(batch)
    bad = [t for t, v in out.losses.items() if not bool(torch.isfinite(v.detach()).all())]
    if bad:
        raise _NonFinite(f"the {bad[0]} loss became {float(out.losses[bad[0]].detach())}")
    method.backward(out)
    # data parallel: every gradient averaged over the processes (each holds its share, see
    # mtlbench.distributed); a no-op in one process
    distributed.reduce_gradients(optim.parameters())
    norms = clip_gradients(clip_groups, max_norm) if max_norm else [_grad_norm(optim.parameters())]
    for norm in norms:
        if norm is not None and not bool(torch.isfinite(norm)):
            raise _NonFinite(f"the gradient norm became {float(norm)}")
    optim.step()
    return out


# ---------------------------------------------------------------------------
# the training loop
# ---------------------------------------------------------------------------

def train(cfg: ResolvedConfig, opts: TrainOptions | None = None) -> dict:
    """Train one run and return its record (also written to disk).

    The run's lock (:class:`~mtlbench.runs.RunLock`) is held throughout, so two
    processes sharing a results directory never train the same run: the second
    stops with :class:`~mtlbench.runs.RunLocked`, or, once the first has
    finished, with :class:`RunExists`.  The phases are :class:`Training`'s:
    set up (or resume), the epochs, then the record.
    """
    opts = opts or TrainOptions()
    started = not distributed.active()
    distributed.init(_device_type(cfg.train.device))
    started = started and distributed.active()  # this call joined the group: it leaves it too
    try:
        check_data_parallel(cfg)
        if distributed.is_main():
            check_out_dir(Path(opts.out))
        paths = RunPaths.for_config(cfg, opts.out)
        if not distributed.active():
            with RunLock(paths.lock, paths.rel.as_posix()):
                state = resume_state(paths, opts)
                run = Training(cfg, opts, paths, state)
                run.fit()
                return run.finish()
        return _train_data_parallel(cfg, opts, paths)
    finally:
        if started:
            distributed.shutdown()


def _device_type(name: str) -> str:
    """``cpu`` or ``cuda``: the backend a data-parallel run needs (gloo or NCCL), before building."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if str(name).startswith("cuda") else "cpu"


def _train_data_parallel(cfg: ResolvedConfig, opts: TrainOptions, paths: RunPaths) -> dict:
    """:func:`train` over the processes of the world: rank 0 holds the lock and decides whether
    the run starts, resumes or stops (a record exists, a checkpoint without ``--resume``), and
    tells the others, so every process takes the same branch; rank 0 writes every file."""
    lock = RunLock(paths.lock, paths.rel.as_posix()) if distributed.is_main() else None
    verdict: tuple = ("start",)
    state = None
    if lock is not None:
        try:
            lock.acquire()
            state = resume_state(paths, opts)
            verdict = ("resume",) if state is not None else ("start",)
        except RunExists as exc:
            verdict = ("exists", str(exc.path))
        except UserError as exc:
            verdict = ("error", exc)  # UserErrors pickle with their hint
    # every process has the same config (else their shards would not make one batch)
    verdict = distributed.broadcast_object((verdict, cfg.hash))
    (verdict, main_hash) = verdict
    try:
        if main_hash != cfg.hash:
            raise UserError(f"the processes of this data-parallel run were given different configs "
                            f"(rank 0: {main_hash}, rank {distributed.world().rank}: {cfg.hash})",
                            hint="start every process with the same command line")
        if verdict[0] == "exists":
            raise RunExists(Path(verdict[1]))
        if verdict[0] == "error":
            raise verdict[1]
        if verdict[0] == "resume" and state is None:
            state = load_checkpoint(paths.last)
        run = Training(cfg, opts, paths, state)
        run.fit()
        return run.finish()
    finally:
        if lock is not None and lock.held:
            lock.release()


def check_out_dir(out: Path) -> None:
    """``--out`` must be a writable directory (created if missing): a clear error otherwise."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory",
                        hint="pass a directory for the results (e.g. --out results)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the results directory ({exc.strerror})",
                        hint="pass a directory you can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is not writable", hint="pass a directory you can write to")


#: what every checkpoint holds (:meth:`Training.checkpoint`)
CHECKPOINT_KEYS = ("epoch", "model", "optimizers", "schedulers", "method_extra", "rng", "history",
                   "train_time", "wall_time", "images_seen", "steps_size", "config")


def resume_state(paths: RunPaths, opts: TrainOptions) -> dict | None:
    """The checkpoint a run continues from (None: it starts afresh), after checking that the run
    may start: no record of it yet (unless ``force``), and no checkpoint unless ``resume``."""
    if paths.record.exists() and not opts.force:
        raise RunExists(paths.record)
    if paths.last.exists() and not (opts.resume or opts.force):
        raise UserError(f"an interrupted run with this identity has a checkpoint at {paths.last}",
                        hint="pass --resume to continue it, or --force to start over")
    if not opts.resume or opts.force:
        return None
    if not paths.last.exists():  # said even with --quiet: the user asked for something that is not there
        print(f"mtlbench: --resume: no checkpoint of this run at {paths.last}; starting from scratch",
              file=sys.stderr, flush=True)
        return None
    return load_checkpoint(paths.last)


def tracker_run_id(base: str, resume: dict | None) -> str:
    """The run id a tracker (W&B) files this training under: a fresh start (also ``--force``) gets
    ``base`` plus a new random suffix, so a run trained again is a new tracker run and not appended
    to the old one; a resumed run keeps its checkpoint's id (``base`` for checkpoints written before
    the id was kept)."""
    if resume is not None:
        return str(resume.get("tracker_run_id") or base)
    import secrets

    return f"{base}-{secrets.token_hex(3)}"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :meth:`Training.checkpoint`; a UserError for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or corrupted: torch raises several kinds
        raise UserError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); it is truncated "
                        "or corrupted", hint="start the run over with --force (the checkpoint is replaced)") from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UserError(f"{path} is not an mtlbench checkpoint", hint="start the run over with --force")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise UserError(f"the checkpoint {path} lacks {', '.join(missing)}: it was written by another "
                        "version of mtlbench", hint="start the run over with --force")
    return state


def _all_finite(method: Method) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in method.state_dict().values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def _finite_metrics(metrics: dict) -> list[str]:
    """``group/task/metric`` names of non-finite evaluation metrics."""
    return [f"{g + '/' if g else ''}{t}/{k}" for g, ts in metrics.items() for t, ms in ts.items()
            for k, v in ms.items() if v is None or not math.isfinite(v)]


class _NoStepLog:
    """The step log of a process that writes none (data parallel: ranks other than 0)."""

    def write(self, row: dict) -> None:
        pass

    def sync(self) -> int:
        return 0

    def close(self) -> None:
        pass


class Training:
    """One run from its config to its record, in phases.

    ``__init__`` sets up: builds the run (:func:`build`), its loaders, schedule and
    optimisers, hands the method its :class:`~mtlbench.api.TrainContext`, and restores a
    resumed run's state; :meth:`fit` trains the epochs (:meth:`epoch`, each of
    :meth:`step`, then :meth:`evaluate` and :meth:`checkpoint`); :meth:`finish` measures
    the trained model and writes the record (:mod:`mtlbench.records`).
    """

    def __init__(self, cfg: ResolvedConfig, opts: TrainOptions, paths: RunPaths, resume: dict | None = None):
        self.cfg, self.opts, self.paths = cfg, opts, paths
        self.t_wall = time.perf_counter()
        s = self.s = build(cfg)
        method, device, tcfg = s.method, s.device, cfg.train
        self.method, self.device, self.tcfg = method, device, tcfg
        self.world = distributed.world()
        self.main = self.world.is_main  # the process that writes, logs and evaluates
        # the code this process trains with: its commit now, not when the record is written (an
        # hour later the checkout may hold other commits); a resumed run keeps every attempt's
        from .provenance import source_commit

        before = list(resume.get("source_commits") or [None]) if resume is not None else []
        self.source_commits = [*before, source_commit() if self.main else None]
        check_data_parallel(cfg, len(s.train_set))
        self.generator = torch.Generator()
        self.loader_kw = dict(batch_size=tcfg.batch_size, num_workers=cfg.dataset.num_workers,
                              pin_memory=device.type == "cuda")
        self.val_loader = DataLoader(s.val_set, shuffle=False, **self.loader_kw)
        n_batches = math.ceil(len(s.train_set) / tcfg.batch_size)
        self.steps_per_epoch = min(n_batches, tcfg.max_steps_per_epoch or n_batches)
        self.lead = int(method.leading_epochs(tcfg.epochs))
        self.total_epochs = self.lead + tcfg.epochs

        self.start_epoch = 0
        if resume is not None:
            method.load_state_dict(resume["model"])
            self.start_epoch = resume["epoch"]
        if self.world.active:
            # the same seed built the same weights everywhere; rank 0's are made everyone's anyway
            import torch.distributed as dist

            for t in method.state_dict().values():
                if isinstance(t, torch.Tensor):
                    dist.broadcast(t, 0)
        method.on_train_start(TrainContext(tcfg.epochs, self.steps_per_epoch, device, RunContext(cfg, Path(opts.out)),
                                           self.start_epoch, leading_epochs=self.lead,
                                           autocast=lambda: autocast_ctx(device, s.amp), train_cfg=tcfg))
        self.optim = Optimisation(method, tcfg, self.steps_per_epoch * tcfg.epochs, self.steps_per_epoch * self.lead)
        self.clip_groups = method.clip_groups() if tcfg.grad_clip else []

        self.epochs: list[dict] = []  # every epoch's full row
        self.train_time = 0.0
        self.wall_before = 0.0
        self.images_seen = 0
        self.global_step = self.start_epoch * self.steps_per_epoch
        steps_size = None
        if resume is not None:
            self.optim.load_state_dict(resume)
            method.load_extra_state(resume["method_extra"])
            self.epochs = list(resume["history"]["epochs"])
            self.train_time = resume["train_time"]
            self.wall_before = resume["wall_time"]
            self.images_seen = resume["images_seen"]
            steps_size = resume["steps_size"]
            _set_rng_state(resume["rng"])
        elif tcfg.nuisance_seed is not None:
            # everything drawn so far (the networks, the method's own state) came from `seed`;
            # what is drawn from here on is the pair's nuisance stream (the data order has its
            # own generator, seeded from `seed` in train_loader)
            seed_everything(nuisance_stream_seed(cfg.seed, tcfg.nuisance_seed))
        self.steplog = StepLog(paths.steps_tmp, steps_size, finished=paths.steps) if self.main else _NoStepLog()
        from .trackers import Trackers

        self.tracker_run_id = tracker_run_id(f"{cfg.name('method')}-seed{cfg.seed}-{cfg.hash}", resume)
        self.trackers = Trackers(tcfg.loggers if self.main else [], paths.out / "trackers" / paths.rel, cfg.data,
                                 run_id=self.tracker_run_id, name=str(paths.rel),
                                 start_step=self.global_step, resume=resume is not None)

        mode = "none" if opts.quiet or not self.main else tcfg.progress
        label = f"{cfg.name('method')}/{cfg.name('backbone')}/{cfg.name('dataset')} seed {cfg.seed}"
        self.prog = Progress(mode, label=label, total_epochs=self.total_epochs, steps=self.steps_per_epoch)
        if resume is not None:
            text = f"resuming {label} after epoch {self.start_epoch} from {paths.last}"
            if mode == "none" and self.main:  # said even with --quiet, as a missing checkpoint is: a log
                print(f"mtlbench: {text}", file=sys.stderr, flush=True)  # must show which attempt did what
            else:
                self.prog.message(text)

    def wall_time(self) -> float:
        """Seconds of wall time, over every process of a resumed run."""
        return self.wall_before + time.perf_counter() - self.t_wall

    # --- the epochs ---------------------------------------------------------

    def fit(self) -> None:
        """Train every epoch left, a checkpoint after each."""
        self.method.train()
        try:
            for epoch in range(self.start_epoch, self.total_epochs):
                self.prog.epoch_start(epoch, epoch)
                entry = self.epoch(epoch)
                self.checkpoint(epoch)
                self.prog.epoch_end(self._epoch_line(epoch, entry))
                if self.opts.on_epoch:
                    self.opts.on_epoch(epoch, entry)
        except BaseException:
            self.trackers.close()
            raise
        finally:
            self.prog.close()
            self.steplog.close()

    def train_loader(self, epoch: int) -> DataLoader:
        """The epoch's shuffled training batches.

        The shuffle order depends only on (seed, epoch of the run's own schedule): a resumed
        run sees the same batches, and a method with leading epochs trains its deployable
        network on the very batches the baseline sees (leading epochs draw their own).
        """
        lead, g = self.lead, self.generator
        g.manual_seed(self.cfg.seed * 100003 + (epoch - lead if epoch >= lead else 50_000 + epoch))
        train_set = self.s.train_set
        if not self.world.active:
            return DataLoader(train_set, sampler=RandomSampler(train_set, generator=g),
                              drop_last=False, generator=g, **self.loader_kw)
        # data parallel: the single-process batches (the same draws from g, in the same order),
        # each cut to this process's share
        kw = {k: v for k, v in self.loader_kw.items() if k != "batch_size"}
        batches = BatchSampler(RandomSampler(train_set, generator=g), self.tcfg.batch_size, drop_last=False)
        return DataLoader(train_set, batch_sampler=distributed.ShardedBatchSampler(
            batches, self.world.rank, self.world.size), generator=g, **kw)

    def epoch(self, epoch: int) -> dict:
        """Train one epoch, evaluate when due; returns (and keeps) the epoch's full row."""
        method = self.method
        loader = self.train_loader(epoch)
        method.on_epoch_start(epoch)
        sums: dict[str, float] = {}
        n_steps = 0
        data_time = 0.0
        t0 = time.perf_counter()
        t_data = t0
        for i, batch in enumerate(loader):  # (fetches one batch past a step cap, as it always has)
            data_time += time.perf_counter() - t_data
            if i >= self.steps_per_epoch:
                break
            for t, v in self.step(epoch, i, batch).items():
                sums[t] = sums.get(t, 0.0) + v
            n_steps += 1
            t_data = time.perf_counter()
        epoch_time = time.perf_counter() - t0
        self.train_time += epoch_time
        mean_losses = {t: v / max(n_steps, 1) for t, v in sums.items()}
        elogs = {**method.architecture_logs(), **(method.on_epoch_end(epoch, mean_losses) or {})}
        entry = {"epoch": epoch, "train_loss": mean_losses, "lr": self.optim.lr(),
                 "time_s": round(epoch_time, 3), "data_s": round(data_time, 3),
                 "images_per_s": round(n_steps * self.tcfg.batch_size / max(epoch_time, 1e-9), 2),
                 "logs": elogs, "metrics": None}
        if epoch < self.lead:
            entry["leading"] = True
        if self.evaluation_due(epoch):
            t_eval = time.perf_counter()
            entry["metrics"] = self.evaluate(epoch)
            entry["eval_s"] = round(time.perf_counter() - t_eval, 3)
        self.epochs.append(entry)
        self.trackers.epoch(max(self.global_step - 1, 0), entry)
        if not _all_finite(method):
            raise self._diverged("the weights hold NaN or infinite values", epoch)
        return entry

    def step(self, epoch: int, i: int, batch: dict) -> dict[str, float]:
        """One training step (:func:`optimizer_step`, schedules, ``after_step``, the step log);
        returns the step's losses."""
        method, optim, tcfg = self.method, self.optim, self.tcfg
        batch = to_device(batch, self.device, self.s.channels_last)
        try:
            out = optimizer_step(method, optim, batch, self.device, self.s.amp, self.clip_groups, tcfg.grad_clip)
            optim.schedule(leading=epoch < self.lead)
            step_logs = method.after_step(self.global_step, batch) or {}
            optim.step_after_update()
        except _NonFinite as exc:
            raise self._diverged(str(exc), epoch, i, batch) from None
        losses = {t: float(v.detach()) for t, v in out.losses.items()}
        # the global batch (the ranks' shards together), as one process would count it
        self.images_seen += (batch["image"].shape[0] if not self.world.active
                             else min(tcfg.batch_size, len(self.s.train_set) - i * tcfg.batch_size))
        if self.main and tcfg.log_every and self.global_step % tcfg.log_every == 0:
            row = {"step": self.global_step, "epoch": epoch, **{f"loss/{t}": v for t, v in losses.items()},
                   **out.logs, **step_logs}
            self.steplog.write(row)
            self.trackers.step(self.global_step, row)
        self.global_step += 1
        self.prog.step(_fmt_losses(losses))
        if self.opts.on_step:
            self.opts.on_step(epoch, i)
        return losses

    def evaluation_due(self, epoch: int) -> bool:
        """After the last epoch, and every ``train.eval_every`` epochs of the run's own schedule."""
        last = epoch == self.total_epochs - 1
        every = self.tcfg.eval_every
        return epoch >= self.lead and (last or bool(every and (epoch + 1 - self.lead) % every == 0))

    def evaluate(self, epoch: int) -> dict:
        """``{model: {task: {metric: value}}}`` of every model the method evaluates, on the val split."""
        s = self.s
        metrics = None
        if self.main:  # data parallel: rank 0 evaluates the (identical) models, the others wait
            metrics = {k: evaluate(m, s.tasks, self.val_loader, self.device, s.amp, s.channels_last)
                       for k, m in self.method.eval_models().items()}
        metrics = distributed.broadcast_object(metrics)
        if self.world.active:
            # rank 0's evaluation drew from the global random streams (a DataLoader without a
            # generator draws its base seed there), as a single process does: every process
            # continues from rank 0's streams, so they stay one stream (RLW's weights, dropout)
            _set_rng_state({k: v for k, v in distributed.broadcast_object(_rng_state()).items()
                            if k != "cuda"})
        bad = _finite_metrics(metrics)
        if bad:
            raise self._diverged(f"the evaluation metric {bad[0]} is {_metric_value(metrics, bad[0])}", epoch)
        return metrics

    def checkpoint(self, epoch: int) -> None:
        """The state after ``epoch`` (:data:`CHECKPOINT_KEYS`), atomically, with the step log synced."""
        if not self.main:
            distributed.barrier()  # returns once rank 0 has written the checkpoint
            return
        size = self.steplog.sync()
        atomic_torch_save(self.paths.last, {
            "epoch": epoch + 1, "model": self.method.state_dict(), **self.optim.state_dict(),
            "method_extra": self.method.extra_state(), "rng": _rng_state(), "history": {"epochs": self.epochs},
            "train_time": self.train_time, "wall_time": self.wall_time(),
            "images_seen": self.images_seen, "steps_size": size, "config": self.cfg.data,
            "tracker_run_id": self.tracker_run_id, "total_epochs": self.total_epochs,
            "source_commits": self.source_commits})
        distributed.barrier()

    def _epoch_line(self, epoch: int, entry: dict) -> str:
        line = f"epoch {epoch + 1}/{self.total_epochs} loss {_fmt_losses(entry['train_loss'])}"
        if epoch < self.lead:
            line += " (leading epoch)"
        if entry["metrics"]:
            main = entry["metrics"].get("", {})
            line += " | " + " ".join(
                f"{t}.{k}={v:.3f}" for t, ms in main.items() for k, v in list(ms.items())[:1])
        return line

    def _diverged(self, what: str, epoch: int, step: int | None = None, batch=None) -> Diverged:
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
        if epoch < self.lead:
            where += " (a leading epoch of the method)"
        last = self.paths.last
        kept = (f"the last checkpoint with finite weights is kept at {last} (resume with --resume)"
                if last.exists() else "no epoch had finished, so there is no checkpoint")
        samples = ""
        if batch is not None and "index" in batch:
            idx = [int(i) for i in batch["index"].tolist()][:8]
            samples = f"; the batch held training samples {idx}"
        return Diverged(f"the run diverged: {what} at {where}{samples}. No record was written; {kept}",
                        hint="lower train.lr (e.g. --set train.lr=1e-4) or bound the gradients "
                             "(--set train.grad_clip=1.0); if the data may hold NaN or infinite values, "
                             "check it with `mtlbench data check`")

    # --- the end ------------------------------------------------------------

    def finish(self) -> dict:
        """Measure the trained model, then write its final weights and the record; return the record."""
        s, method, cfg = self.s, self.method, self.cfg
        if not self.main:  # rank 0 measures and writes; every process returns its record
            self.trackers.close()
            return distributed.broadcast_object(None)
        wall_s = self.wall_time()
        sample = next(iter(self.val_loader))["image"].to(s.device)
        if s.channels_last:
            sample = sample.contiguous(memory_format=torch.channels_last)
        latency = inference_latency_ms(method.deployable(), sample, s.device, s.amp)
        memory = peak_memory_mb(s.device)
        dev_name = (torch.cuda.get_device_name(s.device) if s.device.type == "cuda"
                    else platform.processor() or platform.machine())
        record = make_record(
            cfg, self.paths, epochs=self.epochs, reportable=method.reportable,
            dataset_family=getattr(s.dataset, "family", "") or cfg.name("dataset"), tasks=s.tasks,
            schedule={"epochs": cfg.train.epochs, "leading_epochs": self.lead,
                      "steps_per_epoch": self.steps_per_epoch},
            params={"training_system": count_parameters(method), "deployable": count_parameters(method.deployable())},
            timing={"wall_s": round(wall_s, 2), "train_s": round(self.train_time, 2),
                    "train_images_per_s": round(self.images_seen / max(self.train_time, 1e-9), 2),
                    "inference_ms_per_image": round(latency, 3),
                    # of train_s, the time spent waiting for batches; evaluation is outside train_s
                    "data_s": round(sum(e.get("data_s", 0.0) for e in self.epochs), 2),
                    "eval_s": round(sum(e.get("eval_s", 0.0) for e in self.epochs), 2)},
            memory=memory,
            device={"type": s.device.type, "name": dev_name, "amp": s.amp, "channels_last": s.channels_last,
                    "threads": torch.get_num_threads(), "compile": bool(cfg.train.compile),
                    # what decides the floating-point reduction order on a CPU (tables check pairs on it)
                    "processor": processor_model(), "cpu_capability": cpu_capability()},
            method_info={**method.architecture_info(), **method.summary_info()},
            source_commits=self.source_commits)
        # where the backbone's starting weights came from (a pretraining artefact's identity), if not scratch
        init = s.factory.provenance() if s.factory is not None else {}
        if init:
            record["encoder_init"] = strict_json(init)
        # per task: how far the run is from the input-blind reference (degenerate when not clearly better)
        record["learned"] = strict_json(learned_block(s.dataset, record["metrics"]))
        if self.world.active:
            record["device"]["processes"] = self.world.size
            record["device"]["backend"] = self.world.backend
            record["device"]["sync_batchnorm"] = bool(cfg.train.sync_batchnorm)
        self.trackers.final(record["metrics"])
        self.trackers.close()
        out = write_record(self.paths, record, self.epochs, {"model": method.state_dict(), "config": cfg.data})
        return distributed.broadcast_object(out)


def _metric_value(metrics: dict, name: str):
    parts = name.split("/")
    group = "" if len(parts) == 2 else parts[0]
    t, k = parts[-2], parts[-1]
    return metrics[group][t][k]
