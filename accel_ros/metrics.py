"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Convention: confusion matrices are (K, K) int64 with rows = ground truth, columns = prediction.
Ground-truth pixels equal to `ignore_index` (255) or outside 0..K-1 (CamVid's void id 11 with
K = 11) are ignored, so "void" never counts for or against a prediction.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(
    prediction: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Confusion matrix (K, K) int64 of integer label maps of one shape, e.g. (H, W) or (N, H, W).

    Target pixels equal to `ignore_index` or outside [0, K) are skipped. Raises ValueError for
    mismatched shapes or for predictions outside [0, K) (a prediction is always a real class).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _as_int64(prediction)
    true = _as_int64(target)
    if pred.shape != true.shape:
        raise ValueError(f"prediction and target differ in shape: {pred.shape} vs {true.shape}")
    pred = pred.ravel()
    true = true.ravel()
    valid = (true != ignore_index) & (true >= 0) & (true < num_classes)
    pred = pred[valid]
    true = true[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(
            f"prediction holds class ids outside 0..{num_classes - 1}: "
            f"min {pred.min()}, max {pred.max()}"
        )
    flat = true * num_classes + pred
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU (K,) float64 from a (K, K) confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class absent from both ground truth and prediction has no
    defined IoU and gets NaN (excluded from the mean); a class only predicted gets 0.
    """
    matrix = _check_matrix(matrix)
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - np.diag(matrix)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return iou


def mean_iou(matrix: np.ndarray) -> float:
    """mIoU over the classes that occur (in ground truth or prediction); NaN if none occurs."""
    iou = iou_per_class(matrix)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Fraction of non-ignored pixels labelled correctly; NaN for an empty matrix."""
    matrix = _check_matrix(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total > 0 else float("nan")


class ConfusionMeter:
    """Accumulates a (K, K) confusion matrix over many predictions (one per evaluation run)."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(
        self, prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> None:
        """Add label maps of one shape, (H, W) or (N, H, W)."""
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.ignore_index)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

    def iou_per_class(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)


def _as_int64(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False)


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {matrix.shape}")
    return matrix
