"""Side by side on the CPU: mtlbench against LibMTL 1.1.5, the same DeepLabV3 network.

What is compared
    LibMTL's NYUv2 example setup, built through LibMTL's own ``Trainer``: hard
    parameter sharing (``LibMTL.architecture.HPS``), encoder
    ``LibMTL.model.resnet_dilated('resnet50')`` (dilated ResNet-50, output
    stride 8), one DeepLabV3 ASPP head per task (segmentation 13 classes,
    depth 1, normal 3), predictions upsampled to the input size in the
    Trainer's ``process_preds`` (bilinear, ``align_corners=True``) as the
    example does, Adam at LibMTL's defaults (lr 1e-4, weight decay 1e-5, no
    scheduler), fp32.  Against it: mtlbench's ``deeplabv3`` backbone
    (backbones/deeplab.py) with the ``baseline`` method at the same head
    sizes, built through ``mtlbench.config.resolve`` + ``mtlbench.trainer.build``
    and stepped by ``mtlbench.trainer.optimizer_step`` with the optimisers of
    ``Optimisation`` (set to Adam, lr 1e-4, weight decay 1e-5, constant
    schedule, so both sides run the same optimiser), in two modes: ``fp32``
    (``train.amp=fp32``, no channels_last) and ``default``, the backbone's
    default on this device (``train.amp=auto``: bf16 autocast + channels_last
    on CPUs with native bf16, fp32 elsewhere; the row says which it was).

    A second comparison, GradNorm (alpha 1.5 on both sides): LibMTL's
    ``weighting.GradNorm`` (default ``rep_grad=False``) back-propagates each
    task separately through the whole network, copies every task's gradient of
    all shared (encoder) parameters into a (tasks x 23.5M) matrix and takes the
    norms there; ours (``--method gradnorm``, methods/gradnorm.py, default
    ``shared_params=last``) takes the norms on the last shared layer and
    back-propagates the encoder once.  ``--gradnorm-shared last,all`` adds our
    LibMTL-like ``shared_params=all`` variant.  ``--compare ew`` or
    ``--compare gradnorm`` times one comparison only (default: both).

    Parameter counts: LibMTL's as its ``Trainer`` prints them (its own
    ``count_parameters``), ours by ``mtlbench.api.count_parameters``; the EW
    pair has 71,888,721 each (GradNorm adds its 3 task weights on both sides).
    If they ever differ, the script prints the encoder/head split of each.

The step that is timed
    mtlbench: ``optimizer_step`` (zero_grad, training_step under the trainer's
    autocast, the method's backward, the gradient-norm check, every optimiser's
    step), then ``Optimisation.schedule`` and ``Method.after_step``: what the
    trainer does per batch.

    LibMTL: ``Trainer.train`` cannot be timed per step and does not run as is
    (see the workarounds), so the script makes, per batch, the same calls in the
    same order as the body of ``Trainer.train``'s batch loop (``multi_input``
    False): ``trainer.model(inputs)``, ``trainer.process_preds``,
    ``trainer._compute_loss`` (LibMTL's per-task ``AbsLoss._update_loss``),
    ``trainer.meter.update``, ``trainer.optimizer.zero_grad()``,
    ``trainer.model.backward(losses, **weight_args)`` (the weighting's
    backward), ``trainer.optimizer.step()``.  Data loading is outside both
    timings (the same batch, already in memory, every step).  GradNorm is
    timed on its real path: LibMTL runs plain EW during epoch 0 and GradNorm
    from epoch 1, so ``model.epoch`` is set to 1 and ``train_loss_buffer``
    (the epoch-0 mean losses, L_i(0)) to ones; those values change the weights,
    not the work.

    Losses: both sides use mtlbench's task losses (cross-entropy with ignore
    index -1; L1 and 1 - cosine over valid pixels), on LibMTL's side wrapped in
    ``LibMTL.loss.AbsLoss`` subclasses, so the comparison is of the frameworks,
    not of loss formulas.  Training metrics: the NYUv2 example's metric classes
    are not part of the pip package; a no-op ``AbsMetric`` stands in (our trainer
    computes no training metrics per step either).

    The head on LibMTL's side is torchvision's
    ``torchvision.models.segmentation.deeplabv3.DeepLabHead(2048, C)``: LibMTL
    1.1.5's wheel ships no DeepLab head (its NYUv2 example brings one in
    ``examples/nyu/aspp.py``, later LibMTL versions as
    ``LibMTL.model.decoder.DeepLabHead``), and those are the same network as
    torchvision's (ASPP 256 at rates 12/24/36 with image pooling, dropout 0.5,
    3x3 conv 256 + BN + ReLU, 1x1 conv to C); the parameter counts agree.

LibMTL on a CPU and a current torch: the workarounds (all in this script; no
LibMTL file is edited)
    1. ``LibMTL/model/resnet.py`` imports ``load_state_dict_from_url`` from
       ``torchvision.models.utils``, a module current torchvision no longer has
       (0.29 here), so ``import LibMTL`` fails.  Before importing LibMTL, a
       stand-in module of that name is put in ``sys.modules`` exporting
       ``torch.hub.load_state_dict_from_url`` (only if the real one is missing).
    2. ``Trainer.__init__`` hard-codes ``self.device = torch.device('cuda:0')``
       and moves the model there (and ``_compute_loss`` and the weightings put
       their tensors on ``self.device``), which fails without CUDA.  Our
       ``Trainer`` subclass (a user subclasses it anyway, as the NYUv2 example
       does for ``process_preds``) sets ``self.device`` to the CPU in
       ``_prepare_model``, which ``__init__`` calls right after that line and
       before anything touches the device; the model's ``device`` attribute,
       which the weightings use, then is the CPU too.  No ``.cuda()`` call was
       found elsewhere in the package.
    3. ``resnet_dilated('resnet50')`` defaults to ``pretrained=True`` and
       downloads ImageNet weights; this offline benchmark passes
       ``pretrained=False`` (weights do not change the work).
    4. LibMTL's gradient weightings (GradNorm here) zero the encoder's
       gradients between the per-task backward passes with
       ``self.encoder.zero_grad()`` and later write ``param.grad.data``; torch 2
       made ``zero_grad`` default to ``set_to_none=True``, so the gradients are
       None there and GradNorm fails with ``AttributeError``.  The model's
       ``zero_grad_share_params`` is replaced on the instance by one calling
       ``zero_grad(set_to_none=False)``, torch 1's behaviour, which LibMTL
       was written for.
    5. (Not needed for the timing, noted for users.)  ``Trainer._process_data``
       calls ``iterator.next()``, which current DataLoader iterators lack, so
       ``Trainer.train`` fails on its first batch with torch 2; this is one
       reason the per-batch calls are made directly.

How it is timed
    One process; every runner is built first, then takes ``--warmup`` untimed
    steps; then ``--rounds`` interleaved rounds, each of ``--steps`` timed steps
    per runner in the order LibMTL, ours fp32, ours default (EW, then GradNorm).
    Reported per row: the fastest and the median wall time per step (other load
    on a shared machine only adds time, so the fastest is the least disturbed),
    images/s from the fastest step and its ratio to LibMTL's in the same
    comparison, the median process CPU time per step (all threads; being
    descheduled does not inflate it) and its ratio, and memory.  Memory: each
    runner in a fresh subprocess (so allocator state from one never serves
    another; glibc told to return freed blocks at once, as in
    bench_okd_step.py): ``--warmup`` steps (at least 1, so Adam's moments
    exist), gradients dropped, then the rise of the process's peak resident
    set (``VmHWM`` reset through ``/proc/self/clear_refs``) over one step
    ("step peak"), and the resident set held before that step over the
    process's before the model was built ("held": weights, Adam moments,
    everything the model needs between steps).

    nice -n 5 .venv/bin/python benchmarks/bench_libmtl.py                     # 288x384, batch 2, both comparisons
    nice -n 5 .venv/bin/python benchmarks/bench_libmtl.py --threads 1 --compare ew --no-memory
    .venv/bin/python benchmarks/bench_libmtl.py --gradnorm-shared last,all    # + our LibMTL-like variant
    .venv/bin/python benchmarks/bench_libmtl.py --smoke                       # seconds (tests/test_bench_libmtl.py)

``--smoke``: 64x64, batch 2, 1 round x 1 step, no warm-up, 1 thread, no
memory subprocesses (``--memory`` turns them on); its figures mean nothing.
Batch 2, not 1, there and everywhere: torchvision's (and LibMTL's example's)
ASPP image-pooling branch applies BatchNorm to a 1x1 map, which raises on a
batch of one in training mode (ours uses the running statistics there).

Threads on a busy machine: with OpenMP's default (active, spinning) waiting,
2 threads on 2 cores shared with other jobs were erratic and several times
slower than 1 (a 64x64 step: 6-25 s with 2 threads, 1.8-2.6 s with 1, 2.1-3.1 s
with 2 and ``OMP_WAIT_POLICY=PASSIVE``).  There, use ``--threads 1`` (the CPU
time then counts the work alone) or set ``OMP_WAIT_POLICY=PASSIVE``.

Needs LibMTL, a benchmark-only requirement kept out of mtlbench's
dependencies: ``pip install --no-deps -r benchmarks/requirements-libmtl.txt``
(``--no-deps``: LibMTL 1.1.5 pins old numpy/torch versions pip would otherwise
try to install).  Without it the script says so and exits with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlbench.api import TrainContext, count_parameters
from mtlbench.config import resolve
from mtlbench.tasks import Depth, Normal, SemSeg
from mtlbench.trainer import Optimisation, autocast_ctx, build, optimizer_step

INSTALL_HINT = "pip install --no-deps -r benchmarks/requirements-libmtl.txt"
#: LibMTL's default optimiser (LibMTL.config: --optim adam --lr 1e-4 --weight_decay 1e-5); ours is set alike
LR, WEIGHT_DECAY = 1e-4, 1e-5
GRADNORM_ALPHA = 1.5
#: the NYUv2 example's task names and output channels -> (mtlbench task, batch key)
NYU_TASKS = {"segmentation": (lambda: SemSeg(13), "semseg"),
             "depth": (Depth, "depth"),
             "normal": (Normal, "normal")}
COMPARISONS = {"ew": ("EW", "baseline", "EW"), "gradnorm": ("GradNorm", "gradnorm", "GradNorm")}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}


# ---------------------------------------------------------------------------
# LibMTL: import with the workarounds
# ---------------------------------------------------------------------------

def load_libmtl() -> types.SimpleNamespace:
    """Import LibMTL (workaround 1 applied) and define the pieces a user would write.

    Exits with status 2 and an install hint when LibMTL is not importable.
    """
    try:
        importlib.import_module("torchvision.models.utils")  # present in torchvision < 0.13
    except ImportError:
        # Workaround 1: LibMTL/model/resnet.py imports load_state_dict_from_url from here.
        shim = types.ModuleType("torchvision.models.utils")
        shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
        sys.modules["torchvision.models.utils"] = shim
    try:
        import LibMTL
        from LibMTL import Trainer
        from LibMTL.architecture import HPS
        from LibMTL.loss import AbsLoss
        from LibMTL.metrics import AbsMetric
        from LibMTL.model import resnet_dilated
        from LibMTL.weighting import EW, GradNorm
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0] == "LibMTL"
        what = ("LibMTL is not installed" if missing else
                f"LibMTL is installed but does not import ({type(exc).__name__}: {exc})")
        print(f"bench_libmtl: {what}. It is a benchmark-only requirement, not a dependency of "
              f"mtlbench; install it into this environment with:\n    {INSTALL_HINT}", file=sys.stderr)
        raise SystemExit(2) from None
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    class TaskLoss(AbsLoss):
        """An mtlbench task's loss as a LibMTL loss (the same formula on both sides)."""

        def __init__(self, task):
            super().__init__()
            self.task = task

        def compute_loss(self, pred, gt):
            return self.task.loss(pred, gt)

    class NoMetric(AbsMetric):
        """Training metrics are not part of the timed step (ours computes none per step)."""

        def update_fun(self, pred, gt):
            pass

        def score_fun(self):
            return []

    class CPUTrainer(Trainer):
        """LibMTL's Trainer on the CPU (workarounds 2 and 4), with the NYUv2 example's upsampling."""

        img_size: tuple[int, int] = (288, 384)

        def _prepare_model(self, weighting, architecture, encoder_class, decoders):
            # Workaround 2: __init__ has just set self.device = cuda:0; nothing used it yet.
            self.device = torch.device("cpu")
            super()._prepare_model(weighting, architecture, encoder_class, decoders)
            encoder = self.model.encoder

            def zero_grad_share_params():  # workaround 4: torch 1's zero_grad (zeros, not None)
                encoder.zero_grad(set_to_none=False)

            self.model.zero_grad_share_params = zero_grad_share_params

        def process_preds(self, preds, task_name=None):
            # As the NYUv2 example's trainer: the heads predict at stride 8; upsample to the input.
            return {t: F.interpolate(p, self.img_size, mode="bilinear", align_corners=True)
                    for t, p in preds.items()}

    return types.SimpleNamespace(version=_libmtl_version(), module=LibMTL, Trainer=CPUTrainer, HPS=HPS,
                                 weightings={"EW": EW, "GradNorm": GradNorm}, resnet_dilated=resnet_dilated,
                                 DeepLabHead=DeepLabHead, TaskLoss=TaskLoss, NoMetric=NoMetric)


