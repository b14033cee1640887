"""Backbones: dilated ResNets (as in DeepLab and the Accel paper) and EfficientNet-Lite, behind
one builder. Every backbone maps (N, 3, H, W) float RGB in [0, 1] to (N, C, H/s, W/s) features
at output stride s (16, or 8), has `out_channels` and `output_stride`, and `load_pretrained()`
for its ImageNet weights from disk (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

from ..config import BACKBONES, RESNET_BACKBONES
from .efficientnet import EfficientNetLiteFeatures

# One torchvision builder and one conv5 width per ResNet of config.BACKBONES (bind checks).
_BUILDERS = BACKBONES.bind({
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
}, RESNET_BACKBONES)
_OUT_CHANNELS = BACKBONES.bind(
    {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}, RESNET_BACKBONES
)

# ImageNet statistics: torchvision checkpoints expect inputs normalised with these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a ResNet stage from stride 2 into stride 1 with `dilation`, in place.

    torchvision only supports `replace_stride_with_dilation` for Bottleneck blocks, so the
    BasicBlock networks (ResNet-18/34) are converted here by hand; the same code handles both.
    The weights keep their shapes, so ImageNet checkpoints still load.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            if module.stride == (2, 2):
                module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)


class ResNetFeatures(nn.Module):
    """ResNet trunk up to conv5, output stride 16 (conv5 dilated) or 8 (conv4 and conv5).

    Input: (N, 3, H, W) float RGB in [0, 1]. Output: (N, C, ceil(H/s), ceil(W/s)), where C is
    `out_channels` (the backbone's own 512 / 2048, or `project_to` after a 1x1 projection).
    ImageNet normalisation happens inside, so callers never need to know about it.
    """

    def __init__(
        self, name: str, project_to: int | None = None, output_stride: int = 16
    ) -> None:
        super().__init__()
        if name not in _BUILDERS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_BUILDERS)}")
        if output_stride not in (8, 16):
            raise ValueError(f"ResNet output_stride must be 8 or 16, got {output_stride}")
        self.name = name
        self.output_stride = output_stride
        net = _BUILDERS[name](weights=None)
        if output_stride == 8:
            _dilate_layer(net.layer3, 2)
        _dilate_layer(net.layer4, 2 if output_stride == 16 else 4)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        native = _OUT_CHANNELS[name]
        if project_to is not None and project_to != native:
            self.projection: nn.Module = nn.Sequential(
                nn.Conv2d(native, project_to, 1, bias=False),
                nn.BatchNorm2d(project_to),
                nn.ReLU(inplace=True),
            )
            self.out_channels = project_to
        else:
            self.projection = nn.Identity()
            self.out_channels = native
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.projection(x)

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load a torchvision `resnetXX` state dict (e.g. ImageNet weights saved to disk).

        The classifier (`fc.*`) is dropped. Returns the names of trunk parameters the file did
        not provide; raises if a provided tensor has the wrong shape (wrong depth of ResNet).
        """
        renamed: dict[str, torch.Tensor] = {}
        stem_names = {"conv1": "stem.0", "bn1": "stem.1"}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head == "fc":
                continue
            if head in stem_names:
                key = f"{stem_names[head]}.{rest}"
            renamed[key] = value
        own = self.state_dict()
        for key, value in renamed.items():
            if key not in own:
                raise ValueError(f"checkpoint key {key!r} does not belong to a {self.name}")
            if own[key].shape != value.shape:
                raise ValueError(
                    f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, "
                    f"{self.name} expects {tuple(own[key].shape)}"
                )
        result = self.load_state_dict(renamed, strict=False)
        return [k for k in result.missing_keys if not k.startswith("projection")]

    def load_pretrained(self, path: str | Path | None = None) -> list[str]:
        """torchvision ImageNet weights from `path`, or from the torch hub cache
        (`<torch.hub.get_dir()>/checkpoints/<name>-*.pth`, where torchvision keeps what it once
        downloaded). Raises FileNotFoundError saying where it looked; never downloads."""
        return load_backbone_weights(self, path or hub_cache_weights(self.name))


def hub_cache_weights(name: str) -> Path:
    """The torchvision ImageNet file for `name` in the local torch hub cache, if there is one."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(folder.glob(f"{name}-*.pth"))
    if not found:
        raise FileNotFoundError(
            f"no ImageNet weights for {name} in {folder} (expected {name}-<hash>.pth, as "
            "torchvision saves them); pass the file's path instead"
        )
    return found[0]


def load_backbone_weights(features: ResNetFeatures, path: str | Path) -> list[str]:
    """Load torchvision-format ResNet weights from a local file into `features`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return features.load_torchvision_state_dict(state)


def build_backbone(name: str, output_stride: int = 16) -> nn.Module:
    """A backbone by name (random weights; call `load_pretrained()` for ImageNet ones)."""
    BACKBONES.check(name)
    if name in _BUILDERS:
        return ResNetFeatures(name, output_stride=output_stride)
    return EfficientNetLiteFeatures(name, output_stride=output_stride)
