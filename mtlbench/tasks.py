"""Dense prediction tasks: output channels, loss, metrics and their directions.

Targets follow the MTAN data conventions (see ``results/README.md``):

* ``semseg``: ``(B, H, W)`` long, classes ``0..C-1``, ``-1`` = ignore;
* ``depth``: ``(B, 1, H, W)`` float, ``0`` = invalid;
* ``normal``: ``(B, 3, H, W)`` float unit vectors, ``(0, 0, 0)`` = invalid.

Losses are computed in float32 even under autocast, so bf16 training does not
change the loss arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .metrics import DepthMetric, Metric, NormalMetric, SegmentationMetric


@dataclass(frozen=True)
class MetricInfo:
    """A metric's key in records, its printed label, its direction and how to print it.

    ``precision``: decimals in tables (depth errors are small numbers: 4);
    ``primary``: the one metric that stands for the task in curves and
    one-number summaries (at most one per task; the first metric otherwise).
    """

    key: str
    label: str
    higher_is_better: bool
    precision: int = 2
    primary: bool = False

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _check_shapes(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    # A (B, H, W) prediction against a (B, 1, H, W) target would broadcast silently.
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction shape {tuple(pred.shape)} does not match "
                         f"target shape {tuple(target.shape)}")


class Task:
    """A dense prediction task. Subclasses define the loss and the metrics."""

    name: str = ""
    kind: str = "regression"  # or "classification"
    channels: int = 1
    metrics: tuple[MetricInfo, ...] = ()

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def new_metric(self) -> Metric:
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Turn a raw network output into the task's prediction (for inference)."""
        return output

    @property
    def primary_metric(self) -> MetricInfo:
        """The metric flagged ``primary``, else the first one."""
        return next((m for m in self.metrics if m.primary), self.metrics[0])

    def describe(self) -> dict:
        """What a run record keeps about the task (``record["tasks"][name]``)."""
        return {"channels": self.channels,
                "metrics": {m.key: ("higher" if m.higher_is_better else "lower") for m in self.metrics},
                "primary": self.primary_metric.key,
                "labels": {m.key: m.label for m in self.metrics},
                "precision": {m.key: m.precision for m in self.metrics}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channels={self.channels})"


class SemSeg(Task):
    """Semantic segmentation: cross-entropy over labelled pixels (ignore -1)."""

    name = "semseg"
    kind = "classification"
    metrics = (MetricInfo("miou", "mIoU", True, primary=True), MetricInfo("pacc", "pAcc", True))

    def __init__(self, num_classes: int):
        self.num_classes = self.channels = int(num_classes)

    def loss(self, pred, target):
        pred = pred.float()
        if not bool((target >= 0).any()):
            # Every pixel ignored: contribute zero (cross_entropy would give NaN).
            return pred.sum() * 0.0
        return F.cross_entropy(pred, target.long(), ignore_index=-1)

    def new_metric(self):
        return SegmentationMetric(self.num_classes)

    def predict(self, output):
        return output.argmax(1)

    def __repr__(self):
        return f"SemSeg(num_classes={self.num_classes})"


class Depth(Task):
    """Depth (or disparity): L1 over valid pixels (target != 0)."""

    name = "depth"
    channels = 1
    metrics = (MetricInfo("abs_err", "abs", False, precision=4, primary=True),
               MetricInfo("rel_err", "rel", False, precision=4))

    def loss(self, pred, target):
        _check_shapes(self.name, pred, target)
        mask = (target != 0).to(torch.float32)
        diff = (pred.float() - target.float()).abs() * mask
        return diff.sum() / mask.sum().clamp_min(1.0)

    def new_metric(self):
        return DepthMetric()


class Normal(Task):
    """Surface normals: 1 - cosine over valid pixels, the prediction L2-normalised."""

    name = "normal"
    channels = 3
    metrics = (
        MetricInfo("within_11.25", "<11.25°", True),
        MetricInfo("within_22.5", "<22.5°", True),
        MetricInfo("within_30", "<30°", True),
        MetricInfo("mean", "mean", False, primary=True),
        MetricInfo("median", "median", False),
    )

    def loss(self, pred, target):
        _check_shapes(self.name, pred, target)
        target = target.float()
        mask = (target.sum(1) != 0).to(torch.float32)  # MTAN's validity rule
        n = mask.sum()
        if not bool(n > 0):
            return pred.float().sum() * 0.0  # no valid pixel: zero, like the other tasks
        cos = (F.normalize(pred.float(), dim=1) * target).sum(1)
        return 1.0 - (cos * mask).sum() / n

    def new_metric(self):
        return NormalMetric()

    def predict(self, output):
        return F.normalize(output, dim=1)


def metric_directions(tasks: dict[str, Task]) -> dict[str, dict[str, bool]]:
    """``{task: {metric_key: higher_is_better}}`` for :func:`mtlbench.delta.delta`."""
    return {name: {m.key: m.higher_is_better for m in t.metrics} for name, t in tasks.items()}


