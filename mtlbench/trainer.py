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

Records stay small: per-step logs stream to a JSON Lines file (in the
checkpoint folder while training, beside the record at the end), every epoch's
full row goes to a second one, and the record keeps a compact epoch history.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from . import __version__
from .api import Method, TrainContext, count_parameters
from .config import ResolvedConfig
from .errors import UserError
from .models import assemble
from .progress import Progress
from .registry import DATASETS, METHODS
from .runs import (SCHEMA_VERSION, RunContext, RunLock, RunPaths, atomic_torch_save,
                   atomic_write_bytes, atomic_write_json, find_runs, strict_json)


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
    return dev


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


def build(cfg: ResolvedConfig, *, with_data: bool = True) -> Setup:
    """Build dataset, tasks, backbone and method from a resolved config.

    With data, the data is checked and its splits opened first, so a missing
    directory or a bad file is reported before any model is built.
    """
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
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
    return Setup(cfg, dataset, tasks, method, device, amp, bool(cl), **splits)


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
        opts, schs = state.get("optimizers", {}), state.get("schedulers", {})
        if "optimizer" in state and not opts and len(self.optimizers) == 1:
            # a checkpoint of the single-optimiser trainer (before Method.optimizers existed)
            name = next(iter(self.optimizers))
            opts = {name: state["optimizer"]}
            schs = {name: state["scheduler"]} if "scheduler" in state else {}
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
    finished, with :class:`RunExists`.
    """
    opts = opts or TrainOptions()
    paths = RunPaths.for_config(cfg, opts.out)
    check_out_dir(Path(opts.out))
    with RunLock(paths.lock, paths.rel.as_posix()):
        return _train(cfg, opts, paths)


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


def _load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or corrupted: torch raises several kinds
        raise UserError(f"the checkpoint {path} cannot be read ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); it is truncated "
                        "or corrupted", hint="start the run over with --force (the checkpoint is replaced)") from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise UserError(f"{path} is not an mtlbench checkpoint", hint="start the run over with --force")
    return state


def _all_finite(method: Method) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in method.state_dict().values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def _finite_metrics(metrics: dict) -> list[str]:
    """``group/task/metric`` names of non-finite evaluation metrics."""
    return [f"{g + '/' if g else ''}{t}/{k}" for g, ts in metrics.items() for t, ms in ts.items()
            for k, v in ms.items() if v is None or not math.isfinite(v)]


class _StepLog:
    """Per-step logs streamed to a JSON Lines file in the checkpoint folder.

    Flushed and fsynced with every checkpoint, whose state records the file's
    size; a resumed run truncates the file to that size, so the log holds
    exactly the steps of the checkpointed epochs.  Moved beside the record at
    the end.
    """

    def __init__(self, path: Path, resume_size: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_size is None:
            self.fh = open(path, "w")
        else:
            self.fh = open(path, "a+")
            self.fh.truncate(resume_size)
            self.fh.seek(resume_size)

    def write(self, row: dict) -> None:
        self.fh.write(json.dumps(strict_json(row), separators=(",", ":")) + "\n")

    def sync(self) -> int:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


def _train(cfg: ResolvedConfig, opts: TrainOptions, paths: RunPaths) -> dict:
    if paths.record.exists() and not opts.force:
        raise RunExists(paths.record)
    if paths.last.exists() and not (opts.resume or opts.force):
        raise UserError(f"an interrupted run with this identity has a checkpoint at {paths.last}",
                        hint="pass --resume to continue it, or --force to start over")
    resume_state = None
    if opts.resume and not opts.force:
        if paths.last.exists():
            resume_state = _load_checkpoint(paths.last)
        else:  # said even with --quiet: the user asked for something that is not there
            print(f"mtlbench: --resume: no checkpoint of this run at {paths.last}; starting from scratch",
                  file=sys.stderr, flush=True)
    t_wall = time.perf_counter()
    s = build(cfg)
    method, device, tcfg = s.method, s.device, cfg.train
    g = torch.Generator()
    loader_kw = dict(batch_size=tcfg.batch_size, num_workers=cfg.dataset.num_workers,
                     pin_memory=device.type == "cuda")
    val_loader = DataLoader(s.val_set, shuffle=False, **loader_kw)
    n_batches = math.ceil(len(s.train_set) / tcfg.batch_size)
    steps_per_epoch = min(n_batches, tcfg.max_steps_per_epoch or n_batches)
    lead = int(method.leading_epochs(tcfg.epochs))
    total_epochs = lead + tcfg.epochs

    start_epoch = 0
    if resume_state is not None:
        method.load_state_dict(resume_state["model"])
        start_epoch = resume_state["epoch"]
    run_ctx = RunContext(cfg, Path(opts.out))
    method.on_train_start(TrainContext(tcfg.epochs, steps_per_epoch, device, run_ctx, start_epoch,
                                       leading_epochs=lead, autocast=lambda: autocast_ctx(device, s.amp),
                                       train_cfg=tcfg))
    optim = Optimisation(method, tcfg, steps_per_epoch * tcfg.epochs, steps_per_epoch * lead)
    clip_groups = method.clip_groups() if tcfg.grad_clip else []

    history: dict[str, list] = {"epochs": []}
    train_time = 0.0
    wall_before = 0.0
    images_seen = 0
    global_step = start_epoch * steps_per_epoch
    steps_size = None
    if resume_state is not None:
        optim.load_state_dict(resume_state)
        method.load_extra_state(resume_state.get("method_extra", {}))
        history = {"epochs": resume_state["history"]["epochs"]}
        train_time = resume_state.get("train_time", 0.0)
        # a checkpoint from before wall time was kept: its training time is a lower bound
        wall_before = resume_state.get("wall_time", train_time)
        images_seen = resume_state.get("images_seen", 0)
        steps_size = resume_state.get("steps_size", 0)
        _set_rng_state(resume_state["rng"])
    old_steps = (resume_state or {}).get("history", {}).get("steps")  # a schema-1 checkpoint
    steplog = _StepLog(paths.steps_tmp, None if old_steps is not None else steps_size)
    for row in old_steps or []:
        steplog.write(row)

    mode = "none" if opts.quiet else tcfg.progress
    label = f"{cfg.name('method')}/{cfg.name('backbone')}/{cfg.name('dataset')} seed {cfg.seed}"
    prog = Progress(mode, label=label, total_epochs=total_epochs, steps=steps_per_epoch)
    if resume_state is not None:
        prog.message(f"resuming {label} after epoch {start_epoch} from {paths.last}")
    method.train()
    try:
        for epoch in range(start_epoch, total_epochs):
            prog.epoch_start(epoch, epoch)
            # The shuffle order depends only on (seed, epoch of the run's own schedule): a resumed
            # run sees the same batches, and a method with leading epochs trains its deployable
            # network on the very batches the baseline sees (leading epochs draw their own).
            g.manual_seed(cfg.seed * 100003 + (epoch - lead if epoch >= lead else 50_000 + epoch))
            loader = DataLoader(s.train_set, sampler=RandomSampler(s.train_set, generator=g),
                                drop_last=False, generator=g, **loader_kw)
            method.on_epoch_start(epoch)
            sums: dict[str, float] = {}
            n_steps = 0
            t0 = time.perf_counter()
            for i, batch in enumerate(loader):
                if i >= steps_per_epoch:
                    break
                batch = to_device(batch, device, s.channels_last)
                try:
                    out = optimizer_step(method, optim, batch, device, s.amp, clip_groups, tcfg.grad_clip)
                except _NonFinite as exc:
                    raise _diverged(str(exc), epoch, i, lead, paths, batch) from None
                optim.schedule(leading=epoch < lead)
                step_logs = method.after_step(global_step, batch) or {}
                try:
                    optim.step_after_update()
                except _NonFinite as exc:
                    raise _diverged(str(exc), epoch, i, lead, paths, batch) from None
                losses = {t: float(v.detach()) for t, v in out.losses.items()}
                for t, v in losses.items():
                    sums[t] = sums.get(t, 0.0) + v
                n_steps += 1
                images_seen += batch["image"].shape[0]
                if tcfg.log_every and global_step % tcfg.log_every == 0:
                    steplog.write({"step": global_step, "epoch": epoch,
                                   **{f"loss/{t}": v for t, v in losses.items()},
                                   **out.logs, **step_logs})
                global_step += 1
                prog.step(_fmt_losses(losses))
                if opts.on_step:
                    opts.on_step(epoch, i)
            epoch_time = time.perf_counter() - t0
            train_time += epoch_time
            mean_losses = {t: v / max(n_steps, 1) for t, v in sums.items()}
            elogs = method.on_epoch_end(epoch, mean_losses) or {}
            entry = {"epoch": epoch, "train_loss": mean_losses, "lr": optim.lr(),
                     "time_s": round(epoch_time, 3),
                     "images_per_s": round(n_steps * tcfg.batch_size / max(epoch_time, 1e-9), 2),
                     "logs": elogs, "metrics": None}
            if epoch < lead:
                entry["leading"] = True
            last = epoch == total_epochs - 1
            if epoch >= lead and (last or (tcfg.eval_every and (epoch + 1 - lead) % tcfg.eval_every == 0)):
                entry["metrics"] = {k: evaluate(m, s.tasks, val_loader, device, s.amp, s.channels_last)
                                    for k, m in method.eval_models().items()}
                bad = _finite_metrics(entry["metrics"])
                if bad:
                    raise _diverged(f"the evaluation metric {bad[0]} is {_metric_value(entry['metrics'], bad[0])}",
                                    epoch, None, lead, paths, None)
            history["epochs"].append(entry)
            if not _all_finite(method):
                raise _diverged("the weights hold NaN or infinite values", epoch, None, lead, paths, None)
            size = steplog.sync()
            atomic_torch_save(paths.last, {
                "epoch": epoch + 1, "model": method.state_dict(), **optim.state_dict(),
                "method_extra": method.extra_state(), "rng": _rng_state(), "history": history,
                "train_time": train_time, "wall_time": wall_before + time.perf_counter() - t_wall,
                "images_seen": images_seen, "steps_size": size, "config": cfg.data})
            line = f"epoch {epoch + 1}/{total_epochs} loss {_fmt_losses(mean_losses)}"
            if epoch < lead:
                line += " (leading epoch)"
            if entry["metrics"]:
                main = entry["metrics"].get("", {})
                line += " | " + " ".join(
                    f"{t}.{k}={v:.3f}" for t, ms in main.items() for k, v in list(ms.items())[:1])
            prog.epoch_end(line)
            if opts.on_epoch:
                opts.on_epoch(epoch, entry)
    finally:
        prog.close()
        steplog.close()

    record = _make_record(cfg, s, paths, history, train_time, images_seen,
                          wall_before + time.perf_counter() - t_wall, val_loader, lead, steps_per_epoch)
    atomic_torch_save(paths.final, {"model": method.state_dict(), "config": cfg.data})
    write_run_logs(paths, history["epochs"])
    atomic_write_json(paths.record, record)
    paths.last.unlink(missing_ok=True)
    record["_path"] = str(paths.record)
    return record


def _metric_value(metrics: dict, name: str):
    parts = name.split("/")
    group = "" if len(parts) == 2 else parts[0]
    t, k = parts[-2], parts[-1]
    return metrics[group][t][k]


def _diverged(what: str, epoch: int, step: int | None, lead: int, paths: RunPaths, batch) -> Diverged:
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    if epoch < lead:
        where += " (a leading epoch of the method)"
    kept = (f"the last checkpoint with finite weights is kept at {paths.last} (resume with --resume)"
            if paths.last.exists() else "no epoch had finished, so there is no checkpoint")
    samples = ""
    if batch is not None and "index" in batch:
        idx = [int(i) for i in batch["index"].tolist()][:8]
        samples = f"; the batch held training samples {idx}"
    return Diverged(f"the run diverged: {what} at {where}{samples}. No record was written; {kept}",
                    hint="lower train.lr (e.g. --set train.lr=1e-4) or bound the gradients "
                         "(--set train.grad_clip=1.0); if the data may hold NaN or infinite values, "
                         "check it with `mtlbench data check`")


#: the most epoch rows a record keeps (all of them in the epochs log beside it)
RECORD_EPOCH_ROWS = 40


def write_run_logs(paths: RunPaths, epochs: list[dict]) -> None:
    """Move the step log beside the record and write every epoch's full row beside it too."""
    paths.steps.parent.mkdir(parents=True, exist_ok=True)
    if paths.steps_tmp.exists():
        os.replace(paths.steps_tmp, paths.steps)
    else:
        paths.steps.write_text("")
    text = "".join(json.dumps(strict_json(e), separators=(",", ":")) + "\n" for e in epochs)
    atomic_write_bytes(paths.epochs, text.encode())


