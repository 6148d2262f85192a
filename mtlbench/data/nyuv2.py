"""NYUv2 as preprocessed by MTAN (795 train / 654 val images, 288x384).

Tasks: 13-class semantic segmentation (-1 = ignore), depth in metres
(0 = invalid) and surface normals ((0, 0, 0) = invalid).  The layout and the
checks are in :mod:`mtlbench.data.mtan`; pass the directory with
``--data-root DIR`` (``dataset.root``).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import DATASETS
from .base import DataConfig
from .mtan import NYUV2, MTANPlugin, native_size


@DATASETS.register("nyuv2")
class NYUv2(MTANPlugin):
    """NYUv2 (MTAN preprocessing, 795/654 images): 13-class semseg, depth (m), surface normals."""

    summary = "NYUv2 (MTAN preprocessing, 795 train / 654 val): 13-class semseg, depth (m), normals; needs --data-root"
    family = "nyuv2"
    display_name = "NYUv2"
    spec = NYUV2

    @dataclass
    class Config(DataConfig):
        """NYUv2 options; ``root`` (``--data-root``) is required."""

        image_size: list[int] = native_size(288, 384)  # (H, W); the files are 288x384
