"""The trainer: one loop for every method, driven only through the method contract.

AdamW with OneCycleLR (the paper §4.0.1), bf16 autocast and channels_last when
asked (or when the backbone prefers them on the device), deterministic seeding,
evaluation on the val split, a checkpoint after every epoch, ``resume`` from
the last one, and a result record at the end.
"""
from __future__ import annotations

import math
import platform
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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
from .registry import BACKBONES, DATASETS, METHODS
from .runs import (SCHEMA_VERSION, RunContext, RunLock, RunPaths, atomic_torch_save,
                   atomic_write_json, find_runs, git_commit)


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
    """Build dataset, tasks, backbone and method from a resolved config."""
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    device = resolve_device(tcfg.device)
    seed_everything(cfg.seed)
    dataset = DATASETS.get(cfg.name("dataset"))(cfg.dataset)
    tasks = dataset.tasks()
    factory = BACKBONES.get(cfg.name("backbone"))(cfg.backbone, tasks)
    factory.check_image_size(cfg.dataset.image_size)
    method = METHODS.get(cfg.name("method"))(cfg.method, tasks, factory)
    amp = factory.default_amp(device.type) if tcfg.amp == "auto" else tcfg.amp
    if amp not in ("bf16", "fp32"):
        raise UserError(f"train.amp must be auto, bf16 or fp32, got {tcfg.amp!r}")
    cl = factory.default_channels_last(device.type) if tcfg.channels_last is None else tcfg.channels_last
    method.to(device)
    if cl:
        method.to(memory_format=torch.channels_last)
    setup = Setup(cfg, dataset, tasks, method, device, amp, bool(cl))
    if with_data:
        setup.train_set = dataset.split("train")
        setup.val_set = dataset.split("val")
        if len(setup.train_set) == 0:
            raise UserError(f"the train split of dataset {cfg.name('dataset')!r} is empty")
    return setup


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


class _Progress:
    """Rich progress bars on a terminal, plain lines otherwise, nothing with --quiet."""

    def __init__(self, mode: str, total_epochs: int, steps: int, label: str):
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.label = label
        self.steps = steps
        self._p = None
        if mode == "rich":
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                               MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                               TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._p.start()
            self._ep = self._p.add_task(f"{label} epochs", total=total_epochs, info="")
            self._st = self._p.add_task("steps", total=steps, info="")

    def epoch_start(self, epoch: int, done: int):
        if self._p:
            self._p.update(self._ep, completed=done)
            self._p.reset(self._st, total=self.steps, description=f"epoch {epoch + 1}")

    def step(self, info: str):
        if self._p:
            self._p.update(self._st, advance=1, info=info)

    def epoch_end(self, line: str):
        if self._p:
            self._p.update(self._ep, advance=1, info=line)
        elif self.mode == "plain":
            print(f"[{self.label}] {line}", flush=True)

    def message(self, text: str):
        if self._p:
            self._p.console.print(text)
        elif self.mode != "none":
            print(text, flush=True)

    def close(self):
        if self._p:
            self._p.stop()


def _fmt_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{t}={v:.4f}" for t, v in losses.items())


