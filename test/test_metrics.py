"""Confusion matrix and mIoU on hand-built cases (numbers worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from accel_ros.metrics import (
    IGNORE_INDEX,
    ConfusionMeter,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)


def test_confusion_matrix_counts_rows_truth_columns_prediction() -> None:
    target = np.array([[0, 0, 1], [1, 2, 2]])
    prediction = np.array([[0, 1, 1], [1, 2, 0]])
    matrix = confusion_matrix(prediction, target, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(matrix, expected)
    assert matrix.dtype == np.int64


def test_iou_and_miou_by_hand() -> None:
    matrix = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # class 0: TP 1, FP 1 (col) , FN 1 (row) -> 1/3; class 1: TP 2, FP 1, FN 0 -> 2/3;
    # class 2: TP 1, FP 0, FN 1 -> 1/2
    np.testing.assert_allclose(iou_per_class(matrix), [1 / 3, 2 / 3, 1 / 2])
    assert mean_iou(matrix) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(matrix) == pytest.approx(4 / 6)


def test_void_is_ignored_both_as_255_and_as_out_of_range_id() -> None:
    target = np.array([0, 1, IGNORE_INDEX, 11, 1])
    prediction = np.array([0, 1, 2, 0, 2])  # the predictions on void pixels must not count
    matrix = confusion_matrix(prediction, target, num_classes=3)
    assert matrix.sum() == 3
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
    # class 2 never occurs in truth but is predicted once: IoU 0, and it counts in the mean
    np.testing.assert_allclose(iou_per_class(matrix), [1.0, 0.5, 0.0])
    assert mean_iou(matrix) == pytest.approx(0.5)


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    target = np.array([0, 0, 1, 1])
    prediction = np.array([0, 0, 1, 0])
    matrix = confusion_matrix(prediction, target, num_classes=4)
    iou = iou_per_class(matrix)
    assert iou[0] == pytest.approx(2 / 3)
    assert iou[1] == pytest.approx(1 / 2)
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert mean_iou(matrix) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_all_void_gives_nan_not_an_error() -> None:
    matrix = confusion_matrix(np.zeros(4), np.full(4, IGNORE_INDEX), num_classes=2)
    assert matrix.sum() == 0
    assert math.isnan(mean_iou(matrix))
    assert math.isnan(pixel_accuracy(matrix))


def test_perfect_prediction_is_one() -> None:
    labels = np.random.default_rng(0).integers(0, 5, size=(3, 8, 8))
    assert mean_iou(confusion_matrix(labels, labels, 5)) == pytest.approx(1.0)


def test_meter_accumulates_torch_and_numpy_batches() -> None:
    meter = ConfusionMeter(num_classes=2)
    meter.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    meter.update(np.array([[1, 1]]), np.array([[0, 1]]))
    np.testing.assert_array_equal(meter.matrix, [[1, 1], [0, 2]])
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3
    assert meter.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        confusion_matrix(np.array([2]), np.array([0]), 2)
    with pytest.raises(ValueError, match="square"):
        iou_per_class(np.zeros((2, 3)))
