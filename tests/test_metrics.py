"""Metrics, inference strategies, loss and schedule, on hand-checkable inputs."""

from __future__ import annotations

import math

import pytest
import torch

from ablations.training.inference import predict_probabilities
from ablations.training.metrics import SegmentationMetrics, boundary_band, confusion_matrix, iou_from_confusion
from ablations.training.system import poly_schedule, segmentation_loss


def test_confusion_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    confusion = confusion_matrix(pred, target, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = iou_from_confusion(confusion)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert math.isnan(iou[3])  # absent from both: excluded from the mean


def test_metric_object_accumulates_and_reports_per_class():
    metric = SegmentationMetrics(3, class_names=("bg", "a", "b"))
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    metric.update(torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 1]]]), target)
    result = metric.compute()
    assert result["mIoU"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert result["pixel_acc"] == pytest.approx(5 / 7)
    assert result["IoU/a"] == pytest.approx(3 / 4)


def test_size_buckets_ignore_objects_of_other_buckets():
    metric = SegmentationMetrics(3, size_buckets=True)
    target = torch.tensor([[[1, 1, 0, 2, 2, 2]]])
    size = torch.tensor([[[1, 1, 0, 3, 3, 3]]])  # a small object of class 1, a large one of class 2
    pred = torch.tensor([[[0, 0, 0, 2, 2, 2]]])  # misses the small object, gets the large one
    metric.update(pred, target, size)
    result = metric.compute()
    assert result["mIoU_small"] == 0.0
    assert result["mIoU_large"] == 1.0
    assert math.isnan(result["mIoU_medium"])


def test_boundary_band_is_the_inner_ring():
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 1:8, 1:8] = True  # a 7×7 square
    band = boundary_band(mask, 1)
    assert band.sum() == 7 * 7 - 5 * 5
    assert not band[0, 4, 4] and band[0, 1, 4]


def test_boundary_iou_is_perfect_for_a_perfect_prediction_and_lower_for_a_shifted_one():
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    target[0, 16:48, 16:48] = 1
    perfect, shifted = SegmentationMetrics(2), SegmentationMetrics(2)
    perfect.update(target.clone(), target)
    shifted.update(torch.roll(target, 3, dims=-1), target)
    assert perfect.compute()["boundary_mIoU"] == 1.0
    assert shifted.compute()["boundary_mIoU"] < shifted.compute()["mIoU"] < 1.0


class _Constant(torch.nn.Module):
    """Logits that depend on the column: flips and scales change them in known ways."""

    def forward(self, x):
        columns = torch.linspace(-1, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([columns, -columns], dim=1)


def test_multi_scale_flip_averages_probabilities():
    images = torch.zeros(2, 3, 8, 10)
    single = predict_probabilities(_Constant(), images)
    assert single.shape == (2, 2, 8, 10)
    assert torch.allclose(single.sum(1), torch.ones(2, 8, 10))
    flipped = predict_probabilities(_Constant(), images, flip=True)
    assert torch.allclose(flipped, torch.full_like(flipped, 0.5))  # a column-odd model averages out under flip
    multi = predict_probabilities(_Constant(), images, scales=(0.5, 1.0, 1.5))
    assert multi.shape == (2, 2, 8, 10)
    assert torch.allclose(multi.sum(1), torch.ones(2, 8, 10))


def test_loss_ignores_255_and_mines_hard_pixels():
    logits = torch.zeros(1, 2, 1, 4, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 0] = torch.tensor([4.0, 2.0, 0.0, -2.0])
    target = torch.tensor([[[0, 0, 0, 255]]])
    per_pixel = torch.nn.functional.cross_entropy(logits[..., :3], target[..., :3], reduction="none").detach().flatten()
    assert segmentation_loss(logits, target).item() == pytest.approx(per_pixel.mean().item())
    assert segmentation_loss(logits, target, hard_pixel_fraction=0.34).item() == pytest.approx(per_pixel.max().item())
    empty = segmentation_loss(logits, torch.full((1, 1, 4), 255))
    empty.backward()
    assert empty.item() == 0 and logits.grad is not None


def test_poly_schedule():
    assert poly_schedule(0, max_steps=100, power=0.9) == 1.0
    assert poly_schedule(50, max_steps=100, power=0.9) == pytest.approx(0.5**0.9)
    assert poly_schedule(100, max_steps=100, power=0.9) == 0.0
    assert [poly_schedule(s, max_steps=100, power=0.9, warmup_steps=4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_size_buckets_and_boundary_bands_equal_their_definitions_on_random_maps():
    """Bucket b's matrix is the confusion over the background and bucket b's objects (other objects ignored); the
    band is the mask minus its erosion by a (2w+1)² square (computed in two 1-D passes)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    for k, h in ((2, 17), (4, 40), (8, 65)):
        target = torch.randint(0, k, (3, h, h), generator=g)
        target[torch.rand(3, h, h, generator=g) < 0.1] = 255
        pred = torch.randint(0, k, (3, h, h), generator=g)
        size = torch.randint(0, 4, (3, h, h), generator=g).to(torch.uint8)
        metrics = SegmentationMetrics(k, size_buckets=True)
        metrics.update(pred, target, size)
        for bucket in (1, 2, 3):
            other = (size != 0) & (size != bucket)
            expected = confusion_matrix(pred, target.masked_fill(other, 255), k)
            assert torch.equal(metrics.buckets[bucket], expected)
        masks = target == 1
        for width in (1, 3):
            padded = F.pad((~masks).float().unsqueeze(1), (width,) * 4, value=1.0)
            square = F.max_pool2d(padded, 2 * width + 1, stride=1).squeeze(1) > 0
            assert torch.equal(boundary_band(masks, width), masks & square)