def clip_gradients(groups: list[list[torch.nn.Parameter]], max_norm: float) -> None:
    """``train.grad_clip``: bound the gradient norm of each set of ``Method.clip_groups()``."""
    for params in groups:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def optimizer_step(method: Method, optimizer: torch.optim.Optimizer, batch: dict,
                   device: torch.device, amp: str, clip_groups=(), max_norm: float | None = None):
    """One training step as the trainer takes it (benchmarks time this very function).

    Gradients are zeroed *before* ``training_step``: a method may run part of its
    backward inside it (OKD-MTL frees each single-task graph at once).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast_ctx(device, amp):
        out = method.training_step(batch)
    method.backward(out)
    if max_norm:
        clip_gradients(clip_groups, max_norm)
    optimizer.step()
    return out


def train(cfg: ResolvedConfig, opts: TrainOptions | None = None) -> dict:
    """Train one run and return its record (also written to disk).

    The run's lock (:class:`~mtlbench.runs.RunLock`) is held throughout, so two
    processes sharing a results directory never train the same run: the second
    stops with :class:`~mtlbench.runs.RunLocked`, or, once the first has
    finished, with :class:`RunExists`.
    """
    opts = opts or TrainOptions()
    paths = RunPaths.for_config(cfg, opts.out)
    with RunLock(paths.lock, paths.rel.as_posix()):
        return _train(cfg, opts, paths)


def _train(cfg: ResolvedConfig, opts: TrainOptions, paths: RunPaths) -> dict:
    if paths.record.exists() and not opts.force:
        raise RunExists(paths.record)
    if paths.last.exists() and not (opts.resume or opts.force):
        raise UserError(f"an interrupted run with this identity has a checkpoint at {paths.last}",
                        hint="pass --resume to continue it, or --force to start over")
    resume_state = None
    if opts.resume and paths.last.exists() and not opts.force:
        resume_state = torch.load(paths.last, map_location="cpu", weights_only=False)
    t_wall = time.perf_counter()
    s = build(cfg)
    method, device, tcfg = s.method, s.device, cfg.train
    g = torch.Generator()
    loader_kw = dict(batch_size=tcfg.batch_size, num_workers=cfg.dataset.num_workers,
                     pin_memory=device.type == "cuda")
    val_loader = DataLoader(s.val_set, shuffle=False, **loader_kw)
    n_batches = math.ceil(len(s.train_set) / tcfg.batch_size)
    steps_per_epoch = min(n_batches, tcfg.max_steps_per_epoch or n_batches)
    total_steps = steps_per_epoch * tcfg.epochs

    start_epoch = 0
    if resume_state is not None:
        method.load_state_dict(resume_state["model"])
        start_epoch = resume_state["epoch"]
    run_ctx = RunContext(cfg, Path(opts.out))
    method.on_train_start(TrainContext(tcfg.epochs, steps_per_epoch, device, run_ctx, start_epoch))
    groups = method.param_groups()
    clip_groups = method.clip_groups() if tcfg.grad_clip else []
    optimizer = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    if tcfg.scheduler == "onecycle":
        max_lr = [grp.get("lr", tcfg.lr) for grp in optimizer.param_groups]
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=max(total_steps, 1), pct_start=tcfg.pct_start)
    elif tcfg.scheduler == "constant":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise UserError(f"train.scheduler must be onecycle or constant, got {tcfg.scheduler!r}")

    history: dict[str, list] = {"epochs": [], "steps": []}
    train_time = 0.0
    images_seen = 0
    global_step = start_epoch * steps_per_epoch
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        method.load_extra_state(resume_state.get("method_extra", {}))
        history = resume_state["history"]
        train_time = resume_state.get("train_time", 0.0)
        images_seen = resume_state.get("images_seen", 0)
        _set_rng_state(resume_state["rng"])

    mode = "none" if opts.quiet else tcfg.progress
    label = f"{cfg.name('method')}/{cfg.name('backbone')}/{cfg.name('dataset')} seed {cfg.seed}"
    prog = _Progress(mode, tcfg.epochs, steps_per_epoch, label)
    if resume_state is not None:
        prog.message(f"resuming {label} after epoch {start_epoch} from {paths.last}")
    method.train()
    try:
        for epoch in range(start_epoch, tcfg.epochs):
            prog.epoch_start(epoch, epoch)
            # The shuffle order depends only on (seed, epoch): a resumed run sees the same batches.
            g.manual_seed(cfg.seed * 100003 + epoch)
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
                out = optimizer_step(method, optimizer, batch, device, s.amp, clip_groups, tcfg.grad_clip)
                scheduler.step()
                step_logs = method.after_step(global_step) or {}
                losses = {t: float(v.detach()) for t, v in out.losses.items()}
                bad = [t for t, v in losses.items() if not math.isfinite(v)]
                if bad:
                    raise FloatingPointError(
                        f"the {', '.join(bad)} loss became {losses[bad[0]]} at epoch {epoch + 1}, "
                        f"step {i + 1}; lower train.lr or set train.grad_clip")
                for t, v in losses.items():
                    sums[t] = sums.get(t, 0.0) + v
                n_steps += 1
                images_seen += batch["image"].shape[0]
                if tcfg.log_every and global_step % tcfg.log_every == 0:
                    history["steps"].append({"step": global_step, "epoch": epoch,
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
            entry = {"epoch": epoch, "train_loss": mean_losses, "lr": scheduler.get_last_lr()[0],
                     "time_s": round(epoch_time, 3),
                     "images_per_s": round(n_steps * tcfg.batch_size / max(epoch_time, 1e-9), 2),
                     "logs": elogs, "metrics": None}
            last = epoch == tcfg.epochs - 1
            if last or (tcfg.eval_every and (epoch + 1) % tcfg.eval_every == 0):
                entry["metrics"] = {k: evaluate(m, s.tasks, val_loader, device, s.amp, s.channels_last)
                                    for k, m in method.eval_models().items()}
            history["epochs"].append(entry)
            atomic_torch_save(paths.last, {
                "epoch": epoch + 1, "model": method.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "method_extra": method.extra_state(), "rng": _rng_state(), "history": history,
                "train_time": train_time, "images_seen": images_seen, "config": cfg.data})
            line = f"epoch {epoch + 1}/{tcfg.epochs} loss {_fmt_losses(mean_losses)}"
            if entry["metrics"]:
                main = entry["metrics"].get("", {})
                line += " | " + " ".join(
                    f"{t}.{k}={v:.3f}" for t, ms in main.items() for k, v in list(ms.items())[:1])
            prog.epoch_end(line)
            if opts.on_epoch:
                opts.on_epoch(epoch, entry)
    finally:
        prog.close()

    record = _make_record(cfg, s, paths, history, train_time, images_seen, t_wall, val_loader, opts)
    atomic_torch_save(paths.final, {"model": method.state_dict(), "config": cfg.data})
    atomic_write_json(paths.record, record)
    paths.last.unlink(missing_ok=True)
    record["_path"] = str(paths.record)
    return record


def _report_epoch(history: dict, rule: str, method: Method) -> dict:
    evaluated = [e for e in history["epochs"] if e["metrics"]]
    allowed = [e for e in evaluated if method.reportable(e["epoch"])]
    evaluated = allowed or evaluated[-1:]
    if rule == "last":
        return evaluated[-1]
    if rule == "best_train_loss":
        return min(evaluated, key=lambda e: sum(e["train_loss"].values()))
    raise UserError(f"train.report must be last or best_train_loss, got {rule!r}")


def _make_record(cfg, s: Setup, paths: RunPaths, history, train_time, images_seen, t_wall,
                 val_loader, opts) -> dict:
    import timm

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
    return {
        "schema": SCHEMA_VERSION,
        "id": paths.rel.as_posix(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.name("method"), "backbone": cfg.name("backbone"),
        "dataset": cfg.name("dataset"), "dataset_family": getattr(s.dataset, "family", "") or cfg.name("dataset"),
        "preset": cfg.preset, "seed": cfg.seed,
        "config_hash": cfg.hash, "config": cfg.data,
        "tasks": {t: {"channels": task.channels,
                      "metrics": {m.key: ("higher" if m.higher_is_better else "lower") for m in task.metrics}}
                  for t, task in s.tasks.items()},
        "metrics": metrics.get("", {}),
        "extra_metrics": {k: v for k, v in metrics.items() if k},
        "report": {"rule": cfg.train.report, "epoch": chosen["epoch"]},
        "history": history,
        "params": {"training_system": count_parameters(method),
                   "deployable": count_parameters(method.deployable())},
        "timing": {"wall_s": round(time.perf_counter() - t_wall, 2),
                   "train_s": round(train_time, 2),
                   "train_images_per_s": round(images_seen / max(train_time, 1e-9), 2),
                   "inference_ms_per_image": round(latency, 3)},
        "memory": peak_memory_mb(s.device),
        "device": {"type": s.device.type, "name": dev_name, "amp": s.amp,
                   "channels_last": s.channels_last, "threads": torch.get_num_threads()},
        "versions": {"mtlbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
        "git_commit": git_commit(),
        "checkpoint": rel_final.as_posix(),
        "method_info": method.summary_info(),
    }


def baseline_delta(record: dict, out: Path, reference: str = "baseline") -> tuple[float | None, str]:
    """Δ of a record against the ``reference`` run of the same setting.

    Returns ``(delta, the reference record's path)``, or ``(None, why not)``.
    """
    from .delta import delta

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
