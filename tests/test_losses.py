"""Task losses of mtlbench.tasks against hand formulas."""
import math

import pytest
import torch

from mtlbench.tasks import Depth, Normal, SemSeg, metric_directions

# ----------------------------------------------------------------------------
# Segmentation: cross-entropy, -1 ignored
# ----------------------------------------------------------------------------

# (1, 3, 1, 3): pixel logits (1, 2, 3), (0, 0, 0), (5, -5, 0); targets 0, 2, -1.
SEG_LOGITS = torch.tensor([[[[1.0, 0.0, 5.0]], [[2.0, 0.0, -5.0]], [[3.0, 0.0, 0.0]]]])
SEG_TARGET = torch.tensor([[[0, 2, -1]]])


def _log_softmax(z, k):
    return z[k] - math.log(sum(math.exp(v) for v in z))


def test_cross_entropy_ignores_minus_one():
    # mean over the two labelled pixels of -log_softmax(z)[target]
    expected = -(_log_softmax([1.0, 2.0, 3.0], 0) + _log_softmax([0.0, 0.0, 0.0], 2)) / 2
    assert expected == pytest.approx(1.7531091, abs=1e-6)  # (2.4076060 + ln 3) / 2
    loss = SemSeg(3).loss(SEG_LOGITS, SEG_TARGET)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # float labels (as MTAN's loaders store them) give the same loss
    assert SemSeg(3).loss(SEG_LOGITS, SEG_TARGET.float()).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = SEG_LOGITS.clone().requires_grad_(True)
    loss = SemSeg(3).loss(logits, torch.full_like(SEG_TARGET, -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_cross_entropy_bf16_logits_computed_in_float32():
    loss = SemSeg(3).loss(SEG_LOGITS.bfloat16(), SEG_TARGET)
    assert loss.dtype == torch.float32
    expected = -(_log_softmax([1.0, 2.0, 3.0], 0) + _log_softmax([0.0, 0.0, 0.0], 2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # these logits are exact in bf16


# ----------------------------------------------------------------------------
# Depth: L1 over valid pixels
# ----------------------------------------------------------------------------


def test_depth_l1_over_valid_pixels():
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    pred = torch.tensor([[[[3.0, 5.0], [2.0, 1.0]]]])
    # valid |err| = 1, 2, 0 -> 3 / 3 pixels
    assert Depth().loss(pred, target).item() == pytest.approx(1.0)


def test_depth_l1_divides_by_valid_pixels_of_the_whole_batch():
    target = torch.tensor([[[[2.0, 0.0]]], [[[1.0, 3.0]]]])
    pred = torch.tensor([[[[2.5, 9.0]]], [[[0.0, 3.0]]]])
    # valid |err| = 0.5, 1, 0 over 3 pixels (not a mean of per-image means 0.5 and 0.5)
    assert Depth().loss(pred, target).item() == pytest.approx(0.5)
    pred2 = pred.clone().requires_grad_(True)
    Depth().loss(pred2, target).backward()
    assert pred2.grad[0, 0, 0, 1].item() == 0.0  # no gradient through invalid pixels
    assert pred2.grad[0, 0, 0, 0].item() == pytest.approx(1 / 3)


def test_depth_all_invalid_is_zero():
    loss = Depth().loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert loss.item() == 0.0


# ----------------------------------------------------------------------------
# Normals: 1 - cos over valid pixels, prediction normalised
# ----------------------------------------------------------------------------


def _normals(vectors) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_normal_one_minus_cos_unnormalised_prediction():
    pred = _normals([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0], [3.0, 4.0, 0.0], [7.0, 1.0, 2.0]])
    target = _normals([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # cos = 1, 0, 4/5 on the three valid pixels; the zero target is ignored
    expected = 1.0 - (1.0 + 0.0 + 0.8) / 3  # 0.4
    assert Normal().loss(pred, target).item() == pytest.approx(expected, abs=1e-6)
    assert Normal().loss(pred.bfloat16(), target).item() == pytest.approx(expected, abs=1e-6)


def test_normal_all_invalid_is_finite_without_gradient():
    pred = _normals([[1.0, 2.0, 3.0]]).requires_grad_(True)
    loss = Normal().loss(pred, torch.zeros(1, 3, 1, 1))
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_directions_match_the_metric_keys():
    tasks = {"semseg": SemSeg(13), "depth": Depth(), "normal": Normal()}
    assert metric_directions(tasks) == {
        "semseg": {"miou": True, "pacc": True},
        "depth": {"abs_err": False, "rel_err": False},
        "normal": {"within_11.25": True, "within_22.5": True, "within_30": True, "mean": False, "median": False},
    }
    for task in tasks.values():
        assert tuple(m.key for m in task.metrics) == task.new_metric().keys
