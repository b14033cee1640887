"""`accel-ros demo`: the real CLI entry end to end at a tiny size, the checkpoint fallback and
the comparison layout. (mIoU arithmetic is accel_ros.metrics', tested in test_metrics.py.)"""

from __future__ import annotations

import argparse
import json

import numpy as np

import accel_ros.model
from accel_ros import demo
from accel_ros.io import video
from accel_ros.metrics import confusion_matrix


def test_demo_entry_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "demo"
    args = parser.parse_args(["demo", "--out", str(out), "--frames", "3", "--height", "64",
                              "--width", "96", "--checkpoint", "none", "--quiet"])
    assert args.handler(args) == 0

    printed = capsys.readouterr().out
    for title in ("DFF", "DeepLab-Lite0", "Accel-Lite0"):  # the default (lite) preset
        assert title in printed
    assert "mIoU" in printed and "random weights" in printed

    files = {path.name for path in out.iterdir()}
    assert files == {demo.ACCEL_VIDEO, demo.COMPARISON_VIDEO, demo.COMPARISON_IMAGE,
                     demo.SUMMARY_JSON}
    accel_frames = list(video.iter_video(out / demo.ACCEL_VIDEO))
    assert len(accel_frames) == 3 and accel_frames[0].rgb.shape == (64, 96, 3)
    grid_frames = list(video.iter_video(out / demo.COMPARISON_VIDEO))
    assert len(grid_frames) == 3 and grid_frames[0].rgb.shape == (128, 288, 3)
    assert video.read_image_rgb(out / demo.COMPARISON_IMAGE).shape == (128, 288, 3)

    summary = json.loads((out / demo.SUMMARY_JSON).read_text())
    assert summary["checkpoint"] is None
    assert summary["model"]["reference_backbone"] == "efficientnet_lite2"
    assert set(summary["modes"]) == {"dff", "deeplab", "accel"}
    for stats in summary["modes"].values():
        assert stats["frames"] == 3
        assert 0.0 <= stats["miou"] <= 1.0
        assert 0.0 <= stats["pixel_accuracy"] <= 1.0
        assert len(stats["iou_per_class"]) == 11
    # keyframe interval 5: one keyframe in 3 frames for the flow modes, none for DeepLab.
    assert summary["modes"]["dff"]["keyframes"] == 1
    assert summary["modes"]["accel"]["keyframes"] == 1
    assert summary["modes"]["deeplab"]["keyframes"] == 0
    assert summary["showcase_frame"] == 2  # the frame farthest from its keyframe (age 2)


def test_demo_checkpoint_falls_back_only_for_missing_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accel_ros.model, "DEFAULT_CHECKPOINT", tmp_path / "absent.pt")
    assert demo.demo_checkpoint("default") is None
    assert "RANDOM weights" in capsys.readouterr().err
    assert demo.demo_checkpoint("none") == "none"
    assert demo.demo_checkpoint(str(tmp_path / "mine.pt")) == str(tmp_path / "mine.pt")
    present = tmp_path / "shipped.pt"
    present.write_bytes(b"x")
    monkeypatch.setattr(accel_ros.model, "DEFAULT_CHECKPOINT", present)
    assert demo.demo_checkpoint("default") == "default"
    assert capsys.readouterr().err == ""


def test_comparison_layout_and_showcase_frame():
    image = np.full((48, 80, 3), 200, dtype=np.uint8)
    truth = np.zeros((48, 80), dtype=np.uint8)
    runs = []
    for mode in ("dff", "deeplab", "accel"):
        run = demo.ModeRun(mode, mode.upper(), labels=[np.full((48, 80), 3, np.uint8)],
                           keyframe_ages=[0])
        run.confusion = confusion_matrix(run.labels[0], truth, 11)
        runs.append(run)
    legend = demo.legend_panel(48, 80, ("sky", "road"), "camvid")
    grid = demo.comparison_frame(0, image, truth, runs, palette="camvid", alpha=1.0,
                                 legend=legend)
    assert grid.shape == (96, 240, 3) and grid.dtype == np.uint8
    # Below the title banner, alpha 1 shows the pure palette colour of class 3 (road).
    np.testing.assert_array_equal(grid[-1, 0], [128, 64, 128])
    panel = demo.label_panel(image, "Title")
    assert (panel[-1] == 200).all() and (panel[0] < 200).all()
    assert demo.showcase_index([0, 1, 2, 0, 1, 2, 0, 1, 2]) == 5
