"""Warping and flow: identities, exact known shifts, resolution rescaling, estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.config import FLOW_METHODS
from accel_ros.model import AccelNet, DISFlow, FarnebackFlow, ZeroFlow
from accel_ros.model.flow import FLOW_ESTIMATORS, build_flow, downscale_frame
from accel_ros.model.warp import (
    feature_size,
    flow_to_features,
    flow_to_grid,
    mean_flow_magnitude,
    out_of_frame_mask,
    resize_flow,
    warp,
)


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


@pytest.mark.parametrize("scale", [0.5, 0.37, 1.0])
@pytest.mark.parametrize("channels_last", [True, False])
def test_opencv_grey_frames_are_torchs_bilinear_downscale(scale, channels_last) -> None:
    """The OpenCV estimators' grey input (made by OpenCV) is the grey of `downscale_frame`'s
    bilinear downscale, up to float rounding, whatever the frame's memory layout."""
    torch.manual_seed(0)
    frame = torch.rand(2, 3, 90, 121)
    if channels_last:
        frame = frame.contiguous(memory_format=torch.channels_last)
    greys, device = DISFlow(scale=scale).prepare(frame)
    small = downscale_frame(frame, scale)
    expected = ((0.299 * small[:, 0] + 0.587 * small[:, 1] + 0.114 * small[:, 2])
                .clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert device == frame.device and len(greys) == 2
    for grey, want in zip(greys, expected, strict=True):
        assert grey.shape == want.shape and grey.dtype == np.uint8
        difference = np.abs(grey.astype(int) - want)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_mean_flow_magnitude_is_the_mean_vector_length() -> None:
    torch.manual_seed(0)
    flow = torch.randn(2, 2, 30, 40) * 5
    expected = flow.norm(dim=1).mean()
    assert torch.allclose(mean_flow_magnitude(flow), expected, rtol=1e-6)
    three_four = torch.stack((torch.full((1, 4, 4), 3.0), torch.full((1, 4, 4), -4.0)), dim=1)
    assert float(mean_flow_magnitude(three_four)) == 5.0


def test_flow_estimators_reject_mismatched_frames() -> None:
    with pytest.raises(ValueError, match="one size"):
        DISFlow()(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 48))


def test_zero_flow_is_zero() -> None:
    previous, current = _shifted_pair(shift=2)
    flow = ZeroFlow()(previous, current)
    assert flow.shape == (1, 2, 96, 128) and torch.count_nonzero(flow) == 0


def test_one_registry_of_flow_methods() -> None:
    assert set(FLOW_ESTIMATORS) == set(FLOW_METHODS)
    assert "flownet" not in FLOW_METHODS  # the untrained FlowNetLite was removed
    for name in FLOW_METHODS:
        assert build_flow(name, 0.5).name == name
    with pytest.raises(ValueError, match="unknown flow method"):
        build_flow("flownet")


