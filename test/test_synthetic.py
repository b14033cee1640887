"""Synthetic driving video: determinism, formats, class coverage and exactness of the flow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from accel_ros.data.synthetic import (
    BICYCLIST,
    CAR,
    PEDESTRIAN,
    SceneConfig,
    SyntheticDrivingScene,
    SyntheticFrame,
    SyntheticPairs,
    generate_clip,
    write_clip_video,
)
from accel_ros.data.transforms import IGNORE_INDEX

H, W = 64, 128  # tiny: the whole file has to stay fast on a shared 2-core machine


@pytest.fixture(scope="module")
def clip() -> list[SyntheticFrame]:
    return generate_clip(8, height=H, width=W, seed=3)


def _warp(previous: np.ndarray, flow: np.ndarray, interpolation: int) -> np.ndarray:
    """Backward warp: out[p] = previous[p + flow[p]]."""
    gy, gx = np.mgrid[0 : flow.shape[0], 0 : flow.shape[1]].astype(np.float32)
    return cv2.remap(previous, gx + flow[..., 0], gy + flow[..., 1], interpolation)


def _in_frame(flow: np.ndarray) -> np.ndarray:
    gy, gx = np.mgrid[0 : flow.shape[0], 0 : flow.shape[1]]
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    return (x >= 0) & (x <= flow.shape[1] - 1) & (y >= 0) & (y <= flow.shape[0] - 1)


def test_same_seed_same_bytes_different_seed_differs(clip: list[SyntheticFrame]) -> None:
    again = SyntheticDrivingScene(SceneConfig(height=H, width=W, seed=3)).render(5)
    assert again.image.tobytes() == clip[5].image.tobytes()
    assert again.labels.tobytes() == clip[5].labels.tobytes()
    assert again.flow.tobytes() == clip[5].flow.tobytes()
    assert again.occluded.tobytes() == clip[5].occluded.tobytes()
    other = SyntheticDrivingScene(SceneConfig(height=H, width=W, seed=4)).render(5)
    assert np.abs(other.image.astype(int) - clip[5].image.astype(int)).mean() > 5.0
    assert (other.labels != clip[5].labels).mean() > 0.05


def test_shapes_dtypes_and_ranges(clip: list[SyntheticFrame]) -> None:
    assert len(clip) == 8
    for t, frame in enumerate(clip):
        assert frame.index == t
        assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8
        assert frame.labels.shape == (H, W) and frame.labels.dtype == np.uint8
        assert frame.flow.shape == (H, W, 2) and frame.flow.dtype == np.float32
        assert frame.occluded.shape == (H, W) and frame.occluded.dtype == bool
        assert frame.depth.shape == (H, W) and frame.depth.dtype == np.float32
        assert frame.labels.max() <= 11
        assert np.isfinite(frame.flow).all()
        assert frame.image.std() > 20  # a textured scene, not a flat colour
    # Frame 0 has no predecessor: zero flow, nothing was visible before.
    assert not clip[0].flow.any()
    assert clip[0].occluded.all()
    # Forward driving moves content: later frames have real flow, mostly visible before.
    assert np.abs(clip[4].flow).max() > 1.0
    assert clip[4].occluded.mean() < 0.2


def test_all_classes_in_a_typical_frame() -> None:
    frame = SyntheticDrivingScene(SceneConfig(height=128, width=256, seed=3)).render(0)
    counts = np.bincount(frame.labels.ravel(), minlength=12)
    assert (counts[:11] > 0).all(), f"missing classes: {np.nonzero(counts[:11] == 0)[0]}"
    # Stuff classes dominate as in real driving footage.
    assert counts[3] / frame.labels.size > 0.25  # road
    assert counts[0] / frame.labels.size > 0.05  # sky
    assert counts[1] / frame.labels.size > 0.05  # building


def test_warping_previous_labels_by_flow_reproduces_labels(clip: list[SyntheticFrame]) -> None:
    for t in range(1, len(clip)):
        frame, previous = clip[t], clip[t - 1]
        valid = ~frame.occluded & _in_frame(frame.flow)
        assert valid.mean() > 0.8
        warped = _warp(previous.labels, frame.flow, cv2.INTER_NEAREST)
        agreement = (warped[valid] == frame.labels[valid]).mean()
        assert agreement >= 0.97, f"frame {t}: only {agreement:.3f} of labels agree"


def test_warping_previous_image_by_flow_reproduces_image() -> None:
    # 128x256 without sensor noise and lighting drift: at tinier sizes the (correctly
    # pixel-filtered) textures are so smooth that not warping at all scores almost as well.
    clip = generate_clip(3, height=128, width=256, seed=3, noise_sigma=0.0, lighting=0.0)
    for t in (1, 2):
        frame, previous = clip[t], clip[t - 1]
        valid = ~frame.occluded & _in_frame(frame.flow)
        now = frame.image.astype(np.float32)
        warped = _warp(previous.image, frame.flow, cv2.INTER_LINEAR).astype(np.float32)
        error = np.abs(warped - now).mean(axis=2)[valid]
        unwarped = np.abs(previous.image.astype(np.float32) - now).mean(axis=2)[valid]
        assert np.median(error) < 1.5  # bilinear resampling only
        assert error.mean() < 0.65 * unwarped.mean()


def test_static_flow_is_pure_translation_towards_focus_of_expansion() -> None:
    """Without sway and bounce the camera only moves along Z by speed / fps per frame, so a
    static point at depth d now was at depth d + step before: p_prev - c = (p - c) d / (d + step)
    for the principal point c."""
    config = SceneConfig(height=H, width=W, seed=1, sway_m=0.0, bounce_m=0.0, speed_mps=12.0)
    scene = SyntheticDrivingScene(config)
    frame = scene.render(6)
    camera = scene.camera(6)
    step = config.speed_mps / config.fps
    gy, gx = np.mgrid[0:H, 0:W].astype(np.float64)
    static = ~np.isin(frame.labels, [CAR, PEDESTRIAN, BICYCLIST]) & np.isfinite(frame.depth)
    depth = np.where(static, frame.depth, 1.0).astype(np.float64)
    ratio = np.where(static, depth / (depth + step), 1.0) - 1.0
    expected = np.stack([(gx - camera.cx) * ratio, (gy - camera.cy) * ratio], axis=-1)
    assert static.mean() > 0.5
    # depth is stored as float32, hence the small tolerance.
    np.testing.assert_allclose(frame.flow[static], expected[static], atol=2e-3)
    sky = ~np.isfinite(frame.depth)
    assert sky.any() and not frame.flow[sky].any()


def test_moving_objects_flow_differs_from_static_scene() -> None:
    """Oncoming cars approach faster than the static world: larger flow at the same depth."""
    config = SceneConfig(height=H, width=W, seed=3, num_cars=1, num_pedestrians=0,
                         num_bicyclists=0, sway_m=0.0, bounce_m=0.0)
    scene = SyntheticDrivingScene(config)
    for t in range(1, 90, 4):
        frame = scene.render(t)
        car = (frame.labels == CAR) & ~frame.occluded
        if car.sum() >= 4:
            break
    else:
        pytest.fail("the oncoming car never came into view")
    camera = scene.camera(t)
    step = config.speed_mps / config.fps
    gx = np.mgrid[0:H, 0:W][1].astype(np.float64)
    depth = np.where(car, frame.depth, 1.0).astype(np.float64)
    static_flow_x = (gx - camera.cx) * (depth / (depth + step) - 1.0)
    # The car's own motion towards the camera (vz < 0) makes it nearer in the previous frame
    # than a static point would be, so it has moved outwards less: |flow| is larger.
    assert np.abs(frame.flow[..., 0][car]).mean() > np.abs(static_flow_x[car]).mean()


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image size"):
        SceneConfig(height=4, width=4)
    with pytest.raises(ValueError, match="non-negative"):
        SyntheticDrivingScene(SceneConfig(height=H, width=W)).render(-1)
    with pytest.raises(IndexError):
        SyntheticDrivingScene(SceneConfig(height=H, width=W), num_frames=3)[3]


def test_iteration_matches_render() -> None:
    scene = SyntheticDrivingScene(SceneConfig(height=32, width=48, seed=9), num_frames=3)
    frames = list(scene)
    assert len(scene) == 3 and [f.index for f in frames] == [0, 1, 2]
    assert np.array_equal(frames[2].image, scene.render(2).image)
    assert [f.index for f in scene.frames(2, start=5)] == [5, 6]


def test_write_clip_video_round_trip(tmp_path, clip: list[SyntheticFrame]) -> None:
    path = write_clip_video(tmp_path / "clip.mp4", clip[:5], fps=30.0)
    capture = cv2.VideoCapture(str(path))
    try:
        decoded = []
        while True:
            ok, image = capture.read()
            if not ok:
                break
            decoded.append(image)
    finally:
        capture.release()
    assert len(decoded) == 5
    assert decoded[0].shape == (H, W, 3)
    # Lossy codec: close to the source on average, not equal.
    rgb = cv2.cvtColor(decoded[2], cv2.COLOR_BGR2RGB).astype(np.float32)
    assert np.abs(rgb - clip[2].image.astype(np.float32)).mean() < 20.0
    with pytest.raises(ValueError, match="no frames"):
        write_clip_video(tmp_path / "empty.mp4", [])


def test_synthetic_pairs_dataset() -> None:
    pairs = SyntheticPairs(num_clips=2, frames_per_clip=5, height=32, width=48,
                           offsets=(1, 3), seed=10)
    # Per clip: offset 1 for frames 1..4, offset 3 for frames 3..4.
    assert len(pairs) == 2 * (4 + 2)
    seen = set()
    for i in range(len(pairs)):
        _, key, frame, offset = pairs.index[i]
        assert frame - key == offset
        seen.add(offset)
    assert seen == {1, 3}
    sample = pairs[len(pairs) - 1]  # clip 1, frame 4, offset 3
    assert sample["offset"] == 3 and sample["name"] == "synthetic_c001_f00004"
    assert sample["key_name"] == "synthetic_c001_f00001"
    assert sample["key_image"].shape == (3, 32, 48) and sample["key_image"].dtype == torch.float32
    assert sample["labels"].shape == (32, 48) and sample["labels"].dtype == torch.int64
    scene = SyntheticDrivingScene(SceneConfig(height=32, width=48, seed=11))
    key = torch.from_numpy(scene.render(1).image).permute(2, 0, 1).float() / 255
    assert torch.equal(sample["key_image"], key)
    labels = sample["labels"]
    assert ((labels <= 10) | (labels == IGNORE_INDEX)).all()
    batch = torch.utils.data.default_collate([pairs[0], pairs[1]])
    assert batch["image"].shape == (2, 3, 32, 48)