def compact_epochs(epochs: list[dict], keep: set[int]) -> list[dict]:
    """The epoch rows a record keeps: all when few, else evenly spaced ones plus ``keep``.

    Each row keeps the epoch, mean training losses, learning rate, time and the
    deployable model's metrics; method logs and other models' metrics live in
    the epochs log only (``history.epochs_file``).
    """
    n = len(epochs)
    if n <= RECORD_EPOCH_ROWS:
        chosen = set(range(n))
    else:
        step = (n - 1) / (RECORD_EPOCH_ROWS - 1 - len(keep))
        chosen = {round(i * step) for i in range(RECORD_EPOCH_ROWS - len(keep))}
    chosen |= {i for i, e in enumerate(epochs) if e["epoch"] in keep}
    out = []
    for i in sorted(chosen):
        e = epochs[i]
        row = {"epoch": e["epoch"], "train_loss": {t: round(v, 6) for t, v in e["train_loss"].items()},
               "lr": e["lr"], "time_s": e["time_s"]}
        if e.get("leading"):
            row["leading"] = True
        if e.get("metrics"):
            row["metrics"] = {"": e["metrics"].get("", {})}
        out.append(row)
    return out


def _report_epoch(history: dict, rule: str, method: Method) -> dict:
    evaluated = [e for e in history["epochs"] if e["metrics"] and not e.get("leading")]
    allowed = [e for e in evaluated if method.reportable(e["epoch"])]
    evaluated = allowed or evaluated[-1:]
    if rule == "last":
        return evaluated[-1]
    if rule == "best_train_loss":
        return min(evaluated, key=lambda e: sum(e["train_loss"].values()))
    raise UserError(f"train.report must be last or best_train_loss, got {rule!r}")


