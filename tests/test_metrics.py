"""Metric accumulators on small tensors, against values worked out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from mtlbench.metrics import DepthMetric, Metric, NormalMetric, SegmentationMetric

# ----------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------

# Batch A (1x2x4), C = 3; the two -1 pixels carry predictions 0 and 2 that must not count.
GT_A = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, -1]]])
PRED_A = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
# Counted (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
# conf rows=gt: [[1,1,0],[0,2,0],[1,0,1]]; rows 2,2,2; cols 2,3,1; diag 1,2,1
# IoU = 1/3, 2/3, 1/2 -> mIoU = 0.5; pAcc = 4/6.

# Batch B (1x2x4): one -1 pixel (pred 2).
GT_B = torch.tensor([[[1, 1, 1, 0], [0, -1, 2, 2]]])
PRED_B = torch.tensor([[[1, 1, 0, 0], [1, 2, 2, 2]]])
# Pairs: (1,1) (1,1) (1,0) (0,0) (0,1) (2,2) (2,2)
# conf B: [[1,1,0],[1,2,0],[0,0,2]]  -> alone: IoU 1/3, 2/4, 2/2 -> mIoU 11/18
# A + B: [[2,2,0],[1,4,0],[1,0,3]]; rows 4,5,4; cols 4,6,3; diag 2,4,3
# IoU = 2/6, 4/7, 3/4 -> mIoU = (1/3 + 4/7 + 3/4)/3 = 139/252; pAcc = 9/13.


def _logits(labels: torch.Tensor, num_classes: int, dtype=torch.float32) -> torch.Tensor:
    """Logits whose argmax is ``labels`` (ignored -1 labels mapped to class 0)."""
    onehot = F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2)
    return (onehot.to(torch.float32) * 4.0 - 1.0).to(dtype)


def test_segmentation_single_batch_with_ignore():
    m = SegmentationMetric(3)
    m.update(PRED_A, GT_A)
    out = m.compute()
    assert list(out) == ["miou", "pacc"] == list(m.keys)
    assert out["miou"] == pytest.approx(50.0)
    assert out["pacc"] == pytest.approx(400.0 / 6.0)
    expected_conf = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(m.confusion_matrix, expected_conf)
    assert m.confusion_matrix.dtype == torch.int64
    iou = m.per_class_iou()
    assert iou.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])


def test_segmentation_logits_equal_labels():
    m = SegmentationMetric(3)
    m.update(_logits(PRED_A, 3), GT_A)
    assert m.compute()["miou"] == pytest.approx(50.0)
    assert m.compute()["pacc"] == pytest.approx(400.0 / 6.0)


def test_segmentation_accumulates_across_batches():
    two = SegmentationMetric(3)
    two.update(PRED_A, GT_A)
    two.update(_logits(PRED_B, 3), GT_B)
    one = SegmentationMetric(3)
    one.update(torch.cat([PRED_A, PRED_B]), torch.cat([GT_A, GT_B]))
    assert torch.equal(two.confusion_matrix, one.confusion_matrix)
    assert torch.equal(two.confusion_matrix, torch.tensor([[2, 2, 0], [1, 4, 0], [1, 0, 3]]))
    expected_miou = (1 / 3 + 4 / 7 + 3 / 4) / 3 * 100  # 55.1587...
    for m in (one, two):
        out = m.compute()
        assert out["miou"] == pytest.approx(expected_miou)
        assert out["pacc"] == pytest.approx(900.0 / 13.0)
    # Not the mean of the per-batch mIoUs (0.5 and 11/18).
    mean_of_batches = (0.5 + 11 / 18) / 2 * 100
    assert abs(expected_miou - mean_of_batches) > 0.3


def test_segmentation_absent_class_is_left_out_of_the_mean():
    # C = 4, class 3 never appears in gt or prediction: its IoU is 0/0.
    m = SegmentationMetric(4)
    m.update(PRED_A, GT_A)
    assert math.isnan(m.per_class_iou()[3].item())
    assert m.compute()["miou"] == pytest.approx(50.0)  # mean over classes 0..2, not /4


def test_segmentation_class_only_predicted_counts_as_zero():
    # gt [0, 1], pred [0, 3], C = 4: IoU0 = 1, IoU1 = 0/1, IoU3 = 0/1, class 2 absent.
    m = SegmentationMetric(4)
    m.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]))
    out = m.compute()
    assert out["miou"] == pytest.approx(100.0 / 3.0)
    assert out["pacc"] == pytest.approx(50.0)


def test_segmentation_out_of_range_targets_and_channel_dim():
    # A label >= C (e.g. 255) is not counted either; a (B,1,H,W) target is accepted.
    gt = torch.tensor([[[0, 255, 1, -1]]])
    pred = torch.tensor([[[0, 1, 0, 1]]])
    m = SegmentationMetric(2)
    m.update(pred, gt.unsqueeze(1))
    assert m.confusion_matrix.sum().item() == 2
    assert m.compute()["pacc"] == pytest.approx(50.0)


def test_segmentation_float_target_and_bf16_logits():
    m = SegmentationMetric(3)
    m.update(_logits(PRED_A, 3, torch.bfloat16), GT_A.float())
    assert m.compute()["miou"] == pytest.approx(50.0)


def test_segmentation_empty_is_nan_and_reset():
    m = SegmentationMetric(3)
    out = m.compute()
    assert math.isnan(out["miou"]) and math.isnan(out["pacc"])
    m.update(PRED_A, torch.full_like(GT_A, -1))
    out = m.compute()
    assert math.isnan(out["miou"]) and math.isnan(out["pacc"])
    m.update(PRED_A, GT_A)
    m.reset()
    assert m.confusion_matrix.sum().item() == 0
    m.update(PRED_A, GT_A)
    assert m.compute()["miou"] == pytest.approx(50.0)


def test_segmentation_bad_inputs():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 4, 2, 4), GT_A)  # wrong number of classes
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 2, 3, dtype=torch.long), GT_A)  # shape mismatch
    with pytest.raises(ValueError):
        m.update(torch.full_like(PRED_A, 5), GT_A)  # label out of range


# ----------------------------------------------------------------------------
# Depth
# ----------------------------------------------------------------------------

# Batch 1: valid pixels (t, p): (2, 3) (4, 2) (1, 1); the 0 pixel (pred 5) is invalid.
#   |err| = 1, 2, 0 -> sum 3; rel = 1/2, 2/4, 0 -> sum 1.0; 3 pixels.
D_T1 = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
D_P1 = torch.tensor([[[[3.0, 5.0], [2.0, 1.0]]]])
# Batch 2: one valid pixel (2, 2.5): |err| 0.5, rel 0.25.
D_T2 = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])
D_P2 = torch.tensor([[[[1.0, 1.0], [1.0, 2.5]]]])


def test_depth_single_batch():
    m = DepthMetric()
    m.update(D_P1, D_T1)
    out = m.compute()
    assert list(out) == ["abs_err", "rel_err"] == list(m.keys)
    assert out["abs_err"] == pytest.approx(1.0)
    assert out["rel_err"] == pytest.approx(1.0 / 3.0)


def test_depth_global_mean_across_batches():
    m = DepthMetric()
    m.update(D_P1, D_T1)
    m.update(D_P2, D_T2)
    out = m.compute()
    assert out["abs_err"] == pytest.approx(3.5 / 4)  # 0.875
    assert out["rel_err"] == pytest.approx(1.25 / 4)  # 0.3125
    # The mean of the batch means (MTAN's way) is different: 0.75 and 0.29166...
    assert abs(out["abs_err"] - (1.0 + 0.5) / 2) > 0.1
    assert abs(out["rel_err"] - (1 / 3 + 0.25) / 2) > 0.02


def test_depth_no_clamping_and_bf16():
    m = DepthMetric()
    m.update(torch.tensor([[[[-1.0, 7.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))
    assert m.compute() == pytest.approx({"abs_err": 2.0, "rel_err": 2.0})
    m = DepthMetric()
    m.update(D_P1.bfloat16(), D_T1)
    m.update(D_P2.half(), D_T2)
    out = m.compute()
    assert out["abs_err"] == pytest.approx(0.875)
    assert out["rel_err"] == pytest.approx(0.3125)


def test_depth_empty_is_nan():
    m = DepthMetric()
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(D_P1, torch.zeros_like(D_T1))
    assert all(math.isnan(v) for v in m.compute().values())
    with pytest.raises(ValueError):
        m.update(D_P1[:, 0], D_T1)


# ----------------------------------------------------------------------------
# Normals
# ----------------------------------------------------------------------------


def _normals(vectors) -> torch.Tensor:
    """(1, 3, 1, W) from a list of W 3-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def _at(deg: float, scale: float = 3.0):
    """An unnormalised vector at ``deg`` degrees from (1, 0, 0) in the xy plane."""
    r = math.radians(deg)
    return [scale * math.cos(r), scale * math.sin(r), 0.0]