def test_opencv_flow_refuses_non_finite_output_on_the_host() -> None:
    class NanDIS(DISFlow):
        def _flow(self, current, previous):  # type: ignore[override]
            out = super()._flow(current, previous)
            out[0, 0, 0] = np.nan
            return out

    previous, current = _shifted_pair(shift=2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        NanDIS()(previous, current)


# -- flow on the feature grid: stride geometry at any frame size --------------------------------
@pytest.mark.parametrize(("height", "width"), [(180, 240), (100, 150), (64, 128), (37, 53)])
@pytest.mark.parametrize("flow_scale", [1.0, 0.5])
def test_uniform_flow_becomes_shift_over_stride_on_any_size(height, width, flow_scale) -> None:
    """A uniform (u, v) px flow is (u / 16, v / 16) cells, whatever H, W and the flow scale:
    the old size-ratio scaling gave v * 12 / 180 at 180x240 (6.7% too large)."""
    rows, cols = feature_size((height, width))
    assert (rows, cols) == (-(-height // 16), -(-width // 16))
    fh, fw = round(height * flow_scale), round(width * flow_scale)
    flow = torch.empty(2, 2, fh, fw)
    # Flow is in pixels of its own (scaled) map: 8 and -24 input px.
    flow[:, 0], flow[:, 1] = 8.0 * fw / width, -24.0 * fh / height
    cells = flow_to_features(flow, (rows, cols), (height, width))
    assert cells.shape == (2, 2, rows, cols) and cells.dtype == torch.float32
    torch.testing.assert_close(cells[:, 0], torch.full((2, rows, cols), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(cells[:, 1], torch.full((2, rows, cols), -1.5), atol=1e-5, rtol=0)


def test_flow_is_sampled_at_the_cell_centres() -> None:
    """Cell (i, j) sits on input pixel (16 i, 16 j): a flow field that varies across the image
    is read there, not at the resized map's own pixel centres."""
    height, width = 180, 240
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
        indexing="ij",
    )
    flow = torch.stack((xs / 10.0, ys / 20.0))[None]  # u = x / 10 px, v = y / 20 px
    cells = flow_to_features(flow, feature_size((height, width)), (height, width))
    rows, cols = feature_size((height, width))
    cy = torch.arange(rows, dtype=torch.float32)[:, None] * 16
    cx = torch.arange(cols, dtype=torch.float32)[None, :] * 16
    expected_u = (torch.clamp(cx, max=width - 1) / 10.0 / 16).expand(rows, cols)
    expected_v = (torch.clamp(cy, max=height - 1) / 20.0 / 16).expand(rows, cols)
    torch.testing.assert_close(cells[0, 0], expected_u, atol=1e-5, rtol=0)
    torch.testing.assert_close(cells[0, 1], expected_v, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("height", "width"), [(180, 240), (72, 104)])
def test_propagate_moves_features_by_known_shift_at_non_multiple_sizes(height, width) -> None:
    """AccelNet.propagate: 32 px right and 16 px down are exactly 2 and 1 cells, at sizes that
    are not multiples of 16, with the flow at half resolution (DIS's default scale)."""
    from accel_ros.config import ModelConfig

    model = AccelNet(ModelConfig(num_classes=3, reference_backbone="resnet18",
                                 update_backbone=None, head_channels=8))
    rows, cols = feature_size((height, width))
    features = torch.randn(1, 4, rows, cols)
    flow = torch.zeros(1, 2, height // 2, width // 2)
    flow[:, 0], flow[:, 1] = 16.0, 8.0  # half-resolution pixels: 32 and 16 input px
    warped = model.propagate(features, flow, "zeros", image_size=(height, width))
    torch.testing.assert_close(
        warped[..., : rows - 1, : cols - 2], features[..., 1:, 2:], rtol=0, atol=1e-5
    )
    # Without image_size a full-resolution flow is understood; a half-resolution one is refused.
    full = torch.zeros(1, 2, height, width)
    full[:, 0], full[:, 1] = 32.0, 16.0
    torch.testing.assert_close(model.propagate(features, full, "zeros"), warped)
    with pytest.raises(ValueError, match="pass image_size"):
        model.propagate(features, flow)


@pytest.mark.parametrize(("dtype", "width"), [(torch.float16, 1000), (torch.bfloat16, 128)])
def test_grid_is_float32_so_half_features_warp_exactly(dtype, width) -> None:
    """Integer ramps are exact in half precision and so are ramp + 0.5: a half-pixel flow must
    reproduce them exactly. A grid built in the features' dtype would be off by ~0.25 px here
    (fp16 at 1000 px, bf16 at 128 px) and miss most of them."""
    flow = torch.full((1, 2, 3, width), 0.5, dtype=dtype)
    assert flow_to_grid(flow).dtype == torch.float32
    ramp = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(1, 1, 3, width)
    warped = warp(ramp.to(dtype), flow)
    assert warped.dtype == dtype
    expected = (ramp + 0.5)[..., :-1].to(dtype)
    torch.testing.assert_close(warped[..., :-1], expected, rtol=0, atol=0)


def test_warp_under_autocast_keeps_the_features_dtype() -> None:
    features = torch.randn(1, 3, 6, 8)
    flow = torch.full((1, 2, 6, 8), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        warped = warp(features, flow)
    assert warped.dtype == torch.float32
    torch.testing.assert_close(warped, warp(features, flow))
