"""`accel-ros demo`: the real CLI entry end to end at a tiny size, the checkpoint fallback, the
comparison layout, option checks before any file is written, and the reference mode with
agreement scores. (mIoU arithmetic is accel_ros.metrics', tested in test_metrics.py.)"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import accel_ros.config
import accel_ros.model
from accel_ros import demo
from accel_ros.cli import demo as demo_cli
from accel_ros.cli import main as cli
from accel_ros.io import video
from accel_ros.metrics import confusion_matrix
from accel_ros.palette import CAMVID_CLASSES


def test_demo_entry_end_to_end(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "demo"
    args = parser.parse_args(["demo", "--out", str(out), "--frames", "3", "--height", "64",
                              "--width", "96", "--checkpoint", "none", "--quiet"])
    assert args.handler(args) == 0

    printed = capsys.readouterr().out
    for title in ("Reference", "DFF", "DeepLab-Lite0", "Accel-Lite0"):  # the lite preset
        assert title in printed
    assert "agrees with ref" in printed and "domain gap" in printed
    assert "mIoU" in printed and "random weights" in printed
    # The table by keyframe age: 2 fps, so offsets 0..4 are 0 to 2 s; 3 frames reach offset 2.
    table = printed[printed.index("mIoU (%) by keyframe age"):].splitlines()
    assert table[1].split()[-5:] == ["0.00", "0.50", "1.00", "1.50", "2.00"]
    for row in table[2:6]:
        cells = row.split()[-5:]
        assert all(0.0 <= float(cell) <= 100.0 for cell in cells[:3]) and cells[3:] == ["-"] * 2
    assert table[6].startswith("  Accel - DFF")
    assert f"backend torch, fp32 on cpu, {torch.get_num_threads()} thread" in printed

    files = {path.name for path in out.iterdir()}
    assert files == {demo.ACCEL_VIDEO, demo.COMPARISON_VIDEO, demo.COMPARISON_IMAGE,
                     demo.AGE_PLOT, demo.SUMMARY_JSON}
    assert video.read_image_rgb(out / demo.AGE_PLOT).shape[2] == 3
    accel_frames = list(video.iter_video(out / demo.ACCEL_VIDEO))
    assert len(accel_frames) == 3 and accel_frames[0].rgb.shape == (64, 96, 3)
    grid_frames = list(video.iter_video(out / demo.COMPARISON_VIDEO))
    # 2x3 panels of 64x96 above the legend and caption strip
    assert len(grid_frames) == 3
    grid_height, grid_width = grid_frames[0].rgb.shape[:2]
    assert grid_width == 288 and grid_height > 128 and grid_height % 2 == 0
    assert video.read_image_rgb(out / demo.COMPARISON_IMAGE).shape == (grid_height, 288, 3)

    summary = json.loads((out / demo.SUMMARY_JSON).read_text())
    assert summary["checkpoint"] is None
    assert summary["model"]["reference_backbone"] == "efficientnet_lite2"
    assert summary["class_names"] == list(CAMVID_CLASSES)
    assert summary["backend"]["backend"] == "torch" and summary["backend"]["precision"] == "fp32"
    assert summary["backend"]["threads"] == torch.get_num_threads()
    by_age = summary["by_keyframe_age"]
    assert by_age["keyframe_age_s"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    for mode in ("reference", "dff", "deeplab", "accel"):
        assert all(0.0 <= v <= 1.0 for v in by_age["miou"][mode][:3])
        assert by_age["miou"][mode][3:] == [None, None]
    gain = [a - d for a, d in zip(by_age["miou"]["accel"][:3], by_age["miou"]["dff"][:3],
                                  strict=True)]
    assert by_age["accel_minus_dff"][:3] == pytest.approx(gain)
    assert by_age["miou"]["accel"][0] == by_age["miou"]["dff"][0]  # both on the keyframe
    assert set(summary["modes"]) == {"reference", "dff", "deeplab", "accel"}
    for stats in summary["modes"].values():
        assert stats["frames"] == 3
        assert 0.0 <= stats["miou"] <= 1.0
        assert 0.0 <= stats["pixel_accuracy"] <= 1.0
        assert len(stats["iou_per_class"]) == 11
        assert 0.0 <= stats["agreement_with_reference"] <= 1.0
        assert stats["mean_ms"] > 0
    # keyframe interval 5: one keyframe in 3 frames for the flow modes, none for DeepLab.
    assert summary["modes"]["dff"]["keyframes"] == 1
    assert summary["modes"]["accel"]["keyframes"] == 1
    assert summary["modes"]["deeplab"]["keyframes"] == 0
    assert summary["modes"]["reference"]["keyframes"] == 3  # its network on every frame
    assert summary["modes"]["reference"]["agreement_with_reference"] == 1.0
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
    for mode in demo.DEMO_MODES:
        run = demo.ModeRun(mode, mode.upper(), labels=[np.full((48, 80), 3, np.uint8)],
                           keyframe_ages=[0])
        run.confusion = confusion_matrix(run.labels[0], truth, 11)
        run.agreement_confusion = confusion_matrix(run.labels[0], run.labels[0], 11)
        runs.append(run)
    footer = demo.legend_strip(240, 48, ("sky", "road"), "camvid")
    grid = demo.comparison_frame(0, image, truth, runs, palette="camvid", alpha=1.0,
                                 footer=footer)
    assert grid.shape == (96 + footer.shape[0], 240, 3) and grid.dtype == np.uint8
    # Below the title banner, alpha 1 shows the pure palette colour of class 3 (road), in
    # the reference's panel (top right) and Accel's (bottom right).
    np.testing.assert_array_equal(grid[47, -1], [128, 64, 128])
    np.testing.assert_array_equal(grid[95, -1], [128, 64, 128])
    np.testing.assert_array_equal(grid[-1, -1], [32, 32, 32])  # the footer's grey
    panel = demo.label_panel(image, "Title")
    assert (panel[-1] == 200).all() and (panel[0] < 200).all()
    assert demo.showcase_index([0, 1, 2, 0, 1, 2, 0, 1, 2]) == 5


def test_a_title_too_wide_for_its_panel_breaks_onto_a_second_line():
    """Titles never run into the next panel: a subtitle that does not fit beside the title
    goes below it, at the full type size."""
    image = np.full((288, 384, 3), 200, dtype=np.uint8)
    row = demo.render.banner_height(288)
    short = demo.label_panel(image, "DFF", "mIoU 31.1")
    long = demo.label_panel(image, "DeepLab-Lite0 +1.5s", "mIoU 26.2 ref 83% 42ms " * 2)
    assert (short[row + 2] == 200).all()  # one banner row
    assert (long[2 * row - 1] < 200).all() and (long[2 * row + 2] == 200).all()  # two rows
    assert (long[: 2 * row, -3:] == 70).all()  # the right margin only darkened: no text
    run = demo.ModeRun("accel", "Accel", keyframe_ages=[0, 3], frame_time_s=0.5)
    assert demo.age_label(run, 0) == "key" and demo.age_label(run, 1) == "+1.5s"


def test_the_verdict_says_what_the_clip_measured():
    """Accel against DFF by keyframe age, from the numbers; the real-video record beside it
    whenever the clip does not show Accel ahead at every age."""
    from accel_ros.demo import ages

    real = ages.RealAges([0.5, 1.0, 2.0], [0.435, 0.364, 0.333], [0.455, 0.374, 0.368],
                         "held-out CamVid street 0001TP", "1 and 2 s: real frames")
    titles = {"dff": "DFF", "accel": "Accel"}
    table = ages.AgeTable([0.0, 0.5, 1.0], {"dff": [0.4, 0.30, 0.25],
                                            "accel": [0.4, 0.32, 0.29]}, titles)
    assert ages.verdict(table, real) == [
        "This clip shows Accel above DFF at every keyframe age (+2.0 to +4.0 mIoU)."]
    table.miou["accel"] = [0.4, 0.29, 0.27]
    lines = ages.verdict(table, real)
    assert lines[0].startswith("This clip shows Accel above DFF only at keyframe ages 1 s, "
                               "not at 0.5 s (-1.0 to +2.0 mIoU)")
    assert lines[1] == ("On real video (held-out CamVid street 0001TP; 1 and 2 s: real "
                        "frames), Accel vs DFF: 45.5 vs 43.5 at 0.5 s, 37.4 vs 36.4 at 1 s (the "
                        "checkpoint's record; docs/results.md).")
    table.miou["accel"] = [0.4, 0.2, 0.2]
    assert ages.verdict(table, None)[0].startswith("This clip does not show Accel's advantage")
    assert "0.50   1.00" in "\n".join(ages.format_age_table(table, real))
    extra = {"heldout_estimate": {"validation": "held-out street 0001TP with motion",
                                  "miou_by_keyframe_age_s": {"ages": [1.0], "dff": [0.3],
                                                             "accel": [0.4]}}}
    assert ages.real_ages(extra).where == "held-out CamVid street 0001TP"
    assert ages.real_ages({}) is None


def test_caption_wraps_inside_the_picture():
    lines = [("a domain gap caption " * 12, (255, 255, 255))]
    strip = demo.caption_panel(288, 64, lines)
    assert strip.shape[1] == 288 and strip.shape[0] % 2 == 0
    # wrapped onto several lines, and text drawn up to (not past) the right margin
    assert strip.shape[0] > 3 * demo.render.banner_height(64)
    assert (strip[:, :-4] != 32).any() and (strip[:, -3:] == 32).all()


def test_every_option_is_checked_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """A bad option, or a file that is no checkpoint, is one line (exit 2) before the clip is
    rendered or the output folder made."""

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered before the options were checked")

    monkeypatch.setattr(demo.run, "render_clip", no_rendering)
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {
        "--keyframe-interval 0": "keyframe_interval must be",
        "--frames 0": "frames must be >= 1",
        "--fps 0": "fps must be > 0",
        "--overlay-alpha 1.5": "alpha must be in [0, 1]",
        "--height 4": "image size must be >= 8x8",
        "--threads 0": "--threads must be >= 1",
        f"--checkpoint {junk}": "is not a checkpoint of this package",
        f"--checkpoint {tmp_path / 'absent.pt'}": "checkpoint not found",
    }
    for options, message in cases.items():
        out = tmp_path / "out"
        code = cli.main(["demo", "--out", str(out), "--quiet", *options.split()])
        err = capsys.readouterr().err
        assert code == 2, options
        assert err.count("\n") == 1 and message in err, (options, err)
        assert "weights_only" not in err and len(err) < 240, (options, err)
        assert not out.exists(), options


def test_the_checkpoints_real_video_scores_are_captioned():
    """What the synthetic clip cannot show: the checkpoint's scores on real held-out video."""
    config = accel_ros.config.preset("lite")
    extra = {"val_miou": {"reference": 0.4968, "update": 0.3593, "fusion": 0.4968},
             "validation": "held-out 0001TP"}
    assert demo.run.real_video_scores(extra, config) == (
        "On real video (held-out 0001TP), mIoU: Reference 49.7%, DeepLab-Lite0 35.9%, "
        "Accel-Lite0 49.7%.")
    assert demo.run.real_video_scores({}, config) is None
    every_frame = {"val_miou": {"reference": 0.71}, "validation": "camvid val (trained on)",
                   "heldout_estimate": {"validation": "held-out 0001TP, same recipe without it",
                                        "val_miou": {"reference": 0.497, "update": 0.355}}}
    assert demo.run.real_video_scores(every_frame, config) == (
        "On real video (held-out 0001TP, same recipe without it), mIoU: Reference 49.7%, "
        "DeepLab-Lite0 35.5%.")
