"""Palettes and colourisation."""

from __future__ import annotations

import numpy as np
import pytest

from accel_ros.palette import CAMVID_CLASSES, CAMVID_PALETTE, colorize, get_palette, overlay


def test_colorize_maps_ids_to_palette_and_void_to_black() -> None:
    labels = np.array([[0, 3], [11, 255]], dtype=np.uint8)
    rgb = colorize(labels, "camvid")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], CAMVID_PALETTE[0])
    np.testing.assert_array_equal(rgb[0, 1], CAMVID_PALETTE[3])
    np.testing.assert_array_equal(rgb[1], np.zeros((2, 3), np.uint8))


def test_colorize_handles_wide_integer_labels() -> None:
    labels = np.array([[1, -1, 300]], dtype=np.int64)
    rgb = colorize(labels, "camvid")
    np.testing.assert_array_equal(rgb[0, 0], CAMVID_PALETTE[1])
    np.testing.assert_array_equal(rgb[0, 1:], np.zeros((2, 3), np.uint8))


def test_palettes_are_distinct_per_class() -> None:
    for name, size in [("camvid", 11), ("cityscapes", 19), ("camvid_cityscapes", 11)]:
        colors = get_palette(name)
        assert colors.shape == (size, 3)
        assert len({tuple(c) for c in colors}) == size
    assert len(CAMVID_CLASSES) == 11
    with pytest.raises(ValueError, match="unknown palette"):
        get_palette("pascal")


def test_overlay_blends_and_validates() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    color = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(image, color, 0.5), np.full((2, 2, 3), 150, np.uint8))
    np.testing.assert_array_equal(overlay(image, color, 0.0), image)
    with pytest.raises(ValueError, match="equal shapes"):
        overlay(image, color[:1])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, color, 1.5)
