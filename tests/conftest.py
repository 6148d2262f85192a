"""Shared fixtures: tiny synthetic data in a per-session cache, CPU-only, few threads; a toy
backbone; builders of smoke configs, task sets and tiny batches.

Fixtures for other test files:

* ``toy_backbone``: registers :class:`ToyBackbone` in ``BACKBONES`` under
  :data:`TOY_BACKBONE` for the test (removed afterwards) and yields the name, so
  configs, ``trainer.build`` and ``mtlbench run --backbone test_toy`` work with it;
* ``toy_factory(tasks, **options)``: a :class:`ToyBackbone` directly (no registry);
* ``smoke_config(method, backbone="vit_tiny", *sets, full=False)``: a resolved ``smoke`` preset
  config on CPU, the backbone shrunk by its ``test_overrides`` unless ``full``;
* ``shrink_sets(backbone)`` (import from conftest): those overrides as ``--set`` strings;
  ``shrink_argv(backbone)``: the same as command-line arguments;
* ``nyu_tasks()``: the NYUv2 task set (13-class semseg, depth, normal);
* ``tiny_batch(b=2, h=32, w=48, seed=0, tasks=None)``: a random batch with valid targets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlbench.api import BackboneFactory, Encoder

#: the registry name of the toy backbone while ``toy_backbone`` is active
TOY_BACKBONE = "test_toy"


def pytest_configure(config):
    # one torch thread per xdist worker (the workers share the cores), else up to two
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // max(workers, 1))))
    # Records and checkpoints are still written to a temporary file and renamed (atomic), but
    # not fsync'ed: forcing a few hundred files to disk was ~5% of the suite's time.
    # Subprocesses inherit it.  tests/test_records.py checks the fsync path itself.
    os.environ.setdefault("MTLBENCH_FSYNC", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread for the test: the toy models are so small that intra-op threads only
    add overhead on a shared CPU (30x measured); use with ``pytestmark = usefixtures``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _synthetic_cache(tmp_path_factory):
    """Keep generated synthetic data out of the user's cache, shared across the session."""
    old = os.environ.get("MTLBENCH_CACHE")
    os.environ["MTLBENCH_CACHE"] = str(tmp_path_factory.mktemp("mtlbench-cache"))
    yield
    if old is None:
        os.environ.pop("MTLBENCH_CACHE", None)
    else:
        os.environ["MTLBENCH_CACHE"] = old


# ---------------------------------------------------------------------------
# a toy backbone: values that can be followed by hand
# ---------------------------------------------------------------------------

class ToyEncoder(Encoder):
    """State = image + ``offset`` (3 channels); layer i multiplies it by a learnable scale (1 at start).

    Every feature is thus a known multiple of the input, so stitching and
    distillation results can be computed by hand.
    """

    def __init__(self, offset: float = 0.0, n_layers: int = 2, stitchable: bool = True):
        super().__init__()
        self.offset = offset
        self.num_layers = n_layers
        self.layer_channels = [3] * n_layers
        self.out_channels = 3
        self.supports_stitching = stitchable
        self.scale = nn.Parameter(torch.ones(n_layers))

    def begin(self, x):
        return x + self.offset

    def layer(self, i, state):
        return state * self.scale[i]

    def layer_feature(self, state):
        return state

    def end(self, state):
        return state

    def last_shared_parameters(self):
        return [self.scale]


class PassthroughHead(nn.Module):
    """Returns the final features unchanged (3 channels): predictions equal the encoder's output."""

    def forward(self, feat, size):
        return feat


class ConvHead(nn.Module):
    """A 1x1 convolution to the task's channels, resized to the input (``mode``)."""

    def __init__(self, channels: int, in_channels: int = 3, mode: str = "bilinear"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1)
        self.mode = mode

    def forward(self, feat, size):
        kw = {"align_corners": False} if self.mode == "bilinear" else {}
        return F.interpolate(self.conv(feat), size=tuple(size), mode=self.mode, **kw)


@dataclass
class ToyConfig:
    """Options of the toy backbone."""

    n_layers: int = 2  # encoder layers
    stitchable: bool = True  # Encoder.supports_stitching
    heads: str = "conv"  # "conv" (1x1 conv per task) or "identity" (the 3-channel features themselves)


class ToyBackbone(BackboneFactory):
    """A cheap stand-in for a backbone: each new encoder gets the next offset (1, 2, 3, ...)."""

    Config = ToyConfig
    summary = "test-only toy backbone (tests/conftest.py)"

    def __init__(self, cfg, tasks):
        super().__init__(cfg if cfg is not None else ToyConfig(), tasks)
        self.built = 0

    def encoder(self, tasks):
        self.built += 1
        return ToyEncoder(float(self.built), self.cfg.n_layers, self.cfg.stitchable)

    def head(self, task):
        return PassthroughHead() if self.cfg.heads == "identity" else ConvHead(task.channels)


