"""The GPU sprint's CPU dry run: pack a fake CamVid and fake ImageNet trunks, train every stage
at toy size, evaluate, time, check parity, and bring back at most 5 files with a checkpoint
that joins and loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from accel_ros.gpu import sprint as gpu_sprint
from accel_ros.gpu.sprint_pack import (
    TRUNKS,
    load_trunk_weights,
    pack_camvid,
    trunk_file,
    unpack_camvid,
)
from accel_ros.model import load_checkpoint
from accel_ros.model.efficientnet import EfficientNetLiteFeatures

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def fake_pack(tmp_path: Path, fake_camvid: Path) -> Path:
    """A pack as `sprint pack` writes it, from a fake CamVid tree and random trunks."""
    pack = tmp_path / "pack"
    pack_camvid(fake_camvid, pack)
    for name in TRUNKS:
        state = EfficientNetLiteFeatures(name, output_stride=32).net.state_dict()
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                   pack / trunk_file(name))
    return pack


def test_pack_round_trip_keeps_names_labels_and_trunks(tmp_path: Path, fake_pack: Path) -> None:
    import cv2

    pack = fake_pack
    root = unpack_camvid(pack, tmp_path / "unpacked")
    original = sorted(p.name for p in (tmp_path / "camvid" / "train").glob("*.png"))
    assert sorted(p.name for p in (root / "train").glob("*.png")) == original
    name = original[0]
    assert (cv2.imread(str(root / "trainannot" / name), cv2.IMREAD_UNCHANGED)
            == cv2.imread(str(tmp_path / "camvid" / "trainannot" / name),
                          cv2.IMREAD_UNCHANGED)).all()  # labels are lossless, void kept
    trunk = EfficientNetLiteFeatures("efficientnet_lite0")
    load_trunk_weights(trunk, pack)
    stored = torch.load(pack / trunk_file("efficientnet_lite0"), weights_only=True)
    key = "_conv_stem.weight"
    assert torch.equal(trunk.net.state_dict()[key], stored[key].float())


# The parity step's CUDA-graph configurations run eagerly on the CPU and say so.
@pytest.mark.filterwarnings("ignore:cuda_graphs is on:RuntimeWarning")
def test_sprint_dry_run_trains_evaluates_and_returns_few_files(
    tmp_path: Path, fake_pack: Path
) -> None:
    pack = fake_pack
    out = tmp_path / "out"
    assert gpu_sprint.main(["run", "--out", str(out), "--pack", str(pack), "--device", "cpu",
                            "--tiny", "--holdout", "0006R0"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 5 and gpu_sprint.SUMMARY_FILE in files
    summary = json.loads((out / gpu_sprint.SUMMARY_FILE).read_text())
    assert summary["environment"]["device"] == "cpu" and "gpu" in summary["environment"]
    phases = summary["phases"]
    assert list(phases) == ["setup", "train", "eval", "speed", "parity"]
    stages = phases["train"]["result"]["stages"]
    assert set(stages) == {"reference", "update", "fusion"}
    assert stages["fusion"]["ages"] == [0.033, 0.1, 0.3, 1.0, 2.0]
    frames = phases["setup"]["result"]["train_frames"]
    assert frames["holdout"] == ["0006R0"] and "0006R0" not in str(frames["frames_per_sequence"])
    evaluated = phases["eval"]["result"]
    assert set(evaluated) == {"heldout_0006R0_real", "heldout_0006R0_motion", "val_clip"}
    assert set(evaluated["val_clip"]["per_offset"]) == {"reference", "deeplab", "dff", "accel"}
    assert phases["speed"]["result"]["accel_k5_over_reference"] > 0
    assert "passed" in phases["parity"]["result"]
    log = (out / gpu_sprint.LOG_FILE).read_text()
    assert "--- reference/log.txt" in log and "parity: done" in log

    joined = gpu_sprint.join_checkpoint(out, tmp_path / "joined.pt")
    model, extra = load_checkpoint(joined)
    assert model.config.output_stride == 8 and model.config.fusion_ages
    assert extra["train_frames"]["holdout"] == ["0006R0"]
    assert summary["checkpoint"]["bytes"] == joined.stat().st_size


def test_checkpoint_parts_join_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from accel_ros.config import ModelConfig
    from accel_ros.model import AccelNet, save_checkpoint

    source = save_checkpoint(tmp_path / "model.pt", AccelNet(ModelConfig(
        reference_backbone="resnet18", update_backbone="resnet18", head_channels=16)))
    monkeypatch.setattr(gpu_sprint, "PART_BYTES", source.stat().st_size // 3 + 1)
    out = tmp_path / "out"
    out.mkdir()
    names = gpu_sprint.write_checkpoint(source, out)
    assert len(names) == 3 and all(name.startswith(gpu_sprint.CHECKPOINT_FILE) for name in names)
    joined = gpu_sprint.join_checkpoint(out, tmp_path / "joined.pt")
    assert joined.read_bytes() == source.read_bytes()