def _make_record(cfg, s: Setup, paths: RunPaths, history, train_time, images_seen, wall_s,
                 val_loader, lead: int, steps_per_epoch: int) -> dict:
    import timm

    from .provenance import source_commit

    method = s.method
    chosen = _report_epoch(history, cfg.train.report, method)
    metrics = chosen["metrics"]
    sample = next(iter(val_loader))["image"].to(s.device)
    if s.channels_last:
        sample = sample.contiguous(memory_format=torch.channels_last)
    latency = inference_latency_ms(method.deployable(), sample, s.device, s.amp)
    dev_name = (torch.cuda.get_device_name(s.device) if s.device.type == "cuda"
                else platform.processor() or platform.machine())
    rel_final = paths.final.relative_to(paths.out)
    return strict_json({
        "schema": SCHEMA_VERSION,
        "id": paths.rel.as_posix(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.name("method"), "backbone": cfg.name("backbone"),
        "dataset": cfg.name("dataset"), "dataset_family": getattr(s.dataset, "family", "") or cfg.name("dataset"),
        "preset": cfg.preset, "seed": cfg.seed,
        "config_hash": cfg.hash, "config": cfg.data,
        "tasks": {t: task.describe() for t, task in s.tasks.items()},
        "metrics": metrics.get("", {}),
        "extra_metrics": {k: v for k, v in metrics.items() if k},
        "report": {"rule": cfg.train.report, "epoch": chosen["epoch"]},
        "schedule": {"epochs": cfg.train.epochs, "leading_epochs": lead, "steps_per_epoch": steps_per_epoch},
        "history": {"epochs": compact_epochs(history["epochs"], {chosen["epoch"], history["epochs"][-1]["epoch"]}),
                    "epochs_file": paths.epochs.name, "steps_file": paths.steps.name},
        "params": {"training_system": count_parameters(method),
                   "deployable": count_parameters(method.deployable())},
        "timing": {"wall_s": round(wall_s, 2),
                   "train_s": round(train_time, 2),
                   "train_images_per_s": round(images_seen / max(train_time, 1e-9), 2),
                   "inference_ms_per_image": round(latency, 3)},
        "memory": peak_memory_mb(s.device),
        "device": {"type": s.device.type, "name": dev_name, "amp": s.amp,
                   "channels_last": s.channels_last, "threads": torch.get_num_threads(),
                   "compile": bool(cfg.train.compile)},
        "versions": {"mtlbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "git_commit": source_commit(),
        "checkpoint": rel_final.as_posix(),
        "method_info": method.summary_info(),
    })


def delta_reference() -> str | None:
    """The registered method Δ is measured against at the end of a run (``Method.is_delta_reference``)."""
    refs = [e.name for e in METHODS.entries() if getattr(e.obj, "is_delta_reference", False)]
    return refs[0] if refs else None


def reference_delta(record: dict, out: Path, reference: str | None = None) -> tuple[float | None, str]:
    """Δ of a record against the reference method's run of the same setting.

    Returns ``(delta, the reference record's path)``, or ``(None, why not)``.
    """
    from .delta import delta

    reference = reference or delta_reference()
    if reference is None:
        return None, "no registered method is marked as the Δ reference"
    if record["method"] == reference:
        return None, f"this is the {reference} run"
    refs = find_runs(out, reference, record["config"])
    if not refs:
        return None, f"no {reference} record of this setting yet"
    directions = {t: {k: v == "higher" for k, v in info["metrics"].items()}
                  for t, info in record["tasks"].items()}
    try:
        return delta(record["metrics"], refs[0]["metrics"], directions), refs[0]["_path"]
    except ValueError as exc:  # e.g. a reference metric of 0 after a very short run
        return None, str(exc)