class ConvEncoder(Encoder):
    """Shared 1x1 convolutions: a stem, then ``n_layers`` shared layers, the last one ``shared``
    (GradNorm's W); with ``tasks``, task-specific gates on the final features (a dict per task,
    as MTAN's).  ``linear``: no tanh and plain linear gates, so every gradient is a
    hand-checkable product (the gradient methods' tests); otherwise tanh after the stem and
    between layers and sigmoid gates."""

    def __init__(self, c: int = 8, tasks=(), n_layers: int = 1, linear: bool = False):
        super().__init__()
        self.linear = linear
        self.stem = nn.Conv2d(3, c, 1)
        self.shared = nn.Conv2d(c, c, 1)
        self.gates = nn.ModuleDict({t: nn.Conv2d(c, c, 1) for t in tasks})
        # made last, so a one-layer encoder draws its initial weights as it always did
        self.more = nn.ModuleList([nn.Conv2d(c, c, 1) for _ in range(n_layers - 1)])
        self.num_layers = n_layers
        self.layer_channels = [c] * n_layers
        self.out_channels = c

    def begin(self, x):
        s = self.stem(x)
        return s if self.linear else torch.tanh(s)

    def layer(self, i, state):
        last = i == self.num_layers - 1
        out = (self.shared if last else self.more[i])(state)
        return out if (self.linear or last) else torch.tanh(out)

    def layer_feature(self, state):
        return state

    def end(self, state):
        if not self.gates:
            return state
        if self.linear:
            return {t: g(state) for t, g in self.gates.items()}
        return {t: state * torch.sigmoid(g(state)) for t, g in self.gates.items()}

    def shared_parameters(self):
        return [*self.stem.parameters(), *self.more.parameters(), *self.shared.parameters()]

    def last_shared_parameters(self):
        return [self.shared.weight, self.shared.bias]


@dataclass
class ConvToyConfig:
    """Options of the convolutional toy backbone."""

    channels: int = 8
    per_task: bool = False  # task-specific final features (a dict), as MTAN's
    n_layers: int = 1
    linear: bool = False
    head_mode: str = "nearest"  # how heads resize to the input


class ConvToyBackbone(BackboneFactory):
    """A tiny convolutional backbone for method tests (milliseconds per step)."""

    Config = ConvToyConfig
    summary = "test-only convolutional toy backbone (tests/conftest.py)"

    def __init__(self, cfg, tasks):
        super().__init__(cfg if cfg is not None else ConvToyConfig(), tasks)

    def encoder(self, tasks):
        c = self.cfg
        return ConvEncoder(c.channels, tasks if c.per_task else (), c.n_layers, c.linear)

    def head(self, task):
        return ConvHead(task.channels, self.cfg.channels, self.cfg.head_mode)


@pytest.fixture
def toy_factory():
    """``make(tasks, **ToyConfig options)``: a :class:`ToyBackbone` for ``tasks``."""
    def make(tasks, **options):
        return ToyBackbone(ToyConfig(**options), tasks)

    return make


@pytest.fixture
def toy_backbone():
    """The toy backbone registered in ``BACKBONES`` as :data:`TOY_BACKBONE` for one test."""
    from mtlbench.registry import BACKBONES

    BACKBONES.add(TOY_BACKBONE, ToyBackbone, origin="tests/conftest.py")
    try:
        yield TOY_BACKBONE
    finally:
        BACKBONES._entries.pop(TOY_BACKBONE, None)


# ---------------------------------------------------------------------------
# configs, tasks, batches
# ---------------------------------------------------------------------------

def shrink_sets(backbone: str) -> list[str]:
    """``--set`` strings of ``backbone``'s ``test_overrides``: its architecture, shrunk (a few
    narrow blocks, small heads) so a test builds and trains it in a fraction of a second."""
    import json

    from mtlbench.registry import BACKBONES

    # JSON values are YAML flow values, which is how --set parses them
    return [f"backbone.{k}={json.dumps(v)}" for k, v in BACKBONES.get(backbone).test_overrides.items()]


def shrink_argv(backbone: str) -> list[str]:
    """:func:`shrink_sets` as command-line arguments (``--set S`` each), for ``mtlbench run``."""
    return [a for s in shrink_sets(backbone) for a in ("--set", s)]


@pytest.fixture(scope="session")
def smoke_config():
    """``make(method, backbone="vit_tiny", *sets, full=False)``: the resolved ``smoke`` preset on
    CPU, with the backbone shrunk by its ``test_overrides`` (``sets`` come after them and win);
    ``full=True``: the backbone at its full (default) size."""
    def make(method: str, backbone: str = "vit_tiny", *sets: str, full: bool = False):
        from mtlbench.config import resolve

        shrink = [] if full else shrink_sets(backbone)
        return resolve(preset="smoke", flags=[("method.name", method, "--method"),
                                              ("backbone.name", backbone, "--backbone"),
                                              ("train.device", "cpu", "--device")],
                       sets=[*shrink, *sets])

    return make


def _nyu_tasks():
    from mtlbench.tasks import Depth, Normal, SemSeg

    return {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}


@pytest.fixture(scope="session")
def nyu_tasks():
    """``make()``: the NYUv2 task set, fresh each call."""
    return _nyu_tasks


@pytest.fixture(scope="session")
def tiny_batch():
    """``make(b=2, h=32, w=48, seed=0, tasks=None)``: a random batch (labels in -1..C-1, depth > 0,
    unit normals) for ``tasks`` (default: the NYUv2 set)."""
    def make(b: int = 2, h: int = 32, w: int = 48, seed: int = 0, tasks=None):
        tasks = tasks if tasks is not None else _nyu_tasks()
        g = torch.Generator().manual_seed(seed)
        batch = {"image": torch.rand(b, 3, h, w, generator=g)}
        for name, task in tasks.items():
            if task.kind == "classification":
                batch[name] = torch.randint(-1, task.channels, (b, h, w), generator=g)
            elif task.channels == 3:
                batch[name] = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
            else:
                batch[name] = torch.rand(b, task.channels, h, w, generator=g) + 0.1
        return batch

    return make
