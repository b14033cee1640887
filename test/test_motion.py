"""Synthetic camera motion: the exact flow really moves frame t-1 onto frame t, labels follow
the image, out-of-view pixels are void, and clips are reproducible."""

from __future__ import annotations

import numpy as np
import torch

from accel_ros.data.clips import motion_clips
from accel_ros.data.motion import CameraMotion, backward_flow, make_motion_clip, random_motion
from accel_ros.model.warp import warp


def textured_frame(height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), np.uint8), (0, 0), 3)
    labels = (image[..., 0] > 127).astype(np.uint8)
    return image, labels


def test_exact_flow_warps_the_previous_frame_onto_the_current() -> None:
    image, labels = textured_frame()
    motion = CameraMotion(zoom=1.02, focus=(60.0, 40.0), pan=(2.0, -1.0), roll_deg=0.1)
    clip = make_motion_clip(image, labels, 4, motion)
    assert len(clip.frames) == 4 and len(clip.flows) == 3
    previous = torch.from_numpy(clip.frames[2]).permute(2, 0, 1)[None].float()
    current = torch.from_numpy(clip.frames[3]).permute(2, 0, 1)[None].float()
    warped = warp(previous, torch.from_numpy(clip.flows[2])[None])
    inner = (..., slice(8, -8), slice(8, -8))
    error = float((warped - current)[inner].abs().mean())
    unwarped = float((previous - current)[inner].abs().mean())
    assert error < 0.25 * unwarped, (error, unwarped)


def test_flow_of_a_pure_pan_is_the_negative_pan() -> None:
    step = CameraMotion(1.0, (0.0, 0.0), (3.0, -2.0), 0.0).step_matrix()
    flow = backward_flow(step, (8, 10))
    np.testing.assert_allclose(flow[0], -3.0, atol=1e-6)
    np.testing.assert_allclose(flow[1], 2.0, atol=1e-6)


def test_zoom_flow_points_back_to_the_focus() -> None:
    step = CameraMotion(1.1, (50.0, 20.0), (0.0, 0.0), 0.0).step_matrix()
    flow = backward_flow(step, (40, 100))
    np.testing.assert_allclose(flow[:, 20, 50], 0.0, atol=1e-5)  # the focus stays put
    # a pixel right of the focus came from nearer the focus: x - 50 shrinks by 1 / 1.1
    assert flow[0, 20, 61] == np.float32((61 - 50) / 1.1 + 50 - 61)


def test_labels_follow_the_image_and_out_of_view_is_void() -> None:
    image, labels = textured_frame()
    motion = CameraMotion(zoom=1.0, focus=(0.0, 0.0), pan=(6.0, 0.0), roll_deg=0.0)
    clip = make_motion_clip(image, labels, 6, motion, start_zoom=1.0)
    last = clip.labels[-1]
    assert (last[:, :30] == 255).all()  # 5 steps of 6 px pan uncovered the left edge
    np.testing.assert_array_equal(last[:, 30:], labels[:, :-30])


def test_motion_clips_are_reproducible_and_plausible() -> None:
    image, labels = textured_frame()
    first = list(motion_clips([image] * 3, [labels] * 3, 3, seed=5))
    again = list(motion_clips([image] * 3, [labels] * 3, 3, seed=5))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.frames[-1], b.frames[-1])
    motion = random_motion((360, 480), np.random.default_rng(0))
    assert 1.003 <= motion.zoom <= 1.02 and abs(motion.pan[0]) <= 0.008 * 480
