"""resize_mode: frames of another aspect ratio than the network input are padded, stretched or
cropped, and their labels always come back at the frame's own size, aligned with its pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.model import AccelNet
from accel_ros.stream import AccelSegmenter
from accel_ros.stream.framing import Canvas, canvas, canvas_to_frame, frame_to_canvas

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_canvas_geometry() -> None:
    network = (360, 480)  # 4:3
    assert canvas((1080, 1920), network, "stretch") == Canvas(0, 0, 1080, 1920)
    assert canvas((1080, 1920), network, "crop") == Canvas(0, 240, 1080, 1440)
    assert canvas((1080, 1920), network, "pad") == Canvas(-180, 0, 1440, 1920)
    assert canvas((1920, 1080), network, "pad") == Canvas(0, -740, 1920, 2560)  # portrait
    assert canvas((1920, 1080), network, "crop") == Canvas(555, 0, 810, 1080)
    for mode in ("stretch", "crop", "pad"):  # the network's own aspect ratio: the frame itself
        assert canvas((720, 960), network, mode) == Canvas(0, 0, 720, 960)
        assert canvas((720, 960), None, mode) == Canvas(0, 0, 720, 960)


def test_canvas_round_trip_restores_the_frame() -> None:
    image = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(1, 2, 6, 8)
    for mode in ("crop", "pad"):
        box = canvas((6, 8), (4, 4), mode)
        placed = frame_to_canvas(image, box)
        assert placed.shape[-2:] == (box.height, box.width)
        back = canvas_to_frame(placed, box, (6, 8), fill=-1.0)
        if mode == "pad":
            assert torch.equal(back, image)  # every frame pixel was on the canvas
        else:
            assert torch.equal(back[..., :, 1:7], image[..., :, 1:7])
            assert (back[..., :, [0, 7]] == -1).all()  # cropped away: the fill


@pytest.fixture(scope="module")
def tiny_model() -> AccelNet:
    torch.manual_seed(0)
    return AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                                head_channels=16, input_size=(48, 64))).eval()


@pytest.mark.parametrize("mode", ["pad", "stretch", "crop"])
def test_a_1920x1080_frame_gets_1920x1080_labels(tiny_model, mode) -> None:
    seg = AccelSegmenter(tiny_model, PipelineConfig(mode="accel", device="cpu",
                                                    resize_mode=mode, keyframe_interval=2))
    frame = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), np.uint8)
    for _ in range(3):  # keyframe, warped, keyframe
        result = seg.process(frame)
        assert result.labels.shape == (1080, 1920)
    ignored = (result.labels == 255).mean()
    assert ignored == (pytest.approx(0.25) if mode == "crop" else 0.0)


def test_pad_labels_are_the_letterboxed_canvas_labels(tiny_model) -> None:
    """pad = run the network on the frame centred on a black canvas of its aspect ratio, then
    cut the frame's pixels back out."""
    frame = np.random.default_rng(2).integers(0, 255, (48, 96, 3), np.uint8)  # 1:2 vs 3:4
    padded = AccelSegmenter(tiny_model, PipelineConfig(mode="reference", device="cpu"))
    stretched = AccelSegmenter(tiny_model, PipelineConfig(mode="reference", device="cpu",
                                                          resize_mode="stretch"))
    box = canvas((48, 96), (48, 64), "pad")
    letterbox = np.zeros((box.height, box.width, 3), np.uint8)
    letterbox[-box.top: -box.top + 48] = frame
    expected = stretched.process(letterbox).labels[-box.top: -box.top + 48]
    assert (padded.process(frame).labels == expected).mean() >= 0.999


def test_resize_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        PipelineConfig(resize_mode="squash")
