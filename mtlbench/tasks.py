"""Dense prediction tasks: output channels, loss, metrics and their directions.

Targets follow the MTAN data conventions (see ``results/README.md``):

* ``semseg``: ``(B, H, W)`` long, classes ``0..C-1``, ``-1`` = ignore;
* ``depth``: ``(B, 1, H, W)`` float, ``0`` = invalid;
* ``normal``: ``(B, 3, H, W)`` float unit vectors, ``(0, 0, 0)`` = invalid.

Losses are computed in float32 even under autocast, so bf16 training does not
change the loss arithmetic.

Each task may also bring an *input-blind reference*: :meth:`Task.reference_fitter`
returns a :class:`ReferenceFitter` that sees the training targets batch by batch
and then yields constant prediction maps (one per variant, the same for every
image), e.g. the per-pixel mean depth.  A network that does no better than such a
map on the validation split has not learned the task from its input
(:mod:`mtlbench.reference` fits and evaluates them).  The base class returns None:
no reference.
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

    def loss_count(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | int:
        """How many elements :meth:`loss` averages over (valid pixels, samples): under
        data-parallel training each rank's loss is weighted by its share of the global
        count, so the ranks together give the loss of the global batch
        (:func:`mtlbench.distributed.global_means`).  Default: the samples in the batch
        (right for a loss that is a mean over samples, or over a fixed number of elements
        per sample); a task whose loss averages over valid pixels returns their number."""
        return int(target.shape[0])

    def new_metric(self) -> Metric:
        raise NotImplementedError

    def predict(self, output: torch.Tensor) -> torch.Tensor:
        """Turn a raw network output into the task's prediction (for inference)."""
        return output

    def reference_fitter(self) -> "ReferenceFitter | None":
        """A fresh :class:`ReferenceFitter` of the task's input-blind references, or None (none)."""
        return None

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

    def loss_count(self, pred, target):
        return (target >= 0).sum()  # the labelled pixels (an all-ignored batch: 0, its loss 0)

    def new_metric(self):
        return SegmentationMetric(self.num_classes)

    def reference_fitter(self):
        return MajorityClassFitter(self.num_classes)

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

    def loss_count(self, pred, target):
        return (target != 0).sum()  # the valid pixels

    def new_metric(self):
        return DepthMetric()

    def reference_fitter(self):
        return MeanDepthFitter()


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

    def loss_count(self, pred, target):
        return (target.float().sum(1) != 0).sum()  # the valid pixels (MTAN's rule, as the loss)

    def new_metric(self):
        return NormalMetric()

    def reference_fitter(self):
        return MeanNormalFitter()

    def predict(self, output):
        return F.normalize(output, dim=1)


# -- input-blind references ------------------------------------------------------------------

