"""Cityscapes as preprocessed by MTAN (2975 train / 500 val images, 128x256).

Tasks: 7-class semantic segmentation (``label_7/``, or ``label/`` as LibMTL
names it; -1 = ignore) and disparity (the "depth" task; 0 = invalid).  The
layout and the checks are in :mod:`mtlbench.data.mtan`; pass the directory
with ``--data-root DIR`` (``dataset.root``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import DATASETS
from .base import DataConfig
from .mtan import CITYSCAPES, MTANPlugin, native_size


@DATASETS.register("cityscapes")
class Cityscapes(MTANPlugin):
    """Cityscapes (MTAN preprocessing, 2975/500 images): 7-class semseg and disparity."""

    summary = "Cityscapes (MTAN preprocessing, 2975 train / 500 val): 7-class semseg, disparity; needs --data-root"
    family = "cityscapes"
    display_name = "Cityscapes"
    spec = CITYSCAPES

    @dataclass
    class Config(DataConfig):
        """Cityscapes options; ``root`` (``--data-root``) is required."""

        image_size: list[int] = native_size(128, 256)  # (H, W); the common release is 128x256
