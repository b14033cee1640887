"""Warping and flow: identities, exact known shifts, resolution rescaling, estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.model import DISFlow, FarnebackFlow, FlowNetLite, LearnedFlow, ZeroFlow
from accel_ros.model.warp import out_of_frame_mask, resize_flow, warp


def test_zero_flow_warp_is_identity() -> None:
    features = torch.randn(2, 7, 9, 13)
    warped = warp(features, torch.zeros(2, 2, 9, 13))
    torch.testing.assert_close(warped, features, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (0, 2), (-2, 1), (4, -3)])
def test_integer_translation_shifts_features_exactly(dx: int, dy: int) -> None:
    features = torch.randn(1, 4, 12, 16)
    flow = torch.zeros(1, 2, 12, 16)
    flow[:, 0], flow[:, 1] = dx, dy
    warped = warp(features, flow, out_of_frame="zeros")
    # Backward flow: warped[y, x] = features[y + dy, x + dx] wherever that source exists.
    ys = slice(max(0, -dy), 12 - max(0, dy))
    xs = slice(max(0, -dx), 16 - max(0, dx))
    src_ys = slice(ys.start + dy, ys.stop + dy)
    src_xs = slice(xs.start + dx, xs.stop + dx)
    torch.testing.assert_close(
        warped[..., ys, xs], features[..., src_ys, src_xs], rtol=0, atol=1e-5
    )
    mask = out_of_frame_mask(flow)[0, 0]
    assert int(mask.sum()) == 12 * 16 - (ys.stop - ys.start) * (xs.stop - xs.start)
    # Samples from outside the previous frame are zero in `zeros` mode (up to rounding of the
    # normalised grid at the very edge).
    assert float(warped[0, :, mask].abs().max()) < 1e-5


def test_border_mode_repeats_edge_features() -> None:
    features = torch.arange(20, dtype=torch.float32).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 2.0
    warped = warp(features, flow, out_of_frame="border")
    # Columns 3 and 4 sample x = 5, 6: outside, clamped to the last column (x = 4).
    torch.testing.assert_close(warped[0, 0, :, 3], features[0, 0, :, 4])
    torch.testing.assert_close(warped[0, 0, :, 4], features[0, 0, :, 4])


def test_incremental_warps_compound() -> None:
    features = torch.randn(1, 3, 10, 20)
    step = torch.zeros(1, 2, 10, 20)
    step[:, 0] = 1.0
    twice = warp(warp(features, step, "zeros"), step, "zeros")
    direct = torch.zeros_like(step)
    direct[:, 0] = 2.0
    torch.testing.assert_close(twice, warp(features, direct, "zeros"), rtol=0, atol=1e-5)


def test_resize_flow_rescales_vectors_per_axis() -> None:
    flow = torch.zeros(1, 2, 64, 128)
    flow[:, 0], flow[:, 1] = 16.0, 8.0
    small = resize_flow(flow, (4, 16))
    assert small.shape == (1, 2, 4, 16)
    torch.testing.assert_close(small[:, 0], torch.full((1, 4, 16), 2.0))  # 16 * 16/128
    torch.testing.assert_close(small[:, 1], torch.full((1, 4, 16), 0.5))  # 8 * 4/64
    assert resize_flow(flow, (64, 128)) is flow


def test_resized_flow_warp_matches_image_space_shift() -> None:
    # A 32 px shift at 256 px width is exactly 2 feature pixels at 1/16 resolution.
    features = torch.randn(1, 2, 8, 16)
    image_flow = torch.zeros(1, 2, 128, 256)
    image_flow[:, 0] = 32.0
    warped = warp(features, resize_flow(image_flow, (8, 16)), "zeros")
    torch.testing.assert_close(warped[..., :14], features[..., 2:], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("bad_flow", "message"),
    [
        (torch.full((1, 2, 4, 4), float("nan")), "NaN or infinite"),
        (torch.full((1, 2, 4, 4), float("inf")), "NaN or infinite"),
        (torch.zeros(1, 3, 4, 4), r"\(N, 2, H, W\)"),
        (torch.zeros(1, 2, 5, 4), "do not match"),
    ],
)
def test_bad_flow_raises_clear_error(bad_flow: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        warp(torch.zeros(1, 3, 4, 4), bad_flow)


def _shifted_pair(shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous, current) (1, 3, 96, 128) where the content moved `shift` px to the right."""
    import cv2

    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    # Stretch the blurred noise back to full contrast: real camera texture, not a grey wash.
    base = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX)
    previous = base[:, 16:144]
    current = base[:, 16 - shift : 144 - shift]
    as_tensor = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    return as_tensor(previous), as_tensor(current)


@pytest.mark.parametrize("estimator", [DISFlow(scale=1.0, preset="medium"), FarnebackFlow(1.0)])
def test_opencv_flow_recovers_known_translation(estimator) -> None:
    previous, current = _shifted_pair(shift=4)
    flow = estimator(previous, current)
    assert flow.shape == (1, 2, 96, 128)
    # Content moved +4 px in x, so backward flow points 4 px back: u = -4, v = 0.
    centre = flow[0, :, 24:72, 32:96]
    assert abs(float(centre[0].median()) + 4.0) < 0.5
    assert abs(float(centre[1].median())) < 0.5


def test_downscaled_flow_is_in_its_own_pixels() -> None:
    previous, current = _shifted_pair(shift=8)
    flow = DISFlow(scale=0.5, preset="medium")(previous, current)
    assert flow.shape == (1, 2, 48, 64)
    assert abs(float(flow[0, 0, 12:36, 16:48].median()) + 4.0) < 0.5
    full = resize_flow(flow, (96, 128))
    assert abs(float(full[0, 0, 24:72, 32:96].median()) + 8.0) < 1.0


def test_flow_estimators_reject_mismatched_frames() -> None:
    with pytest.raises(ValueError, match="one size"):
        DISFlow()(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 48))


def test_zero_and_untrained_learned_flow_are_zero() -> None:
    previous, current = _shifted_pair(shift=2)
    assert torch.count_nonzero(ZeroFlow()(previous, current)) == 0
    learned = LearnedFlow(FlowNetLite())(previous, current)
    assert learned.shape == (1, 2, 24, 32)
    assert torch.count_nonzero(learned) == 0