def _libmtl_version() -> str:
    try:
        from importlib.metadata import version
        return version("LibMTL")
    except Exception:  # pragma: no cover - metadata missing
        return "?"


# ---------------------------------------------------------------------------
# the batch and the runners
# ---------------------------------------------------------------------------

def make_batch(b: int, h: int, w: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(b, 3, h, w, generator=g),
            "semseg": torch.randint(-1, 13, (b, h, w), generator=g),
            "depth": torch.rand(b, 1, h, w, generator=g) + 0.1,
            "normal": F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)}


class Runner:
    """One framework + weighting + precision, with its timed steps."""

    comparison: str
    side: str
    mode: str
    params: int

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def step(self) -> None:
        raise NotImplementedError

    def drop_grads(self) -> None:
        raise NotImplementedError

    def timed_step(self) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        self.step()
        return time.perf_counter() - t0, time.process_time() - c0


class LibMTLRunner(Runner):
    side = "LibMTL"
    mode = "fp32"

    def __init__(self, lib, comparison: str, weighting: str, batch: dict, image_size: tuple[int, int]):
        super().__init__()
        self.comparison = comparison
        torch.manual_seed(0)
        task_dict = {name: {"metrics": [], "metrics_fn": lib.NoMetric(), "loss_fn": lib.TaskLoss(make()),
                            "weight": []} for name, (make, _) in NYU_TASKS.items()}
        channels = {name: make().channels for name, (make, _) in NYU_TASKS.items()}
        decoders = torch.nn.ModuleDict({t: lib.DeepLabHead(2048, c) for t, c in channels.items()})
        weight_args = {"alpha": GRADNORM_ALPHA} if weighting == "GradNorm" else {}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # LibMTL prints its parameter count and log format
            self.trainer = lib.Trainer(
                task_dict=task_dict, weighting=lib.weightings[weighting], architecture=lib.HPS,
                encoder_class=lambda: lib.resnet_dilated("resnet50", pretrained=False),  # workaround 3
                decoders=decoders, rep_grad=False, multi_input=False,
                optim_param={"optim": "adam", "lr": LR, "weight_decay": WEIGHT_DECAY}, scheduler_param=None,
                arch_args={}, weight_args=weight_args)
        m = re.search(r"Total Params:\s*(\d+)", printed.getvalue())
        self.params = int(m.group(1)) if m else count_parameters(self.trainer.model)
        self.parts = {"encoder": count_parameters(self.trainer.model.encoder),
                      "heads": count_parameters(self.trainer.model.decoders)}
        tr = self.trainer
        tr.img_size = tuple(image_size)
        tr.model.train()
        # GradNorm works from epoch 1 on (epoch 0 is EW) and reads the epoch-0 mean losses.
        tr.model.epoch = 1
        tr.model.train_loss_buffer = np.ones((tr.task_num, 2))
        self.inputs = batch["image"]
        self.gts = {name: batch[key] for name, (_, key) in NYU_TASKS.items()}

    def step(self) -> None:
        # The body of LibMTL's Trainer.train batch loop (multi_input=False), minus data loading.
        tr = self.trainer
        preds = tr.model(self.inputs)
        preds = tr.process_preds(preds)
        losses = tr._compute_loss(preds, self.gts)
        tr.meter.update(preds, self.gts)
        tr.optimizer.zero_grad()
        tr.model.backward(losses, **tr.kwargs["weight_args"])
        tr.optimizer.step()

    def drop_grads(self) -> None:
        self.trainer.optimizer.zero_grad(set_to_none=True)


