"""Evaluation: the cached per-offset evaluation equals AccelNet.forward, intervals average the
offsets, and the CLI writes the JSON, tables and plots on a tiny fake CamVid tree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import PNG_MAGIC, write_fake_camvid

from accel_ros.config import ModelConfig
from accel_ros.metrics import ConfusionMeter
from accel_ros.model import AccelNet, DISFlow, save_checkpoint
from accel_ros.tools import evaluate
from accel_ros.tools.train import FrameSet, to_tensor


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread, restored afterwards (see test_train)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sliding_frames(count: int = 5, height: int = 32, width: int = 48) -> FrameSet:
    """(32, 48, 3) uint8 frames of a texture sliding 2 px per frame; labels = brightest channel."""
    import cv2

    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width + 20, 3), np.uint8), (0, 0), 2)
    images = [
        np.ascontiguousarray(texture[:, 10 - 2 * t : 10 - 2 * t + width]) for t in range(count)
    ]
    labels = [image.argmax(2).astype(np.uint8) for image in images]
    return FrameSet(images, labels, ["clip"] * count)


def test_cached_evaluation_equals_forward(tiny_config: ModelConfig) -> None:
    model = AccelNet(tiny_config).eval()
    frames = sliding_frames()
    size = (32, 48)
    meters = evaluate.evaluate_offsets(model, frames, size, max_offset=2,
                                       device=torch.device("cpu"))
    flow = DISFlow(scale=0.5)
    images = to_tensor(frames.images)  # (5, 3, 32, 48)
    expected = {mode: [ConfusionMeter(5) for _ in range(3)] for mode in evaluate.EVAL_MODES}
    with torch.no_grad():
        for current in range(2, 5):
            for offset in range(3):
                clip = images[current - offset : current + 1]
                flows = torch.stack([flow(clip[i : i + 1], clip[i + 1 : i + 2])[0]
                                     for i in range(offset)]) if offset else None
                for mode in evaluate.EVAL_MODES:
                    logits = model(clip[None], None if flows is None else flows[None], mode=mode)
                    expected[mode][offset].update(logits.argmax(1), frames.labels[current][None])
    for mode in evaluate.EVAL_MODES:
        for offset in range(3):
            np.testing.assert_array_equal(meters[mode][offset].matrix,
                                          expected[mode][offset].matrix, err_msg=f"{mode} {offset}")
    # 3 current frames of 32 x 48 pixels, none void
    assert meters["accel"][1].matrix.sum() == 3 * 32 * 48


def test_intervals_average_offsets_and_claims() -> None:
    def meter(tp: int, fn: int) -> ConfusionMeter:
        # one class: IoU = tp / (tp + fn)
        one = ConfusionMeter(2)
        one.matrix[:] = [[tp, fn], [0, 0]]
        return one

    meters = {
        "reference": [meter(8, 2)] * 3,  # class IoUs 0.8 and 0 (predicted, absent)
        "deeplab": [meter(6, 4)] * 3,
        "dff": [meter(8, 2), meter(5, 5), meter(2, 8)],
        "accel": [meter(8, 2), meter(7, 3), meter(7, 3)],
    }
    summary = evaluate.summarise(meters)
    assert summary["per_offset"]["dff"]["1"] == pytest.approx(0.5 / 2)  # mean(0.5, 0)
    assert summary["per_offset"]["accel"]["0"] == pytest.approx(0.8 / 2)
    # interval k = mean of offsets 0..k-1
    assert summary["per_interval"]["dff"]["3"] == pytest.approx((0.8 + 0.5 + 0.2) / 3 / 2)
    assert summary["per_interval"]["accel"]["2"] == pytest.approx((0.8 + 0.7) / 2 / 2)
    assert summary["per_interval"]["reference"]["1"] == summary["per_offset"]["reference"]["0"]
    assert summary["claims"]["accel_beats_dff"] == {"2": True, "3": True}
    assert summary["claims"]["accel_beats_deeplab"] == {"2": True, "3": True}
    table = evaluate.markdown_table(summary)
    assert "| DFF (warp only) | 40.0 | 25.0 | 10.0 |" in table


def test_eval_cli_writes_json_tables_and_plots(tmp_path: Path, tiny_config: ModelConfig) -> None:
    root = write_fake_camvid(tmp_path / "camvid")
    config = ModelConfig(num_classes=11, reference_backbone="resnet18",
                         update_backbone="resnet18", head_channels=16)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", AccelNet(config),
                                 extra={"resolution": [32, 48]})
    parser = argparse.ArgumentParser()
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "eval"
    args = parser.parse_args(["eval", "--checkpoint", str(checkpoint), "--data-root", str(root),
                              "--max-offset", "2", "--out", str(out), "--threads", "1"])
    assert evaluate.main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("per_offset", "per_interval", "pixel_accuracy", "per_class_iou", "claims",
                "resolution", "num_frames", "num_eval_frames", "protocol"):
        assert key in result, key
    assert result["resolution"] == [32, 48]  # taken from the checkpoint's training resolution
    assert result["num_frames"] == 6 and result["num_eval_frames"] == 4
    assert set(result["per_offset"]) == set(evaluate.EVAL_MODES)
    assert list(result["per_offset"]["accel"]) == ["0", "1", "2"]
    assert list(result["per_interval"]["dff"]) == ["1", "2", "3"]
    # A keyframe is N_R's own answer in every warping mode.
    assert result["per_offset"]["dff"]["0"] == result["per_offset"]["reference"]["0"]
    assert result["per_offset"]["accel"]["0"] == result["per_offset"]["reference"]["0"]
    assert len(result["per_class_iou"]["accel"]["1"]) == 11
    assert "| Accel (warp + N_U, fused) |" in (out / "results.md").read_text()
    for name in ("fig5_offsets.png", "table3.png"):
        assert (out / name).read_bytes()[:4] == PNG_MAGIC


def test_eval_names_an_impossible_offset(tiny_config: ModelConfig) -> None:
    with pytest.raises(ValueError, match="max-offset"):
        evaluate.evaluate_offsets(AccelNet(tiny_config), sliding_frames(3), (32, 48), 3,
                                  torch.device("cpu"))
