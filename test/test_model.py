"""AccelNet: shapes, output stride, fusion initialisation, end-to-end gradients, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from accel_ros.config import ModelConfig, PipelineConfig, preset
from accel_ros.model import AccelNet, build_model, load_checkpoint, save_checkpoint
from accel_ros.model.backbone import ResNetFeatures
from accel_ros.model.checkpoint import resolve_checkpoint
from accel_ros.model.fusion import FeatureFusion, ScoreFusion
from accel_ros.model.heads import ScoreUpsampler


@pytest.mark.parametrize(("name", "channels"), [("resnet18", 512), ("resnet50", 2048)])
def test_backbone_has_output_stride_16(name: str, channels: int) -> None:
    features = ResNetFeatures(name).eval()
    with torch.inference_mode():
        out = features(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, channels, 4, 6)
    with torch.inference_mode():
        odd = features(torch.rand(1, 3, 90, 120))
    assert odd.shape[-2:] == (6, 8)  # ceil(90/16), ceil(120/16)


def test_backbone_projection_to_common_width() -> None:
    features = ResNetFeatures("resnet18", project_to=64).eval()
    with torch.inference_mode():
        assert features(torch.rand(1, 3, 32, 32)).shape == (1, 64, 2, 2)


def test_torchvision_checkpoint_loads_from_disk(tmp_path: Path) -> None:
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18"))
    missing = model.load_backbone("update", path)
    assert missing == []
    torch.testing.assert_close(model.update.backbone.stem[0].weight, reference.conv1.weight)
    torch.testing.assert_close(
        model.update.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight
    )
    # Wrong depth: a ResNet-18 file into a ResNet-50 trunk names the offending tensor.
    deep = AccelNet(ModelConfig(reference_backbone="resnet50", update_backbone=None))
    with pytest.raises(ValueError, match="resnet50"):
        deep.load_backbone("reference", path)
    with pytest.raises(FileNotFoundError, match="not found"):
        model.load_backbone("reference", tmp_path / "missing.pth")


def test_score_fusion_starts_as_average() -> None:
    fusion = ScoreFusion(5)
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(fusion(a, b), (a + b) / 2)
    with pytest.raises(ValueError, match="differ"):
        fusion(a, b[:, :4])


def test_feature_fusion_starts_as_average() -> None:
    fusion = FeatureFusion(8)
    a, b = torch.randn(1, 8, 3, 4), torch.randn(1, 8, 3, 4)
    torch.testing.assert_close(fusion(a, b), (a + b) / 2)


def test_deconv_upsampler_matches_size() -> None:
    up = ScoreUpsampler(3, mode="deconv")
    out = up(torch.randn(1, 3, 4, 6), (64, 90))
    assert out.shape == (1, 3, 64, 90)
    # Bilinear-initialised deconv keeps a constant map constant away from the borders.
    flat = up(torch.ones(1, 3, 4, 6), (64, 96))
    torch.testing.assert_close(flat[..., 16:48, 16:80], torch.ones(1, 3, 32, 64))


@pytest.mark.parametrize("mode", ["accel", "dff", "deeplab", "reference"])
def test_forward_modes_shapes(tiny_config: ModelConfig, mode: str) -> None:
    model = AccelNet(tiny_config).eval()
    frames = torch.rand(2, 3, 3, 48, 64)
    flows = torch.zeros(2, 2, 2, 48, 64)
    with torch.inference_mode():
        out = model(frames, flows, mode=mode)
    assert out.shape == (2, 5, 48, 64)
    assert torch.isfinite(out).all()


def test_zero_flow_keyframe_fusion_is_average_of_branches(tiny_config: ModelConfig) -> None:
    model = AccelNet(tiny_config).eval()
    frames = torch.rand(1, 2, 3, 32, 48)
    frames[:, 1] = frames[:, 0]
    with torch.inference_mode():
        fused = model(frames, torch.zeros(1, 1, 2, 32, 32), mode="accel")
        ref = model(frames[:, :1], mode="reference")
        upd = model(frames[:, :1], mode="deeplab")
    torch.testing.assert_close(fused, (ref + upd) / 2, rtol=1e-4, atol=1e-4)


def test_gradients_reach_every_trainable_part(tiny_config: ModelConfig) -> None:
    """One backward pass through a warped clip reaches N_R, N_U and the fusion."""
    model = AccelNet(tiny_config).train()
    frames = torch.rand(2, 3, 3, 64, 64)
    flows = torch.randn(2, 2, 2, 32, 32)
    target = torch.randint(0, 5, (2, 64, 64))
    loss = torch.nn.functional.cross_entropy(model(frames, flows), target)
    loss.backward()
    parts = {
        "reference": model.reference.backbone.stem[0].weight,
        "reference head": model.reference.head.classify.weight,
        "update": model.update.backbone.layer4[0].conv1.weight,
        "fusion": model.fusion.conv.weight,
    }
    for name, parameter in parts.items():
        assert parameter.grad is not None, name
        assert float(parameter.grad.abs().sum()) > 0, name


def test_checkpoint_round_trip(tmp_path: Path, tiny_config: ModelConfig) -> None:
    model = AccelNet(tiny_config).eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", model, extra={"val_miou": 0.5})
    loaded, extra = load_checkpoint(path)
    assert extra == {"val_miou": 0.5}
    assert loaded.config == tiny_config
    frames = torch.rand(1, 2, 3, 32, 48)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.eval()(frames, torch.zeros(1, 1, 2, 32, 48)),
                                   model(frames, torch.zeros(1, 1, 2, 32, 48)))
    half = save_checkpoint(tmp_path / "half.pt", model, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    loaded_half, _ = load_checkpoint(half)
    assert loaded_half.reference.head.classify.weight.dtype == torch.float32
    torch.testing.assert_close(
        loaded_half.reference.head.classify.weight, model.reference.head.classify.weight,
        rtol=1e-3, atol=1e-3,
    )


def test_bad_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        build_model("camvid34", str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="is not a checkpoint of this package") as refused:
        load_checkpoint(garbage)
    # One short line, and never torch's advice to unpickle an untrusted file.
    message = str(refused.value)
    assert "\n" not in message and len(message) < 200 + len(str(garbage))
    assert "weights_only" not in message and refused.value.__cause__ is None
    foreign = tmp_path / "resnet.pt"
    torch.save(resnet18(weights=None).state_dict(), foreign)
    with pytest.raises(ValueError, match="load_backbone"):
        load_checkpoint(foreign)
    assert resolve_checkpoint("none") is None
    assert resolve_checkpoint(None) is None


def test_presets_match_the_paper() -> None:
    for name, update in [("accel18", "resnet18"), ("accel34", "resnet34"), ("accel50", "resnet50")]:
        config = preset(name)
        assert config.reference_backbone == "resnet101"
        assert config.update_backbone == update
        assert config.fusion == "score"
    assert preset("accel101").fusion == "feature"
    with pytest.raises(ValueError, match="unknown preset"):
        preset("accel7")


def test_feature_fusion_preset_builds_and_runs() -> None:
    config = preset("accel101", reference_backbone="resnet18", update_backbone="resnet18",
                     feature_channels=None, head_channels=16)
    model = AccelNet(config).eval()
    assert isinstance(model.fusion, FeatureFusion)
    with torch.inference_mode():
        assert model(torch.rand(1, 2, 3, 32, 32), torch.zeros(1, 1, 2, 32, 32)).shape[-2:] == (
            32, 32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "mode"),
        ({"keyframe_interval": 0}, "keyframe_interval"),
        ({"flow_method": "raft"}, "flow_method"),
        ({"flow_scale": 0.0}, "flow_scale"),
        ({"precision": "fp8"}, "precision"),
        ({"input_size": (8, 8)}, "input_size"),
    ],
)
def test_pipeline_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**kwargs)


def test_config_dict_round_trip() -> None:
    config = PipelineConfig(input_size=(128, 256), keyframe_interval=3)
    assert PipelineConfig.from_dict(config.to_dict()) == config
    model = preset("accel18")
    assert ModelConfig.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="unknown"):
        PipelineConfig.from_dict({"keyframe_intervall": 3})
