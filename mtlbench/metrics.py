"""Evaluation metrics for dense prediction, accumulated batch by batch.

Every metric is an accumulator: call :meth:`Metric.update` once per batch with
the prediction and the target, then :meth:`Metric.compute` once at the end to
get a ``{key: value}`` dict of Python floats over the *whole* evaluation set.
:meth:`Metric.reset` clears the state for the next evaluation.

The formulas are the current standard of the MTL literature (MTAN's
accumulated confusion matrix, LibMTL's pooled depth and normal errors), so the
numbers do not depend on the batch size:

* :class:`SegmentationMetric`: one ``C x C`` confusion matrix over the whole
  set; keys ``"miou"`` and ``"pacc"``, in percent, higher is better.
* :class:`DepthMetric`: absolute and relative error as global per-pixel means
  over all valid pixels (target ``!= 0``); keys ``"abs_err"`` and
  ``"rel_err"``, lower is better.
* :class:`NormalMetric`: angular error in degrees pooled over all valid pixels
  (target components not summing to ``0``); keys ``"within_11.25"``,
  ``"within_22.5"``, ``"within_30"`` (percent of pixels strictly below the
  threshold, higher is better), ``"mean"`` and ``"median"`` (lower is better).

Each metric's :attr:`Metric.keys` lists its keys in the order of the paper's
tables (and of ``mtlbench.tasks``).

Targets follow the MTAN data conventions: segmentation labels ``(B, H, W)``
with ``-1`` = ignore, depth ``(B, 1, H, W)`` with ``0`` = invalid, normals
``(B, 3, H, W)`` with ``(0, 0, 0)`` = invalid.

Predictions may be float16 or bfloat16 (they are cast to float32) and may live
on any device; what is accumulated is moved to the CPU.  ``update`` runs under
``torch.no_grad()``, so passing tensors that require grad is fine.  An
evaluation without a single valid pixel yields NaN values, not an exception.

Example, in your own evaluation loop::

    import torch
    from mtlbench.metrics import DepthMetric, NormalMetric, SegmentationMetric

    metrics = {
        "semseg": SegmentationMetric(num_classes=13),
        "depth": DepthMetric(),
        "normal": NormalMetric(),
    }
    model.eval()
    with torch.no_grad():
        for batch in test_loader:
            out = model(batch["image"].cuda())          # {task: raw output}
            for task, metric in metrics.items():
                metric.update(out[task], batch[task].cuda())
    results = {task: metric.compute() for task, metric in metrics.items()}
    # e.g. {"semseg": {"miou": 50.5, "pacc": 73.2},
    #       "depth": {"abs_err": 0.443, "rel_err": 0.190},
    #       "normal": {"within_11.25": 30.0, ..., "mean": 33.2, "median": 23.9}}
    for metric in metrics.values():
        metric.reset()                                   # before the next epoch

:func:`mtlbench.delta.delta` turns two such result dicts into the paper's
relative improvement Δ.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Metric", "SegmentationMetric", "DepthMetric", "NormalMetric"]

_NAN = float("nan")


def _to_float(t: torch.Tensor) -> torch.Tensor:
    """Cast reduced-precision or integer tensors to float32; keep float32/float64."""
    if t.dtype in (torch.float32, torch.float64):
        return t
    return t.to(torch.float32)


def _sum64(t: torch.Tensor) -> float:
    """Sum a tensor in float64 and return a Python float (float64)."""
    if t.device.type == "mps":  # no float64 on MPS
        t = t.cpu()
    return float(t.sum(dtype=torch.float64))


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction shape {tuple(pred.shape)} does not match target shape "
            f"{tuple(target.shape)}"
        )


class Metric:
    """Base class of the batch-wise metric accumulators.

    Subclasses set :attr:`keys` and implement :meth:`update`, :meth:`compute`
    and :meth:`reset`.
    """

    #: The keys of the dict returned by :meth:`compute`, in order.
    keys: tuple[str, ...] = ()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predictions and targets to the running state."""
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        """The metric values over everything seen since the last :meth:`reset`."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SegmentationMetric(Metric):
    """Mean IoU and pixel accuracy from one confusion matrix over the whole set.

    Args:
        num_classes: ``C``, the number of classes.
        ignore_index: a label excluded from the metric (default ``-1``).  Only
            pixels with ``0 <= target < C`` count in any case, so other
            out-of-range labels (e.g. ``255``) are ignored too.

    ``update(pred, target)`` takes either logits ``(B, C, H, W)`` (the class is
    the argmax over dim 1) or integer labels ``(B, H, W)``; the target is
    ``(B, H, W)`` (a ``(B, 1, H, W)`` target is squeezed).  Targets stored as
    floats (as the MTAN loaders do) are converted to integers.

    The confusion matrix ``conf[gt, pred]`` (int64, on the CPU) is accumulated
    with ``bincount``.  Then

    * ``IoU_c = conf[c, c] / (row_c + col_c - conf[c, c])``;
    * ``miou`` = the mean of ``IoU_c`` over the classes with a non-empty union,
      i.e. the classes that occur in the ground truth or in the prediction of
      a counted pixel.  A class absent from both has an undefined IoU (0/0);
      it is left out of the mean instead of poisoning it with NaN (a plain mean
      over all ``C`` classes, as in MTAN/LibMTL, gives the same number whenever
      every class occurs, as on the full NYUv2 and Cityscapes test sets).  A
      class only ever predicted, never in the ground truth, has IoU 0 and
      counts;
    * ``pacc = trace(conf) / conf.sum()``.

    Both are returned in percent.  With no counted pixel both are NaN.
    """

    keys = ("miou", "pacc")

    def __init__(self, num_classes: int, ignore_index: int | None = -1):
        num_classes = int(num_classes)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.reset()

    def reset(self) -> None:
        self._conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """A copy of the accumulated matrix; rows are ground truth, columns predictions."""
        return self._conf.clone()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        C = self.num_classes
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != C:
                raise ValueError(
                    f"SegmentationMetric: logits have {pred.shape[1]} channels, "
                    f"expected num_classes={C}"
                )
            if pred.shape[:1] + pred.shape[2:] != target.shape:
                raise ValueError(
                    f"SegmentationMetric: logits shape {tuple(pred.shape)} does not match "
                    f"target shape {tuple(target.shape)}"
                )
            labels = _to_float(pred).argmax(1)
        elif pred.dim() == target.dim():
            _check_same_shape(pred, target, "SegmentationMetric")
            labels = pred.long()
        else:
            raise ValueError(
                f"SegmentationMetric: expected logits (B, C, H, W) or labels (B, H, W) for a "
                f"target of shape {tuple(target.shape)}, got {tuple(pred.shape)}"
            )
        gt = target.to(device=labels.device).long()
        valid = (gt >= 0) & (gt < C)
        if self.ignore_index is not None:
            valid &= gt != self.ignore_index
        gt = gt[valid]
        labels = labels[valid]
        if labels.numel() and (labels.min() < 0 or labels.max() >= C):
            raise ValueError(
                f"SegmentationMetric: predicted labels must lie in [0, {C - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        counts = torch.bincount(gt * C + labels, minlength=C * C)
        self._conf += counts.reshape(C, C).to(device="cpu", dtype=torch.int64)

    def per_class_iou(self) -> torch.Tensor:
        """IoU per class (float64, in [0, 1]); NaN for a class with an empty union."""
        conf = self._conf.to(torch.float64)
        tp = conf.diagonal()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.full_like(tp, _NAN)
        seen = union > 0
        iou[seen] = tp[seen] / union[seen]
        return iou

    def compute(self) -> dict[str, float]:
        iou = self.per_class_iou()
        seen = ~torch.isnan(iou)
        miou = float(iou[seen].mean()) * 100.0 if bool(seen.any()) else _NAN
        total = int(self._conf.sum())
        pacc = int(self._conf.trace()) / total * 100.0 if total else _NAN
        return {"miou": miou, "pacc": pacc}

    def __repr__(self) -> str:
        return f"SegmentationMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index})"


class DepthMetric(Metric):
    """Absolute and relative depth error over the valid pixels of the whole set.

    ``update(pred, target)`` takes the raw prediction and the target, both
    ``(B, 1, H, W)`` (any equal shapes work).  A pixel is valid where
    ``target != 0``; with ``M`` the set of all valid pixels seen so far:

    * ``abs_err = sum_M |pred - target| / |M|``
    * ``rel_err = sum_M |pred - target| / target / |M|``

    These are *global* per-pixel means (as in LibMTL), not means of per-batch
    means (as in MTAN): images with more valid pixels weigh more.  The
    prediction is used as is (no clamping or activation).  Sums and the count
    are accumulated in float64.  With no valid pixel both values are NaN.
    """

    keys = ("abs_err", "rel_err")

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._abs_sum = 0.0
        self._rel_sum = 0.0
        self._count = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_same_shape(pred, target, "DepthMetric")
        target = _to_float(target.to(device=pred.device))
        valid = target != 0
        t = target[valid]
        err = (_to_float(pred)[valid] - t).abs()
        self._abs_sum += _sum64(err)
        self._rel_sum += _sum64(err / t)
        self._count += int(t.numel())

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {"abs_err": _NAN, "rel_err": _NAN}
        return {"abs_err": self._abs_sum / self._count, "rel_err": self._rel_sum / self._count}


class NormalMetric(Metric):
    """Angular error of surface normals, pooled over the valid pixels of the whole set.

    ``update(pred, target)`` takes the prediction ``(B, 3, H, W)``, which need
    not be normalised (it is L2-normalised per pixel; an all-zero prediction
    becomes the zero vector and scores 90 degrees), and the target
    ``(B, 3, H, W)`` of unit vectors, used as is.  A pixel is valid where the
    target's components do not sum to 0 (MTAN's rule; it also drops the rare
    valid normal whose components happen to sum to exactly 0).

    The error is ``acos(clamp(<pred_hat, target>, -1, 1))`` in degrees.  Over
    all valid pixels seen so far:

    * ``mean``: the mean angle;
    * ``median``: the exact median angle (the mean of the two middle values for
      an even count), not a mean of per-batch medians;
    * ``within_11.25``, ``within_22.5``, ``within_30``: the percentage of pixels
      with an angle strictly below the threshold.

    The mean and the within-counts are running sums (float64 / int).  The exact
    median needs every angle, so the per-pixel angles are kept on the CPU in
    float32 (4 bytes per valid pixel: about 0.3 GB for the NYUv2 test set).
    With no valid pixel all values are NaN.
    """

    keys = ("within_11.25", "within_22.5", "within_30", "mean", "median")
    thresholds = (11.25, 22.5, 30.0)

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._angles: list[torch.Tensor] = []
        self._sum = 0.0
        self._count = 0
        self._within = [0 for _ in self.thresholds]

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _check_same_shape(pred, target, "NormalMetric")
        if pred.dim() < 2 or pred.shape[1] != 3:
            raise ValueError(
                f"NormalMetric: expected (B, 3, H, W) normals, got shape {tuple(pred.shape)}"
            )
        target = _to_float(target.to(device=pred.device))
        pred = F.normalize(_to_float(pred), dim=1)
        valid = target.sum(1) != 0
        cos = (pred * target).sum(1)[valid].clamp(-1.0, 1.0)
        angles = torch.rad2deg(torch.acos(cos))
        self._sum += _sum64(angles)
        self._count += int(angles.numel())
        for i, thr in enumerate(self.thresholds):
            self._within[i] += int((angles < thr).sum())
        self._angles.append(angles.to(device="cpu", dtype=torch.float32))

    def _median(self) -> float:
        if len(self._angles) > 1:
            self._angles = [torch.cat(self._angles)]
        a = self._angles[0].numpy()
        n = a.size
        hi = n // 2
        if n % 2:
            return float(np.partition(a, hi)[hi])
        part = np.partition(a, [hi - 1, hi])
        return (float(part[hi - 1]) + float(part[hi])) / 2.0

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            return {k: _NAN for k in self.keys}
        n = self._count
        out = {key: count / n * 100.0 for key, count in zip(self.keys[:3], self._within)}
        out["mean"] = self._sum / n
        out["median"] = self._median()
        return out
