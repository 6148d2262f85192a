"""The dataset plugin contract.

A dataset plugin is a class registered in :data:`mtlbench.registry.DATASETS`
with a ``Config`` dataclass (a subclass of :class:`DataConfig`).  It names its
tasks and builds its ``train`` and ``val`` splits.  Every split yields dicts of
tensors without a batch axis::

    {"image": (3, H, W) float32 in [0, 1],
     "semseg": (H, W) int64, -1 = ignore,
     "depth": (1, H, W) float32, 0 = invalid,
     "normal": (3, H, W) float32, (0, 0, 0) = invalid}

holding only the keys of the dataset's tasks (plus ``"image"`` and ``"index"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..tasks import Task


@dataclass
class DataConfig:
    """Options shared by every dataset."""

    root: str | None = None  # data directory (real datasets); cache dir override (synthetic)
    image_size: list[int] = field(default_factory=lambda: [96, 128])  # (H, W) after resizing
    augment: bool = False  # random scale-crop {1, 1.2, 1.5} and horizontal flip (MTAN's)
    num_workers: int = 0  # DataLoader workers


class DatasetPlugin:
    """Base class of dataset plugins."""

    Config = DataConfig
    summary = ""
    #: the real dataset whose layout/tasks this one follows (tables use it)
    family: str = ""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    def tasks(self) -> dict[str, Task]:
        raise NotImplementedError

    def split(self, name: str) -> torch.utils.data.Dataset:
        """The ``"train"`` or ``"val"`` split."""
        raise NotImplementedError