X = [1.0, 0.0, 0.0]
ZERO = [0.0, 0.0, 0.0]
# Batch 1: angles 0, 90, 45 and one invalid (zero target) pixel.
N_P1 = _normals([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
N_T1 = _normals([X, X, X, ZERO])
# Batch 2: angles 10, 20 and one invalid pixel.
N_P2 = _normals([_at(10), _at(20), [5.0, 5.0, 5.0]])
N_T2 = _normals([X, X, ZERO])
# Batch 3: 180 degrees.
N_P3 = _normals([[-0.5, 0.0, 0.0]])
N_T3 = _normals([X])


def test_normal_known_angles():
    m = NormalMetric()
    m.update(N_P1, N_T1)
    out = m.compute()
    assert list(out) == list(m.keys)
    assert set(out) == {"mean", "median", "within_11.25", "within_22.5", "within_30"}
    # angles 0, 45, 90
    assert out["mean"] == pytest.approx(45.0, abs=1e-4)
    assert out["median"] == pytest.approx(45.0, abs=1e-4)
    assert out["within_11.25"] == pytest.approx(100 / 3)
    assert out["within_22.5"] == pytest.approx(100 / 3)
    assert out["within_30"] == pytest.approx(100 / 3)


def test_normal_pooled_over_batches():
    m = NormalMetric()
    m.update(N_P1, N_T1)
    m.update(N_P2, N_T2)
    out = m.compute()
    # pooled angles 0, 10, 20, 45, 90
    assert out["mean"] == pytest.approx(165 / 5, abs=1e-4)
    assert out["median"] == pytest.approx(20.0, abs=1e-4)
    assert out["within_11.25"] == pytest.approx(40.0)
    assert out["within_22.5"] == pytest.approx(60.0)
    assert out["within_30"] == pytest.approx(60.0)
    # The mean of the batch medians (45 and 15) would be 30, not 20.
    assert abs(out["median"] - (45 + 15) / 2) > 5
    # Even count: the median is the mean of the two middle values (20 and 45).
    m.update(N_P3, N_T3)
    out = m.compute()
    assert out["median"] == pytest.approx(32.5, abs=1e-4)
    assert out["mean"] == pytest.approx(345 / 6, abs=1e-4)
    # compute() can be called repeatedly and more batches added afterwards
    assert m.compute() == out
    m.update(N_P2, N_T2)  # 0, 10, 10, 20, 20, 45, 90, 180 -> (20 + 20) / 2
    assert m.compute()["median"] == pytest.approx(20.0, abs=1e-4)


def test_normal_validity_rule_and_zero_prediction():
    s = 1 / math.sqrt(2)
    # target (s, -s, 0) sums to 0: masked by MTAN's rule even though it is a unit vector;
    # a zero prediction gets 90 degrees.
    m = NormalMetric()
    m.update(_normals([[1.0, 0.0, 0.0], ZERO]), _normals([[s, -s, 0.0], X]))
    out = m.compute()
    assert out["mean"] == pytest.approx(90.0)
    assert out["within_30"] == 0.0


def test_normal_bf16_prediction():
    m = NormalMetric()
    m.update(N_P1.bfloat16(), N_T1)
    out = m.compute()
    assert out["mean"] == pytest.approx(45.0, abs=1e-3)
    assert out["median"] == pytest.approx(45.0, abs=1e-3)


def test_normal_empty_is_nan_and_reset():
    m = NormalMetric()
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(N_P1, torch.zeros_like(N_T1))
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(N_P1, N_T1)
    m.reset()
    m.update(N_P2, N_T2)
    assert m.compute()["mean"] == pytest.approx(15.0, abs=1e-4)
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))


def test_requires_grad_inputs_and_base_class():
    p = D_P1.clone().requires_grad_(True)
    m = DepthMetric()
    m.update(p, D_T1)
    assert m.compute()["abs_err"] == pytest.approx(1.0)
    assert issubclass(NormalMetric, Metric)
    with pytest.raises(NotImplementedError):
        Metric().compute()