class OursRunner(Runner):
    side = "mtlbench"

    def __init__(self, comparison: str, method: str, mode: str, batch: dict, args, sets=()):
        super().__init__()
        self.comparison = comparison
        h, w = args.size
        extra = (["train.amp=fp32", "train.channels_last=false"] if mode == "fp32" else ["train.amp=auto"])
        cfg = resolve(preset="quick",
                      flags=[("method.name", method, "--method"), ("backbone.name", "deeplabv3", "--backbone"),
                             ("train.device", "cpu", "--device")],
                      sets=[f"dataset.height={h}", f"dataset.width={w}", f"dataset.image_size=[{h},{w}]",
                            f"train.batch_size={args.batch}", "train.optimizer=adam", f"train.lr={LR}",
                            f"train.weight_decay={WEIGHT_DECAY}", "train.scheduler=constant", *extra, *sets])
        self.s = s = build(cfg, with_data=False)
        self.method = m = s.method
        self.mode = (f"default ({s.amp}{'+cl' if s.channels_last else ''})" if mode == "default" else "fp32")
        if sets:
            self.mode += " " + " ".join(x.split(".", 1)[1] for x in sets)
        self.params = count_parameters(m)
        enc = m.model.encoder
        self.parts = {"encoder": count_parameters(enc), "heads": count_parameters(m.model.heads)}
        m.train()
        lead = m.leading_epochs(cfg.train.epochs)
        m.on_train_start(TrainContext(cfg.train.epochs, 1, s.device, None, leading_epochs=lead,
                                      autocast=lambda: autocast_ctx(s.device, s.amp), train_cfg=cfg.train))
        self.optim = Optimisation(m, cfg.train, 10_000)
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        self.batch = dict(batch, image=batch["image"].contiguous(memory_format=fmt))
        self.step_no = 0

    def step(self) -> None:
        # What the trainer does per batch (mtlbench.trainer.Training.step), minus data loading and logging.
        optimizer_step(self.method, self.optim, self.batch, self.s.device, self.s.amp)
        self.optim.schedule()
        self.method.after_step(self.step_no, self.batch)
        self.step_no += 1

    def drop_grads(self) -> None:
        self.optim.zero_grad()


