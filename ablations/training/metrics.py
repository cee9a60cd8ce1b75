"""Segmentation metrics as one torchmetrics ``Metric`` (sum-reduced states, so DDP evaluation adds up).

* ``mIoU``: per-class IoU = TP / (TP + FP + FN) from the confusion matrix over non-ignored pixels (label 255),
  averaged over the classes that occur in the ground truth or the prediction (PASCAL VOC protocol).
* ``pixel_acc``: correct / labelled pixels.
* Size buckets (the synthetic benchmark, whose ground truth marks each object pixel small, medium or large):
  ``mIoU_<bucket>`` is the foreground mIoU when only objects of that bucket count — pixels of objects in the
  other buckets are ignored, background pixels stay — so false positives on background are charged to every
  bucket and a missed small object only to ``small``.
* ``boundary_mIoU``: Boundary IoU (Cheng et al., CVPR 2021): per class, the IoU of the ground-truth and
  predicted masks restricted to the band within ``d`` pixels of each mask's contour, with d = 2% of the image
  diagonal (at least 1 pixel); it scores the thin parts and edges that region IoU hides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from ablations.data import IGNORE_INDEX, SIZE_BUCKETS


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts, rows = ground truth, columns = prediction, over pixels whose target is not ignored."""
    valid = target != IGNORE_INDEX
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class IoU; NaN for a class absent from both ground truth and prediction."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels of each boolean mask ``(N, H, W)`` within ``width`` of its contour (mask minus its erosion)."""
    # Erosion by the (2w+1)² square, outside the image counting as outside: the AND of the mask's shifted copies,
    # a square window being a row window then a column window. Boolean ANDs, no float pooling (20× faster on a
    # CPU at 96², the same pixels: tests/test_metrics.py checks it against the max-pooling definition).
    height, wide = masks.shape[-2:]
    padded = F.pad(masks, (width, width, width, width), value=False)
    rows = padded[..., :wide].clone()
    for k in range(1, 2 * width + 1):
        rows &= padded[..., k : k + wide]
    eroded = rows[..., :height, :].clone()
    for k in range(1, 2 * width + 1):
        eroded &= rows[..., k : k + height, :]
    return masks & ~eroded


class SegmentationMetrics(Metric):
    full_state_update = False

    def __init__(self, num_classes: int, *, class_names: tuple[str, ...] | None = None, size_buckets: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = class_names or tuple(f"class{i}" for i in range(num_classes))
        self.size_buckets = size_buckets
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("confusion", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state(
            "buckets", default=torch.zeros(len(SIZE_BUCKETS), *zeros.shape, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("boundary_inter", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("boundary_union", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, size: torch.Tensor | None = None) -> None:
        """``pred``, ``target``: ``(B, H, W)`` class indices; ``size``: ``(B, H, W)`` size buckets or None."""
        batch = confusion_matrix(pred, target, self.num_classes)
        self.confusion += batch
        if self.size_buckets and size is not None:
            # Bucket b counts the background (size 0) and the objects of bucket b, the other objects ignored: one
            # confusion matrix per size value in one bincount, then background + bucket.
            valid = target != IGNORE_INDEX
            k = self.num_classes
            index = (size[valid].long() * k + target[valid].long()) * k + pred[valid].long()
            by_size = torch.bincount(index, minlength=len(SIZE_BUCKETS) * k * k).reshape(-1, k, k)
            self.buckets[1:] += by_size[0] + by_size[1 : len(SIZE_BUCKETS)]
        # The classes present in the ground truth or the prediction (labelled pixels), read off the batch's matrix.
        present = torch.nonzero(batch.sum(0) + batch.sum(1)).flatten()
        self._update_boundary(pred, target, present)

    def _update_boundary(self, pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> None:
        height, width = target.shape[-2:]
        band = max(1, round(0.02 * math.hypot(height, width)))
        valid = target != IGNORE_INDEX
        for c in present.tolist():
            gt = boundary_band((target == c) & valid, band) & valid
            pr = boundary_band((pred == c) & valid, band) & valid
            self.boundary_inter[c] += (gt & pr).sum()
            self.boundary_union[c] += (gt | pr).sum()

    def compute(self) -> dict[str, float]:
        iou = iou_from_confusion(self.confusion)
        labelled = self.confusion.sum()
        results = {
            "mIoU": float(torch.nanmean(iou)),
            "pixel_acc": float(self.confusion.diag().sum() / labelled) if labelled else math.nan,
        }
        for name, value in zip(self.class_names, iou.tolist(), strict=True):
            results[f"IoU/{name}"] = value
        if self.size_buckets:
            for bucket in range(1, len(SIZE_BUCKETS)):
                bucket_iou = iou_from_confusion(self.buckets[bucket])[1:]  # foreground classes
                results[f"mIoU_{SIZE_BUCKETS[bucket]}"] = float(torch.nanmean(bucket_iou))
        union = self.boundary_union.double()
        boundary = torch.where(union > 0, self.boundary_inter / union.clamp(min=1), torch.full_like(union, math.nan))
        results["boundary_mIoU"] = float(torch.nanmean(boundary))
        return results
