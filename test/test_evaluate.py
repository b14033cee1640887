"""Evaluation: streaming clips through the pipeline equals AccelNet.forward, intervals pool the
offsets' confusion matrices, and the CLI writes the JSON, tables and plots on a tiny fake
CamVid tree."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from accel_ros.cli import evaluate as evaluate_cli
from accel_ros.config import ModelConfig, PipelineConfig, preset
from accel_ros.data.clips import motion_clips, sequence_clips
from accel_ros.data.frames import FrameSet, to_tensor
from accel_ros.learn import evaluate
from accel_ros.learn.config import EvalConfig, config_from
from accel_ros.metrics import ConfusionMeter
from accel_ros.model import AccelNet, DISFlow, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_MAGIC = b"\x89PNG"


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


def test_streamed_evaluation_equals_forward(tiny_config: ModelConfig) -> None:
    """Evaluation streams clips through the node's pipeline; per offset that must equal
    AccelNet.forward on the clip from its keyframe, with the same DIS flows."""
    model = AccelNet(tiny_config).eval()
    frames = sliding_frames()
    clips = list(sequence_clips(frames.images, frames.labels, frames.sequences, 3, 0.1))
    assert len(clips) == 3
    meters = evaluate.evaluate_clips(model, clips, max_offset=2,
                                     pipeline=PipelineConfig(device="cpu", flow_scale=0.5))
    flow = DISFlow(scale=0.5)
    images = to_tensor(frames.images)  # (5, 3, 32, 48)
    expected = {mode: [ConfusionMeter(5) for _ in range(3)] for mode in ("dff", "accel")}
    single = {mode: ConfusionMeter(5) for mode in ("reference", "deeplab")}
    with torch.no_grad():
        for start in range(3):
            for offset in range(3):
                clip = images[start : start + offset + 1]
                flows = torch.stack([flow(clip[i : i + 1], clip[i + 1 : i + 2])[0]
                                     for i in range(offset)]) if offset else None
                target = frames.labels[start + offset][None]
                for mode in ("dff", "accel"):
                    logits = model(clip[None], None if flows is None else flows[None], mode=mode)
                    expected[mode][offset].update(logits.argmax(1), target)
        for index in range(5):  # single-frame modes: every frame exactly once
            for mode in single:
                logits = model(images[index : index + 1, None], mode=mode)
                single[mode].update(logits.argmax(1), frames.labels[index][None])
    for mode in ("dff", "accel"):
        for offset in range(3):
            np.testing.assert_array_equal(meters[mode][offset].matrix,
                                          expected[mode][offset].matrix, err_msg=f"{mode} {offset}")
    for mode, meter in single.items():
        assert all(m is meters[mode][0] for m in meters[mode])  # one meter for every offset
        np.testing.assert_array_equal(meters[mode][0].matrix, meter.matrix, err_msg=mode)
    # 3 current frames of 32 x 48 pixels per offset, none void; 5 frames once each
    assert meters["accel"][1].matrix.sum() == 3 * 32 * 48
    assert meters["reference"][0].matrix.sum() == 5 * 32 * 48


def test_motion_clips_evaluate_with_a_stated_step(tiny_config: ModelConfig) -> None:
    frames = sliding_frames(2)
    clips = list(motion_clips(frames.images, frames.labels, 4, seed=3))
    assert [len(c) for c in clips] == [4, 4]
    assert clips[0].frame_time_s == pytest.approx(1 / 30)
    meters = evaluate.evaluate_clips(AccelNet(tiny_config), clips, 3, ("dff", "accel"),
                                     PipelineConfig(device="cpu"))
    # Every offset scored once per clip; synthetic borders are void (255), so <= all pixels.
    for offset in range(4):
        assert 0 < meters["accel"][offset].matrix.sum() <= 2 * 32 * 48


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
    # interval k pools one confusion matrix over offsets 0..k-1: tp 15 of 30 for dff k=3
    assert summary["per_interval"]["dff"]["3"] == pytest.approx(15 / 30 / 2)
    assert summary["per_interval"]["accel"]["2"] == pytest.approx(15 / 20 / 2)
    assert summary["per_interval"]["reference"]["1"] == summary["per_offset"]["reference"]["0"]
    assert summary["claims"]["accel_beats_dff"] == {"2": True, "3": True}
    assert summary["claims"]["accel_beats_deeplab"] == {"2": True, "3": True}
    table = evaluate.markdown_table(summary)
    assert "| DFF (warp only) | 40.0 | 25.0 | 10.0 |" in table  # per offset
    assert "| DFF (warp only) | 40.0 | 32.5 | 25.0 |" in table  # per interval, pooled


def test_eval_cli_writes_json_tables_and_plots(
    tmp_path: Path, tiny_config: ModelConfig, fake_camvid: Path
) -> None:
    root = fake_camvid
    config = ModelConfig(num_classes=11, reference_backbone="resnet18",
                         update_backbone="resnet18", head_channels=16)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", AccelNet(config),
                                 extra={"resolution": [32, 48]})
    parser = argparse.ArgumentParser()
    evaluate_cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "eval"
    args = parser.parse_args(["eval", "--checkpoint", str(checkpoint), "--data-root", str(root),
                              "--max-offset", "2", "--out", str(out), "--threads", "1"])
    assert evaluate_cli.main(args) == 0
    result = json.loads((out / "eval.json").read_text())
    for key in ("per_offset", "per_interval", "pixel_accuracy", "per_class_iou", "claims",
                "input_size", "num_frames", "num_clips", "protocol", "offset_step_s"):
        assert key in result, key
    assert result["input_size"] == [32, 48]  # taken from the checkpoint's training resolution
    assert result["num_frames"] == 6 and result["num_clips"] == 4
    assert result["offset_step_s"] == pytest.approx(2 / 30, abs=1e-4)  # 2 frames, 30 fps
    assert "one offset step = 0.067 s" in (out / "results.md").read_text()
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
    frames = sliding_frames(3)
    clips = sequence_clips(frames.images, frames.labels, frames.sequences, 4, 0.1)
    with pytest.raises(ValueError, match="max-offset"):
        evaluate.evaluate_clips(AccelNet(tiny_config), clips, 3)


def test_eval_loads_its_model_through_load_model(tmp_path: Path) -> None:
    config = ModelConfig(num_classes=11, reference_backbone="resnet18", update_backbone=None,
                         head_channels=16)
    path = save_checkpoint(tmp_path / "tiny.pt", AccelNet(config), extra={"val_miou": 0.5})
    loaded = evaluate.load_eval_model(EvalConfig(checkpoint=str(path)))
    assert loaded.path == path and loaded.extra == {"val_miou": 0.5}
    assert loaded.model.config == config
    # "none": random weights of --preset, not of the default preset
    random = evaluate.load_eval_model(config_from(EvalConfig, {"checkpoint": "none",
                                                               "preset": "camvid34"}))
    assert random.path is None and random.model.config == preset("camvid34")
    with pytest.raises(ValueError, match="mode"):
        EvalConfig(modes=("accel", "flownet"))


def test_age_fusion_is_a_no_op_for_plain_models(tiny_config: ModelConfig, tmp_path: Path) -> None:
    """Models without age knots keep the plain 1x1 fusion, their config dict and checkpoint
    keys; an age-aware fusion started from a plain one answers alike at every age."""
    from accel_ros.model import load_checkpoint
    from accel_ros.model.fusion import AgeScoreFusion, ScoreFusion

    plain = AccelNet(tiny_config).eval()
    assert isinstance(plain.fusion, ScoreFusion) and not plain.fusion_uses_age
    assert "fusion_ages" not in tiny_config.to_dict()  # fingerprints of plain models unchanged
    with torch.no_grad():
        plain.fusion.conv.weight.normal_()
        plain.fusion.conv.bias.normal_()
    aged = AgeScoreFusion(5, (0.033, 0.5, 2.0)).copy_plain(plain.fusion)
    reference, update = torch.randn(3, 5, 4, 6), torch.randn(3, 5, 2, 3)
    for ages in (None, torch.tensor([0.01, 0.7, 9.0])):
        torch.testing.assert_close(aged(reference, update, ages), plain.fusion(reference, update))
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "plain.pt", plain))
    assert isinstance(loaded.fusion, ScoreFusion) and loaded.config == tiny_config
    aged_config = ModelConfig(**{**tiny_config.__dict__, "fusion_ages": (0.033, 1.0)})
    aged_model, _ = load_checkpoint(save_checkpoint(tmp_path / "aged.pt", AccelNet(aged_config)))
    assert aged_model.fusion_uses_age and aged_model.config.fusion_ages == (0.033, 1.0)
    with pytest.raises(ValueError, match="fusion_ages"):
        ModelConfig(fusion_ages=(1.0, 0.5))


def test_age_knots_interpolate_in_log_age() -> None:
    from accel_ros.model.fusion import age_knot_weights

    weights = age_knot_weights((0.1, 1.0), torch.tensor([0.05, 0.1, 10 ** -0.5, 1.0, 3.0]))
    expected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(weights, expected)


def test_pipeline_and_eval_give_the_fusion_keyframe_ages(tiny_config: ModelConfig) -> None:
    """The fusion sees seconds since the keyframe: from stamps when there are any (eval stamps
    clip time), else frames since the keyframe at 30 fps."""
    from accel_ros.stream import AccelSegmenter

    config = ModelConfig(**{**tiny_config.__dict__, "fusion_ages": (0.033, 1.0)})
    model = AccelNet(config).eval()
    seen: list[list[float]] = []
    fuse = model.fuse

    def spy(*args, age_s=None, **kwargs):
        seen.append([round(float(a), 4) for a in age_s])
        return fuse(*args, age_s=age_s, **kwargs)

    model.fuse = spy
    frames = sliding_frames(4)
    segmenter = AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=4,
                                                     max_time_gap=10.0))
    for index, frame in enumerate(frames.images):
        segmenter.process(frame, stamp=0.5 * index)
    assert seen == [[0.5], [1.0], [1.5]]
    seen.clear()
    segmenter.reset()
    for frame in frames.images[:3]:
        segmenter.process(frame)
    assert seen == [[round(1 / 30, 4)], [round(2 / 30, 4)]]
    seen.clear()
    clips = list(sequence_clips(frames.images, frames.labels, frames.sequences, 3, 1.0))
    evaluate.evaluate_clips(model, clips[:1], 2, modes=("accel",),
                            pipeline=PipelineConfig(device="cpu"))
    assert seen == [[1.0], [2.0]]  # 1 s steps: no time-gap reset inside a clip


def test_eval_through_another_backend_gives_the_same_miou(tmp_path) -> None:
    """`accel-ros eval --backend onnxruntime`: the same clips and the same numbers as torch."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    from accel_ros.config import ModelConfig
    from accel_ros.learn.config import EvalConfig
    from accel_ros.learn.evaluate import run_eval
    from accel_ros.model import AccelNet, save_checkpoint

    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", AccelNet(config))
    results = {}
    for backend in ("torch", "onnxruntime"):
        run_eval(EvalConfig(checkpoint=str(checkpoint), data="synthetic", limit=2, height=64,
                            width=96, max_offset=1, modes=("reference", "accel"),
                            out=tmp_path / backend, device="cpu", backend=backend, threads=1))
        results[backend] = json.loads((tmp_path / backend / "eval.json").read_text())
    for key in ("per_offset", "per_interval", "pixel_accuracy"):
        for mode in ("reference", "accel"):
            ours, theirs = results["onnxruntime"][key][mode], results["torch"][key][mode]
            assert ours.keys() == theirs.keys()
            assert np.allclose(list(ours.values()), list(theirs.values()), atol=0.005), key
    with pytest.raises(ValueError, match="backend"):
        EvalConfig(backend="tensorrt")