def plan(args) -> list[tuple[str, callable]]:
    """``(key, build)`` for every runner, in timing order (per comparison: LibMTL, ours fp32, ours default)."""
    out = []
    variants = [v.strip() for v in args.gradnorm_shared.split(",") if v.strip()]
    for comp in args.compare.split(","):
        comp = comp.strip()
        label, ours, theirs = COMPARISONS[comp]
        out.append((f"{comp}/libmtl",
                    lambda lib, batch, label=label, theirs=theirs: LibMTLRunner(lib, label, theirs, batch,
                                                                                 args.size)))
        for v in (variants if comp == "gradnorm" else [None]):
            sets = () if v in (None, "last") else (f"method.shared_params={v}",)
            for mode in ("fp32", "default"):
                out.append((f"{comp}/ours/{mode}" + (f"/{v}" if sets else ""),
                            lambda lib, batch, label=label, ours=ours, mode=mode, sets=sets:
                            OursRunner(label, ours, mode, batch, args, sets)))
    return out


# ---------------------------------------------------------------------------
# memory: one runner per fresh process
# ---------------------------------------------------------------------------

def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_memory(key: str, args) -> dict:
    lib = load_libmtl()
    batch = make_batch(args.batch, *args.size)
    gc.collect()
    base = _status_kib("VmRSS")
    build_fn = dict(plan(args))[key]
    r = build_fn(lib, batch)
    for _ in range(max(args.warmup, 1)):
        r.step()
    r.drop_grads()
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    r.step()
    peak = _status_kib("VmHWM")
    return {"key": key, "held_mib": round((before - base) / 1024, 1),
            "step_peak_mib": round((peak - before) / 1024, 1)}