class ReferenceFitter:
    """Accumulates training targets and yields input-blind prediction maps.

    :meth:`update` takes one batch of targets ``(B, *shape)`` as the dataset yields them
    (every image of one size); :meth:`predictions` then returns ``{variant: map}``, each map of
    ``shape`` (no batch axis) in the form the task's metric takes as a prediction (expanded to
    a batch, ``task.new_metric().update(map.expand(B, *shape), target)``).  :attr:`variants`
    names the maps in order.  Subclasses implement :meth:`_update` and :meth:`predictions`;
    ``version`` is bumped when a fit changes, so cached results are recomputed.
    """

    variants: tuple[str, ...] = ()
    version: int = 1

    def __init__(self):
        self.shape: tuple[int, ...] | None = None
        self.images = 0

    @torch.no_grad()
    def update(self, target: torch.Tensor) -> None:
        shape = tuple(target.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"{type(self).__name__}: targets of shape {shape} after targets of shape "
                             f"{self.shape}: every image must have one size (set dataset.image_size)")
        self.images += int(target.shape[0])
        self._update(target.detach().cpu())

    def _update(self, target: torch.Tensor) -> None:
        raise NotImplementedError

    def predictions(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _require(self, ok: bool, what: str) -> None:
        if self.shape is None:
            raise ValueError(f"{type(self).__name__}: no targets seen (update was never called)")
        if not ok:
            raise ValueError(f"{type(self).__name__}: {what} in {self.images} training images")


def _exact_median(values: list[torch.Tensor]) -> float:
    """The exact median (the mean of the two middle values for an even count), as NormalMetric."""
    import numpy as np

    a = torch.cat(values).numpy() if len(values) > 1 else values[0].numpy()
    n = a.size
    hi = n // 2
    if n % 2:
        return float(np.partition(a, hi)[hi])
    part = np.partition(a, [hi - 1, hi])
    return (float(part[hi - 1]) + float(part[hi])) / 2.0


class MeanDepthFitter(ReferenceFitter):
    """Depth references over the valid training pixels (target != 0, as the loss and metric).

    * ``pixel_mean``: at each pixel the mean of its valid training depths; a pixel never valid
      takes the global mean of all valid depths;
    * ``median``: one constant, the exact median of all valid training depths (the constant
      that minimises the training abs_err).

    Sums and counts are float64; the median keeps every valid depth (float32, 4 bytes each).
    """

    variants = ("pixel_mean", "median")

    def __init__(self):
        super().__init__()
        self._sum = self._count = None
        self._values: list[torch.Tensor] = []

    def _update(self, target):
        t = target.to(torch.float64)
        valid = t != 0
        s, c = torch.where(valid, t, 0.0).sum(0), valid.sum(0)
        self._sum = s if self._sum is None else self._sum + s
        self._count = c if self._count is None else self._count + c
        self._values.append(target[valid].to(torch.float32).reshape(-1))

    def predictions(self):
        self._require(self._count is not None and int(self._count.sum()) > 0, "no valid depth")
        overall = float(self._sum.sum()) / int(self._count.sum())
        pixel = torch.where(self._count > 0, self._sum / self._count.clamp_min(1), overall)
        median = _exact_median(self._values)
        return {"pixel_mean": pixel.to(torch.float32),
                "median": torch.full(self.shape, median, dtype=torch.float32)}


class MajorityClassFitter(ReferenceFitter):
    """Segmentation references over the labelled training pixels (``0 <= label < C``; -1 ignored):

    * ``pixel_majority``: at each pixel its most frequent training label (ties: the lowest
      class id); a pixel never labelled takes the global majority class;
    * ``majority``: one constant, the most frequent label of all labelled training pixels.

    Maps are int64 labels ``(H, W)``.
    """

    variants = ("pixel_majority", "majority")

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self._counts = None  # (C, H, W) int64

    def _update(self, target):
        if target.dim() == 4 and target.shape[1] == 1:
            raise ValueError("MajorityClassFitter: labels must be (B, H, W), got (B, 1, H, W)")
        C = self.num_classes
        t = target.long()
        hw = t[0].numel()
        pixel = torch.arange(hw).expand(t.shape[0], hw).reshape(t.shape)
        valid = (t >= 0) & (t < C)
        counts = torch.bincount(t[valid] * hw + pixel[valid], minlength=C * hw).reshape(C, *t.shape[1:])
        self._counts = counts if self._counts is None else self._counts + counts

    def predictions(self):
        self._require(self._counts is not None and int(self._counts.sum()) > 0, "no labelled pixel")
        totals = self._counts.reshape(self.num_classes, -1).sum(1)
        overall = int(torch.argmax(totals))  # torch.argmax: the first of equal maxima
        pixel = torch.argmax(self._counts, dim=0)
        pixel = torch.where(self._counts.sum(0) > 0, pixel, overall)
        return {"pixel_majority": pixel.to(torch.int64),
                "majority": torch.full(self.shape, overall, dtype=torch.int64)}


class MeanNormalFitter(ReferenceFitter):
    """Surface-normal references over the valid training pixels (components not summing to 0,
    MTAN's rule, as the loss and metric):

    * ``pixel_mean``: at each pixel the mean of its valid training normals, renormalised to unit
      length; a pixel never valid (or whose normals cancel out: mean shorter than 1e-12) takes
      the global mean direction;
    * ``mean``: one constant, the mean of all valid training normals, renormalised.

    Maps are ``(3, H, W)`` unit vectors (float32; sums in float64).
    """

    variants = ("pixel_mean", "mean")

    def __init__(self):
        super().__init__()
        self._sum = None  # (3, H, W) float64
        self._valid = 0

    def _update(self, target):
        if target.dim() < 2 or target.shape[1] != 3:
            raise ValueError(f"MeanNormalFitter: expected (B, 3, H, W) normals, got {tuple(target.shape)}")
        t = target.to(torch.float64)
        valid = (target.sum(1, keepdim=True) != 0)
        s = torch.where(valid, t, 0.0).sum(0)
        self._sum = s if self._sum is None else self._sum + s
        self._valid += int(valid.sum())

    def predictions(self):
        self._require(self._valid > 0, "no valid normal")
        total = self._sum.reshape(3, -1).sum(1)
        norm = float(total.norm())
        self._require(norm > 1e-12, "the valid normals sum to the zero vector (no mean direction)")
        overall = (total / norm).reshape(3, *([1] * (len(self.shape) - 1)))
        length = self._sum.norm(dim=0, keepdim=True)
        pixel = torch.where(length > 1e-12, self._sum / length.clamp_min(1e-300), overall)
        return {"pixel_mean": pixel.to(torch.float32),
                "mean": overall.expand(self.shape).to(torch.float32).contiguous()}


def metric_directions(tasks: dict[str, Task]) -> dict[str, dict[str, bool]]:
    """``{task: {metric_key: higher_is_better}}`` for :func:`mtlbench.delta.delta`."""
    return {name: {m.key: m.higher_is_better for m in t.metrics} for name, t in tasks.items()}