def memory_in_subprocess(key: str, args) -> dict | None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **MALLOC_ENV)
    argv = ["--size", *map(str, args.size), "--batch", str(args.batch), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--compare", args.compare, "--gradnorm-shared", args.gradnorm_shared]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker-memory", key],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"bench_libmtl: memory worker for {key} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def can_measure_memory() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()


# ---------------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", default="ew,gradnorm", help="comma list of: ew, gradnorm (default: both)")
    p.add_argument("--gradnorm-shared", default="last",
                   help="our gradnorm's shared_params variants, comma list of last, all (default: last)")
    p.add_argument("--size", type=int, nargs=2, default=(288, 384), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=2, help="timed steps per runner per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per runner first")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default 2; 1 with --smoke)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                   help="measure each row's memory in a subprocess (default: on; off with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="seconds: 64x64, batch 2, 1 round x 1 step, no warm-up, 1 thread, no memory "
                        "(for the tests; its figures mean nothing)")
    p.add_argument("--worker-memory", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.batch, args.rounds, args.steps, args.warmup = (64, 64), 2, 1, 1, 0
    if args.threads is None:
        args.threads = 1 if args.smoke else 2
    if args.memory is None:
        args.memory = not args.smoke
    args.size = tuple(args.size)
    for comp in args.compare.split(","):
        if comp.strip() not in COMPARISONS:
            p.error(f"--compare: unknown {comp!r}; choose from {', '.join(COMPARISONS)}")
    for v in args.gradnorm_shared.split(","):
        if v.strip() not in ("last", "all"):
            p.error(f"--gradnorm-shared: unknown {v!r}; choose from last, all")
    if args.batch < 2:
        p.error("--batch must be >= 2: the ASPP image-pooling BatchNorm of LibMTL's head raises on a "
                "batch of one in training mode")
    torch.set_num_threads(args.threads)

    if args.worker_memory:
        print(json.dumps(measure_memory(args.worker_memory, args)))
        return 0

    lib = load_libmtl()  # exits 2 with the install hint when missing
    start = datetime.now(timezone.utc)
    h, w = args.size
    steps_plan = plan(args)
    print(f"bench_libmtl {start:%Y-%m-%d %H:%M} UTC | {_cpu_name()}, {os.cpu_count()} CPUs | "
          f"torch {torch.__version__}, LibMTL {lib.version}, Python {platform.python_version()} | "
          f"{torch.get_num_threads()} threads | load average at start: {_load()}")
    print(f"DeepLabV3 (dilated ResNet-50 + 3 ASPP heads: 13/1/3), {h}x{w}, batch {args.batch}; "
          f"{args.warmup} warm-up step(s) per runner, then {args.rounds} interleaved round(s) x "
          f"{args.steps} timed step(s)", flush=True)

    mem: dict[str, dict] = {}
    if args.memory and can_measure_memory():
        for key, _ in steps_plan:
            print(f"  memory: {key} (subprocess) ...", file=sys.stderr, flush=True)
            res = memory_in_subprocess(key, args)
            if res is not None:
                mem[key] = res

    batch = make_batch(args.batch, h, w)
    runners: list[tuple[str, Runner]] = []
    for key, build_fn in steps_plan:
        runners.append((key, build_fn(lib, batch)))
    for key, r in runners:
        print(f"  warm-up: {key} ...", file=sys.stderr, flush=True)
        for _ in range(args.warmup):
            r.step()
    for rnd in range(args.rounds):
        for key, r in runners:
            for _ in range(args.steps):
                wall, cpu = r.timed_step()
                r.times.append(wall)
                r.cpu_times.append(cpu)
            print(f"  round {rnd + 1}/{args.rounds}: {key} "
                  + ", ".join(f"{t:.2f}" for t in r.times[-args.steps:]) + " s", file=sys.stderr, flush=True)
    end_load = _load()

    # parameter counts
    print()
    by_comp: dict[str, list[tuple[str, Runner]]] = {}
    for key, r in runners:
        by_comp.setdefault(r.comparison, []).append((key, r))
    for comp, rs in by_comp.items():
        theirs = rs[0][1]
        ours = [r for _, r in rs if r.side == "mtlbench"]
        same = all(r.params == theirs.params for r in ours)
        print(f"parameters ({comp}): LibMTL {theirs.params:,} (its Trainer's count) | mtlbench "
              f"{ours[0].params:,}: {'equal' if same else 'DIFFERENT'}")
        if not same:
            for r in (theirs, ours[0]):
                print(f"    {r.side}: encoder {r.parts['encoder']:,}, heads {r.parts['heads']:,}, "
                      f"other {r.params - r.parts['encoder'] - r.parts['heads']:,}")

    # the table
    hdr = (f"{'comparison':10s} {'side':8s} {'mode':26s} {'wall min':>8s} {'wall med':>8s} {'img/s':>7s} "
           f"{'vs LibMTL':>9s} {'cpu med':>8s} {'vs LibMTL':>9s} {'held MiB':>8s} {'peak MiB':>8s}")
    print("\n" + hdr)
    print("-" * len(hdr))
    for comp, rs in by_comp.items():
        ref = rs[0][1]
        ref_ips = args.batch / min(ref.times)
        ref_cpu = statistics.median(ref.cpu_times)
        for key, r in rs:
            wmin, wmed = min(r.times), statistics.median(r.times)
            cmed = statistics.median(r.cpu_times)
            ips = args.batch / wmin
            mm = mem.get(key)
            held = f"{mm['held_mib']:.0f}" if mm else "n/a"
            peak = f"{mm['step_peak_mib']:.0f}" if mm else "n/a"
            print(f"{comp:10s} {r.side:8s} {r.mode:26s} {wmin:8.2f} {wmed:8.2f} {ips:7.3f} "
                  f"{ips / ref_ips:8.2f}x {cmed:8.2f} {ref_cpu / cmed:8.2f}x {held:>8s} {peak:>8s}")
    print("-" * len(hdr))
    print("wall min/med: fastest/median wall s per step; img/s: batch / fastest step; vs LibMTL: img/s ratio "
          "(wall) and inverse CPU-time ratio (cpu med: median process CPU s per step, all threads), both "
          "against the LibMTL row of the same comparison; held: resident MiB the model keeps between steps "
          "(weights, Adam moments); peak: the resident-set rise during one step (fresh subprocess per row)")
    print(f"load average at end: {end_load}; wall {(datetime.now(timezone.utc) - start).total_seconds():.0f} s")
    print("\nwall/cpu s of the timed steps:")
    for key, r in runners:
        print(f"  {key:28s} " + ", ".join(f"{wt:.2f}/{ct:.2f}" for wt, ct in zip(r.times, r.cpu_times)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
